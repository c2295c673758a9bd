"""Per-key request and token limits, and the ``rate_limits.updated`` event.

The relay is the one owner of ``rate_limits.updated``: it sees every frame of every session
both ways, so it counts, per API key (an ephemeral key counts against the key that minted
it, :meth:`relay.edge.KeyLimits.holder_of`), one request per response the session starts
(``response.created``: client- or VAD-made alike) and the ``usage.total_tokens`` of each
``response.done``; after each ``response.done`` it sends a ``rate_limits.updated`` with the
key's figures. OpenAI's API reference says the event is "Emitted at the beginning of a
Response to indicate the updated rate limits"
(https://platform.openai.com/docs/api-reference/realtime-server-events/rate_limits/updated);
its conversation guide lists it after ``response.done``, where the response's usage is
known, and that is where the relay sends it.

Each limit is a bucket of ``limit`` that refills continuously over a minute, as OpenAI's
per-minute limits do (https://platform.openai.com/docs/guides/rate-limits): ``remaining``
is what the bucket holds, ``reset_seconds`` the time until it is full again. Past a limit a
``response.create`` is answered with an ``error`` (code ``rate_limit_exceeded``, type
``requests`` or ``tokens``, as OpenAI's 429 body names them) and not passed on; a response
the session starts by itself (server VAD) while the key is past its limit is cancelled with
the same error. Tokens are counted once a response is done, so a response starts while any
token remains and may end past the limit; the next waits for the refill.

With no limit set for a name, its figures say "unlimited": ``limit`` and ``remaining`` are
:data:`UNLIMITED` and ``reset_seconds`` 0 (for a name with no limit of the relay's own, the
latest figures an upstream sent, when it sends them: the openai proxy backend passes
OpenAI's own on, and they are folded into the relay's event instead of sent twice).

Cheap on the audio path: a server frame's type is read from its first 200 characters and
only ``response.created``, ``response.done``, ``rate_limits.updated`` and an ``error``
answering the relay's own cancel are parsed; a client frame is parsed only when it holds
``"response.create"`` (base64 audio has no ``"``, so an append never does). A client that
spells the name with JSON escapes passes that check, and its response is cancelled when it
starts, as a VAD-made one is. With no limit set at all, nothing can be refused or
cancelled: client frames are not looked at, ``response.created`` passes as any frame, and a
``response.done`` is parsed only where there is a token limit to charge.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.errors import server_error_event
from transceiver.protocol.ids import IdFactory

UNLIMITED = 2**31 - 1  # limit and remaining of a name with no limit
PERIOD_S = 60.0  # the limits are per minute
MAX_IDLE_HOLDERS = 4096  # past this many keys in the books, full buckets are forgotten
CANCEL_PREFIX = "relay_rl_"  # the event ids of the relay's own response.cancel
CODE = "rate_limit_exceeded"
NAMES = ("requests", "tokens")

Clock = Callable[[], float]


@dataclass
class Bucket:
    """``limit`` per minute, refilled continuously; ``level`` may go below 0 (a response
    that used more tokens than remained)."""

    limit: int
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        rate = self.limit / PERIOD_S
        self.level = min(float(self.limit), self.level + (now - self.stamp) * rate)
        self.stamp = now

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    @property
    def full(self) -> bool:
        return self.level >= self.limit

    def seconds_until(self, level: float) -> float:
        """Seconds until the bucket holds ``level`` (0 if it does)."""
        return max(0.0, (level - self.level) * PERIOD_S / self.limit)

    def figures(self, name: str) -> dict[str, Any]:
        reset = round(self.seconds_until(self.limit), 3)
        return {
            "name": name,
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_seconds": reset,
        }


class RateLimits:
    """The relay's books: a bucket per key and name (``None`` limits: unlimited)."""

    def __init__(
        self,
        requests_per_min: int | None,
        tokens_per_min: int | None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.limits: dict[str, int | None] = {
            "requests": requests_per_min,
            "tokens": tokens_per_min,
        }
        # Without limits nothing is refused or cancelled: client frames are not looked at.
        self.limited = any(limit is not None for limit in self.limits.values())
        self.clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._prune_at = MAX_IDLE_HOLDERS  # the size at which full buckets are next forgotten

    def bucket(self, holder: str, name: str) -> Bucket | None:
        """``holder``'s bucket for ``name``, refilled to now; ``None`` when unlimited."""
        limit = self.limits[name]
        if limit is None:
            return None
        now = self.clock()
        found = self._buckets.get((holder, name))
        if found is None:
            self._forget_full(now)
            found = self._buckets[(holder, name)] = Bucket(limit, float(limit), now)
        found.refill(now)
        return found

    def _forget_full(self, now: float) -> None:
        """Bound the books: a full bucket is the same as none. Every bucket is full a
        minute after its last use, so the books hold the keys of the last minute; the next
        sweep waits until they have doubled, so sweeping costs O(1) per key."""
        if len(self._buckets) < self._prune_at:
            return
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.full:
                del self._buckets[key]
        self._prune_at = max(MAX_IDLE_HOLDERS, 2 * len(self._buckets))

    def exceeded(self, holder: str) -> tuple[str, float] | None:
        """The limit ``holder`` is past (``requests``: none left; ``tokens``: none left)
        and the seconds until it may start a response again; ``None`` if it may now."""
        for name in NAMES:
            bucket = self.bucket(holder, name)
            if bucket is not None and bucket.level < 1:
                return name, bucket.seconds_until(1)
        return None

    def charge(self, holder: str, name: str, amount: int) -> None:
        bucket = self.bucket(holder, name)
        if bucket is not None:
            bucket.level -= amount

    def session(self, holder: str, ids: IdFactory | None = None) -> SessionRates:
        return SessionRates(self, holder, ids or IdFactory())


@dataclass
class ServerAction:
    """What a shell does with a server frame: pass it on (unless ``drop``), then send
    ``to_client`` to the client and ``to_upstream`` to the session."""

    drop: bool = False
    to_client: list[str] = field(default_factory=list)
    to_upstream: list[str] = field(default_factory=list)


PASS = ServerAction()


class SessionRates:
    """One session's view of its key's limits, for the shells (realtime_ws, webrtc)."""

    def __init__(self, books: RateLimits, holder: str, ids: IdFactory) -> None:
        self.books = books
        self.holder = holder
        self.ids = ids
        self._limited = books.limited
        self._counts_tokens = books.limits["tokens"] is not None
        self._upstream: dict[str, dict[str, Any]] = {}  # the upstream's latest, by name

    # -- client frames ---------------------------------------------------------------

    def refuse(self, frame: str | bytes) -> str | None:
        """The ``error`` for a client ``response.create`` past the key's limits (the frame
        is then not passed on); ``None``: pass the frame on."""
        if not self._limited or not _contains(frame, _CREATE):
            return None
        event = _event(frame)
        if event is None or event.get("type") != "response.create":
            return None
        past = self.books.exceeded(self.holder)
        if past is None:
            return None
        event_id = event.get("event_id")
        return self._error(*past, event_id if isinstance(event_id, str) else None)

    # -- server frames ---------------------------------------------------------------

    def on_server(self, frame: str | bytes) -> ServerAction:
        """The relay's part in a server frame: count, cancel, fold, announce."""
        handle = self._handler(frame)
        if handle is None:
            return PASS
        if handle is _DONE and not self._counts_tokens:
            return ServerAction(to_client=[self.updated()])  # no usage to count: not parsed
        event = _event(frame)
        return PASS if event is None else handle(self, event)

    def passes(self, frame: str | bytes) -> bool:
        """Whether :meth:`on_server` would pass ``frame`` on as it is, without a look (no
        side effect: most server frames, audio deltas among them)."""
        return self._handler(frame) is None

    def _handler(
        self, frame: str | bytes
    ) -> Callable[[SessionRates, dict[str, Any]], ServerAction] | None:
        handle = self._HANDLERS.get(_peek_type(frame) or "")
        if handle is _ERROR and not _contains(frame, _CANCEL):
            return None
        if handle is _CREATED and not self._limited:
            return None  # nothing to charge, nothing to cancel
        return handle

    def _created(self, event: dict[str, Any]) -> ServerAction:
        response_id = str((event.get("response") or {}).get("id") or "")
        past = self.books.exceeded(self.holder)
        if past is None:
            self.books.charge(self.holder, "requests", 1)
            return PASS
        # A response the session started itself (server VAD): stopped at once, uncharged.
        cancel = {"type": "response.cancel", "event_id": CANCEL_PREFIX + self.ids.event_id()}
        if response_id:
            cancel["response_id"] = response_id
        return ServerAction(to_client=[self._error(*past, None)], to_upstream=[json.dumps(cancel)])

    def _done(self, event: dict[str, Any]) -> ServerAction:
        response = event.get("response") or {}
        usage = response.get("usage") if isinstance(response, dict) else None
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
            self.books.charge(self.holder, "tokens", tokens)
        return ServerAction(to_client=[self.updated()])

    def _upstream_figures(self, event: dict[str, Any]) -> ServerAction:
        for entry in event.get("rate_limits") or []:
            if isinstance(entry, dict) and entry.get("name") in NAMES:
                self._upstream[entry["name"]] = entry
        return ServerAction(drop=True)  # folded into the relay's own, after response.done

    def _answer_to_cancel(self, event: dict[str, Any]) -> ServerAction:
        """The session's ``error`` for the relay's own cancel (the response had ended)."""
        inner = event.get("error") or {}
        event_id = inner.get("event_id") if isinstance(inner, dict) else None
        relays = isinstance(event_id, str) and event_id.startswith(CANCEL_PREFIX)
        return ServerAction(drop=relays)

    _HANDLERS: dict[str, Callable[[SessionRates, dict[str, Any]], ServerAction]] = {
        "response.created": _created,
        "response.done": _done,
        "rate_limits.updated": _upstream_figures,
        "error": _answer_to_cancel,
    }

    def updated(self) -> str:
        """A ``rate_limits.updated`` event with the key's figures now."""
        figures = []
        for name in NAMES:
            bucket = self.books.bucket(self.holder, name)
            if bucket is not None:
                figures.append(bucket.figures(name))
            elif name in self._upstream:
                figures.append(self._upstream[name])
            else:
                figures.append(
                    {"name": name, "limit": UNLIMITED, "remaining": UNLIMITED, "reset_seconds": 0}
                )
        event = {"type": "rate_limits.updated", "event_id": self.ids.event_id()}
        return json.dumps({**event, "rate_limits": figures}, separators=(",", ":"))

    def _error(self, name: str, wait_s: float, event_id: str | None) -> str:
        limit = self.books.limits[name]
        unit = "requests" if name == "requests" else "tokens"
        message = (
            f"Rate limit reached on {unit} per min: limit {limit}. "
            f"Please try again in {max(wait_s, 0.001):.3f}s."
        )
        event = server_error_event(self.ids.event_id(), message, CODE, type=name)
        event["error"]["event_id"] = event_id
        return json.dumps(event, separators=(",", ":"))


_ERROR, _CREATED, _DONE = SessionRates._answer_to_cancel, SessionRates._created, SessionRates._done
# A server event's type from its first bytes: the transceiver writes ``type`` first
# (transceiver/protocol/wire.py), and so does OpenAI, whose frames the proxy passes on as
# they come (transceiver/proxy/session.py peeks them the same way).
_TYPE = re.compile(r'"type"\s*:\s*"([a-z_.]{1,64})"')
_TYPE_BYTES = re.compile(rb'"type"\s*:\s*"([a-z_.]{1,64})"')
PEEK_CHARS = 200


def _peek_type(frame: str | bytes) -> str | None:
    if isinstance(frame, bytes):
        found = _TYPE_BYTES.search(frame, 0, PEEK_CHARS)
        return found.group(1).decode() if found else None
    match = _TYPE.search(frame, 0, PEEK_CHARS)
    return match.group(1) if match else None


class _Needle:
    """A string to look for in a frame, either kind, encoded once."""

    def __init__(self, text: str) -> None:
        self.text, self.data = text, text.encode()


_CREATE = _Needle('"response.create"')
_CANCEL = _Needle(CANCEL_PREFIX)


def _contains(frame: str | bytes, needle: _Needle) -> bool:
    if isinstance(frame, bytes):  # not ``in``: for bytes, that first fails as an int lookup
        return frame.find(needle.data) != -1
    return needle.text in frame


def _event(frame: str | bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None
