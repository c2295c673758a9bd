"""The ``openai`` backend: each session is proxied to an upstream Realtime WebSocket.

Frames pass through unchanged in both directions. The proxy only steps in where the
operator's policy or the transport requires it:

- the model a client asks for is checked against ``--allowed-models`` and renamed by
  ``--model-map``; the upstream key comes from the server's environment, never the client;
- ``--instructions-prefix`` goes before the client's instructions (``session.update`` and
  ``response.create``), and a session configuration carried by an ephemeral key or a WebRTC
  offer is applied before the client sees ``session.created``;
- on WebRTC sessions (``media``) the reply's audio plays on the caller's track in real
  time, so the proxy tracks how much of each item was heard and truncates it upstream on
  barge-in or ``output_audio_buffer.clear``, as OpenAI does for its own WebRTC calls.

The conversation seen in passing (items, transcripts, usage) is mirrored for logs and
metrics after each frame is forwarded, so it adds nothing to the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from transceiver.observability import Metrics, log_event
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.settings import TransceiverSettings

log = logging.getLogger(__name__)

_TYPE = re.compile(r'"type"\s*:\s*"([^"]+)"')
_AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_INJECTED = "event_proxy"


def peek_type(frame: str) -> str | None:
    """The event type from the first bytes of a frame (``type`` comes first in practice)."""
    match = _TYPE.search(frame, 0, 200)
    return match.group(1) if match else None


@dataclass
class ProxyPolicy:
    allowed_models: frozenset[str] = frozenset()
    model_map: dict[str, str] = field(default_factory=dict)
    instructions_prefix: str | None = None

    @classmethod
    def from_settings(cls, settings: TransceiverSettings) -> ProxyPolicy:
        mapping: dict[str, str] = {}
        for entry in settings.model_map:
            client, sep, upstream = entry.partition("=")
            if not sep or not client.strip() or not upstream.strip():
                raise ValueError(f"--model-map entries are CLIENT=UPSTREAM, not {entry!r}")
            mapping[client.strip()] = upstream.strip()
        return cls(frozenset(settings.allowed_models), mapping, settings.instructions_prefix)

    def upstream_model(self, model: str) -> str:
        if self.allowed_models and model not in self.allowed_models:
            raise ClientError(
                f"Invalid value: '{model}'. Supported values are: "
                + ", ".join(f"'{m}'" for m in sorted(self.allowed_models))
                + ".",
                code="invalid_value",
                param="model",
            )
        return self.model_map.get(model, model)

    def model_ids(self) -> list[str]:
        return sorted(self.allowed_models or self.model_map) or ["gpt-realtime"]

    def instructions(self, client: str | None) -> str | None:
        if not self.instructions_prefix:
            return client
        return self.instructions_prefix + ("\n\n" + client if client else "")

    def rewrite_client_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event as sent upstream, or ``None`` when it passes unchanged."""
        etype = event.get("type")
        if etype == "session.update" and isinstance(event.get("session"), dict):
            session = dict(event["session"])
            changed = False
            if isinstance(session.get("model"), str):
                session["model"] = self.upstream_model(session["model"])
                changed = True
            if self.instructions_prefix and isinstance(session.get("instructions"), str):
                session["instructions"] = self.instructions(session["instructions"])
                changed = True
            return {**event, "session": session} if changed else None
        if (
            etype == "response.create"
            and self.instructions_prefix
            and isinstance(event.get("response"), dict)
            and isinstance(event["response"].get("instructions"), str)
        ):
            response = dict(event["response"])
            response["instructions"] = self.instructions(response["instructions"])
            return {**event, "response": response}
        return None


_BETA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def session_update(session: dict[str, Any], beta: bool) -> dict[str, Any]:
    """A GA session configuration (as validated by the relay) as a ``session.update`` body.

    Beta upstreams take the flat beta shape; only the fields a key or an offer can carry
    are translated.
    """
    session = {k: v for k, v in session.items() if k not in ("model", "object", "id")}
    if not beta:
        return session
    flat: dict[str, Any] = {}
    for name in ("instructions", "tools", "tool_choice", "include"):
        if name in session:
            flat[name] = session[name]
    if "output_modalities" in session:
        flat["modalities"] = (
            ["audio", "text"] if session["output_modalities"] == ["audio"] else ["text"]
        )
    if "max_output_tokens" in session:
        flat["max_response_output_tokens"] = session["max_output_tokens"]
    audio = session.get("audio") or {}
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    if "format" in audio_in:
        flat["input_audio_format"] = _BETA_FORMATS.get(audio_in["format"].get("type"), "pcm16")
    if "turn_detection" in audio_in:
        flat["turn_detection"] = audio_in["turn_detection"]
    if "transcription" in audio_in:
        flat["input_audio_transcription"] = audio_in["transcription"]
    if "noise_reduction" in audio_in:
        flat["input_audio_noise_reduction"] = audio_in["noise_reduction"]
    if "format" in audio_out:
        flat["output_audio_format"] = _BETA_FORMATS.get(audio_out["format"].get("type"), "pcm16")
    if "voice" in audio_out:
        flat["voice"] = audio_out["voice"]
    if "speed" in audio_out:
        flat["speed"] = audio_out["speed"]
    return flat


@dataclass
class Mirror:
    """What the proxy saw of the conversation: for the session-end log line and metrics."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    transcripts: dict[str, str] = field(default_factory=dict)
    responses: int = 0
    errors: int = 0
    usage: dict[str, int] = field(default_factory=dict)

    def observe(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if etype in (
            "conversation.item.added",
            "conversation.item.done",
            "conversation.item.created",
        ):
            item = event.get("item")
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                self.items[item["id"]] = item
        elif etype in ("conversation.item.deleted",):
            self.items.pop(str(event.get("item_id")), None)
        elif etype == "conversation.item.input_audio_transcription.completed":
            self.transcripts[str(event.get("item_id"))] = str(event.get("transcript", ""))
        elif etype == "response.done":
            self.responses += 1
            usage = (event.get("response") or {}).get("usage") or {}
            for name in ("input_tokens", "output_tokens", "total_tokens"):
                if isinstance(usage.get(name), int):
                    self.usage[name] = self.usage.get(name, 0) + usage[name]
        elif etype == "error":
            self.errors += 1

    def summary(self) -> dict[str, Any]:
        return {
            "items": len(self.items),
            "transcripts": len(self.transcripts),
            "responses": self.responses,
            "errors": self.errors,
            **self.usage,
        }


class Playback:
    """How much of each assistant audio item a WebRTC caller has heard (real-time playback)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.item_id: str | None = None
        self.response_id: str | None = None
        self.last_response_id: str | None = None
        self._start = 0.0
        self._sent_ms = 0.0

    def audio(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        now = self._clock()
        if item_id != self.item_id or self.heard_ms() >= self._sent_ms:
            if item_id != self.item_id:
                self._sent_ms = 0.0
                self._start = now
            else:  # playback ran dry and restarts: keep the heard part
                self._start = now - self._sent_ms / 1000
            self.item_id = item_id if isinstance(item_id, str) else None
        self.response_id = event.get("response_id")
        self.last_response_id = self.response_id
        delta = event.get("delta") or ""
        self._sent_ms += len(delta) * 3 / 4 / 2 / 24  # base64 PCM16 at 24 kHz, in ms

    def heard_ms(self) -> float:
        return min(self._sent_ms, (self._clock() - self._start) * 1000)

    def interrupt(self) -> tuple[str, int] | None:
        """Stop playback: the item and the ``audio_end_ms`` to truncate it at, if unheard."""
        item_id, heard = self.item_id, self.heard_ms()
        cut = item_id is not None and heard < self._sent_ms - 1
        self.item_id, self.response_id, self._sent_ms = None, None, 0.0
        return (item_id, int(heard)) if cut and item_id is not None else None


class UpstreamRefused(Exception):
    def __init__(self, message: str, code: str, close_code: int) -> None:
        super().__init__(message)
        self.message, self.code, self.close_code = message, code, close_code


class ProxyBackend:
    """The ``openai`` backend: opens one upstream connection per session."""

    name = "openai"

    def __init__(self, settings: TransceiverSettings) -> None:
        self.settings = settings
        self.policy = ProxyPolicy.from_settings(settings)
        self.api_key = settings.upstream_api_key or os.environ.get("OPENAI_API_KEY")
        self.headers: list[tuple[str, str]] = []
        for entry in settings.upstream_header:
            name, sep, value = entry.partition(":")
            if not sep:
                raise ValueError(f"--upstream-header entries are NAME:VALUE, not {entry!r}")
            self.headers.append((name.strip(), value.strip()))

    def model_ids(self) -> list[str]:
        return self.policy.model_ids()

    async def aclose(self) -> None:
        return None

    async def open(self, model: str | None, transcription: bool, beta: bool) -> ClientConnection:
        query = {"intent": "transcription"} if transcription else {}
        if not transcription:
            query["model"] = self.policy.upstream_model(model or "gpt-realtime")
        url = self.settings.upstream_url
        url += ("&" if "?" in url else "?") + urlencode(query) if query else ""
        headers = list(self.headers)
        if self.api_key:
            headers.append(("Authorization", f"Bearer {self.api_key}"))
        if beta:
            headers.append(("OpenAI-Beta", "realtime=v1"))
        try:
            return await connect(
                url,
                additional_headers=headers,
                open_timeout=self.settings.upstream_open_timeout_s,
                max_size=self.settings.max_frame_bytes,
                compression=None,
                ping_interval=20,
                ping_timeout=20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise UpstreamRefused(
                    f"The upstream Realtime server refused the server's credentials ({status}).",
                    "upstream_auth_failed",
                    1008,
                ) from exc
            retry_later = status in (429, 503)
            raise UpstreamRefused(
                f"The upstream Realtime server refused the session ({status}).",
                "upstream_unavailable",
                1013 if retry_later else 1011,
            ) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise UpstreamRefused(
                f"The upstream Realtime server could not be reached: {exc or type(exc).__name__}.",
                "upstream_unavailable",
                1011,
            ) from exc


Send = Callable[[str], Awaitable[None]]


class ProxySession:
    """One client session bridged to one upstream connection."""

    def __init__(
        self,
        backend: ProxyBackend,
        client: Any,
        *,
        model: str | None,
        transcription: bool,
        beta: bool,
        media: bool,
        overrides: dict[str, Any] | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.client = client  # a websockets connection: send, close, async iteration
        self.model = model
        self.transcription = transcription
        self.beta = beta
        self.media = media
        self.overrides = overrides
        self.ids = IdFactory()
        self.id = self.ids.new("sess")
        self.metrics = metrics or Metrics("realtime_transceiver")
        self.mirror = Mirror()
        self.playback = Playback()
        self._injected: set[str] = set()
        self._held_created: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._early: list[tuple[dict[str, Any], str]] = []

    def _error(self, message: str, code: str, type: str = "server_error") -> str:
        return json.dumps(
            {
                "type": "error",
                "event_id": self.ids.event_id(),
                "error": {
                    "type": type,
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": None,
                },
            }
        )

    async def _refuse(self, message: str, code: str, close_code: int, **error: Any) -> None:
        frame = json.loads(self._error(message, code))
        frame["error"].update(error)
        self.metrics.error(code)
        with contextlib.suppress(ConnectionClosed):
            await self.client.send(json.dumps(frame))
            await self.client.close(close_code, code)

    async def run(self) -> None:
        try:
            upstream = await self.backend.open(self.model, self.transcription, self.beta)
        except ClientError as exc:
            await self._refuse(exc.message, exc.code or "invalid_value", 1008, **_client(exc))
            return
        except UpstreamRefused as exc:
            log.warning("upstream refused a session: %s", exc.message)
            await self._refuse(exc.message, exc.code, exc.close_code)
            return
        try:
            await self._bridge(upstream)
        finally:
            await upstream.close()
            log_event(log, "proxy.summary", id=self.id, **self.mirror.summary())

    def _initial_update(self) -> dict[str, Any] | None:
        session = dict(self.overrides or {})
        if not self.transcription:
            instructions = self.backend.policy.instructions(session.get("instructions"))
            if instructions is not None:
                session["instructions"] = instructions
        body = session_update(session, self.beta)
        if not [k for k in body if k != "type"]:
            return None
        if self.beta:
            body.pop("type", None)
            kind = "transcription_session" if self.transcription else "session"
            return {"type": f"{kind}.update", "session": body}
        body.setdefault("type", "transcription" if self.transcription else "realtime")
        return {"type": "session.update", "session": body}

    async def _inject(self, upstream: ClientConnection, event: dict[str, Any]) -> None:
        event_id = f"{_INJECTED}_{self.ids.event_id()}"
        self._injected.add(event_id)
        await upstream.send(json.dumps({"event_id": event_id, **event}))

    async def _bridge(self, upstream: ClientConnection) -> None:
        update = self._initial_update()
        to_client = asyncio.create_task(self._upstream_to_client(upstream, update))
        to_upstream = asyncio.create_task(self._client_to_upstream(upstream))
        done, _ = await asyncio.wait({to_client, to_upstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (to_client, to_upstream):
            if task not in done:
                task.cancel()
        await asyncio.gather(to_client, to_upstream, return_exceptions=True)
        if to_upstream in done:
            return  # the client left
        rcvd = upstream.protocol.close_rcvd
        with contextlib.suppress(ConnectionClosed):
            if rcvd is None or rcvd.code not in (1000, 1001):
                reason = f" ({rcvd.code} {rcvd.reason})" if rcvd is not None else ""
                log.warning("upstream connection lost mid-session%s", reason)
                self.metrics.error("upstream_unavailable")
                await self.client.send(
                    self._error(
                        f"The upstream Realtime server dropped this session{reason}.",
                        "upstream_unavailable",
                    )
                )
                await self.client.close(1011, "upstream failed")
            else:
                await self.client.close(rcvd.code, rcvd.reason)

    async def _upstream_to_client(
        self, upstream: ClientConnection, update: dict[str, Any] | None
    ) -> None:
        async for frame in upstream:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            etype = peek_type(text)
            self.metrics.events_out.inc()
            if etype in _AUDIO_DELTAS and not self.media:
                await self.client.send(text)  # the hot path: not parsed
                continue
            event = json.loads(text)
            if not self._ready.is_set():
                update = await self._configure(upstream, event, text, update)
                continue
            if event.get("type") == "error" and self._answers_injection(event):
                log.warning("upstream refused a proxy event: %s", event.get("error"))
                continue
            await self._forward(upstream, event, text)

    async def _forward(self, upstream: ClientConnection, event: dict[str, Any], text: str) -> None:
        if self.media:
            await self._media_event(upstream, event)
        await self.client.send(text)
        self.mirror.observe(event)
        if event.get("type") == "error":
            self.metrics.error((event.get("error") or {}).get("code"))

    async def _configure(
        self,
        upstream: ClientConnection,
        event: dict[str, Any],
        text: str,
        update: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Until the session is configured: hold ``session.created``, apply ``update``, and
        show the client one ``session.created`` with the configuration in effect."""
        etype = str(event.get("type", ""))
        if self._held_created is None:
            if etype.endswith("session.created") and update is not None:
                self._held_created = event
                await self._inject(upstream, update)
                return None
            self._ready.set()
            await self._forward(upstream, event, text)
            return update
        if etype.endswith("session.updated"):
            await self.client.send(json.dumps({**self._held_created, "session": event["session"]}))
        elif etype == "error" and self._answers_injection(event):
            log.warning("upstream refused the session configuration: %s", event.get("error"))
            await self.client.send(json.dumps(self._held_created))
            await self.client.send(text)  # the client learns its configuration was refused
        else:
            self._early.append((event, text))
            return None
        self._held_created = None
        self._ready.set()
        for early_event, early_text in self._early:
            await self._forward(upstream, early_event, early_text)
        self._early.clear()
        return None

    def _answers_injection(self, event: dict[str, Any]) -> bool:
        """Whether an ``error`` answers an event the proxy sent (not the client)."""
        return (event.get("error") or {}).get("event_id") in self._injected

    async def _media_event(self, upstream: ClientConnection, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if etype in _AUDIO_DELTAS:
            self.playback.audio(event)
        elif etype == "input_audio_buffer.speech_started":
            await self._truncate(upstream)

    async def _truncate(self, upstream: ClientConnection) -> str | None:
        """Barge-in on a WebRTC call: cut the item where the caller stopped hearing it."""
        response_id = self.playback.response_id or self.playback.last_response_id
        cut = self.playback.interrupt()
        if cut is not None:
            item_id, audio_end_ms = cut
            await self._inject(
                upstream,
                {
                    "type": "conversation.item.truncate",
                    "item_id": item_id,
                    "content_index": 0,
                    "audio_end_ms": audio_end_ms,
                },
            )
        return response_id

    async def _client_to_upstream(self, upstream: ClientConnection) -> None:
        await self._ready.wait()  # the configuration is applied before any client event
        policy = self.backend.policy
        async for frame in self.client:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            self.metrics.events_in.inc()
            etype = peek_type(text)
            if etype in ("session.update", "response.create", "output_audio_buffer.clear"):
                try:
                    event = json.loads(text)
                except ValueError:
                    await upstream.send(text)  # upstream answers with invalid_json
                    continue
                if etype == "output_audio_buffer.clear" and self.media:
                    await self._clear(upstream, event)
                    continue
                try:
                    rewritten = policy.rewrite_client_event(event)
                except ClientError as exc:
                    frame_out = json.loads(self._error(exc.message, exc.code or "invalid_value"))
                    frame_out["error"].update(_client(exc), event_id=event.get("event_id"))
                    await self.client.send(json.dumps(frame_out))
                    continue
                if rewritten is not None:
                    text = json.dumps(rewritten)
            await upstream.send(text)

    async def _clear(self, upstream: ClientConnection, event: dict[str, Any]) -> None:
        response_id = await self._truncate(upstream)
        if response_id is None:
            message = json.loads(self._error("There is no output audio to clear.", "invalid_value"))
            message["error"].update(type="invalid_request_error", event_id=event.get("event_id"))
            await self.client.send(json.dumps(message))
            return
        await self.client.send(
            json.dumps(
                {
                    "type": "output_audio_buffer.cleared",
                    "event_id": self.ids.event_id(),
                    "response_id": response_id,
                }
            )
        )


def _client(exc: ClientError) -> dict[str, Any]:
    return {"type": "invalid_request_error", "param": exc.param}
