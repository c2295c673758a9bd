"""The openai backend's fallback (``--fallback local``, or ``mock`` for tests and demos).

When the upstream cannot be reached, refuses a session for capacity (HTTP 429 or 503, close
code 1013) or drops a live one, the session goes on with a backend of this server instead
of closing: a caller hears a slower, smaller model rather than silence. Refusals of the
server's credentials (401, 403) or by policy (1008) are configuration errors and still end
the session (transceiver/proxy/session.py).

- Before the client saw ``session.created``: the fallback starts the session as the proxy
  would have (the key's or the offer's configuration, the instructions prefix, the mapped
  model), and the client sees one ``session.created``, from the fallback.
- After: the fallback's core resumes from what the client has seen
  (transceiver/proxy/history.py): the last session configuration and the conversation
  items, with their ids (``RealtimeSession.resume``: no second ``session.created``). A
  response the upstream left in progress ends first with ``response.done`` (``failed``).
  Replayed items carry text and transcripts, not audio; client events the upstream had
  received but not answered are not replayed.

Either way the client gets a non-fatal ``error`` event (``upstream_unavailable_fallback``,
type ``server_error``) saying so, and the transceiver counts it in
``realtime_transceiver_fallbacks_total{reason}``.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import AsyncIterable
from typing import Any

from websockets.exceptions import ConnectionClosed

from transceiver.backends.base import Backend
from transceiver.observability import Metrics
from transceiver.protocol.beta import BetaDialect
from transceiver.protocol.config import SessionConfig, apply_session_update, default_config
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.errors import ClientError, server_error_event
from transceiver.protocol.media import with_pcm_audio
from transceiver.protocol.session import RealtimeSession
from transceiver.protocol.wire import encode_server_event
from transceiver.proxy.history import History
from transceiver.runner import SessionRunner
from transceiver.turns import TurnModel

FALLBACK_CODE = "upstream_unavailable_fallback"
# The reasons, as realtime_transceiver_fallbacks_total labels them.
UNREACHABLE = "unreachable"  # no connection, no handshake, or no session.created in time
CAPACITY = "capacity"  # HTTP 429 or 503, or close code 1013 (try again later)
DROPPED = "dropped"  # the connection ended mid-session (1011, 1012, or no close frame)

_WHY = {
    UNREACHABLE: "The upstream Realtime server could not be reached",
    CAPACITY: "The upstream Realtime server is at capacity",
    DROPPED: "The upstream Realtime server dropped this session",
}
# How many session fields the fallback's core may leave out before it takes none at all.
_MAX_DROPPED_FIELDS = 16
_PART_TO_GA = {"text": "output_text", "audio": "output_audio"}


def notice(
    event_id: str, reason: str, resumed: bool, left_out: list[str] | None = None
) -> dict[str, Any]:
    """The non-fatal ``error`` event that tells the client its session changed backends,
    and which of its session's settings the fallback could not take (``left_out``)."""
    then = (
        "; the session goes on with this server's fallback model and the conversation so far"
        if resumed
        else "; the session runs on this server's fallback model instead"
    )
    if left_out:
        then += " (without these settings, which it does not support: " + ", ".join(left_out) + ")"
    message = _WHY.get(reason, _WHY[DROPPED]) + then + "."
    return server_error_event(event_id, message, FALLBACK_CODE)


def interrupted_error(reason: str) -> dict[str, Any]:
    """The ``error`` of a ``response.done`` that the upstream left unfinished."""
    message = _WHY.get(reason, _WHY[DROPPED]) + " while this response was in progress."
    return {"type": "server_error", "code": "upstream_unavailable", "message": message}


def resumed_config(spec: SessionSpec, session: dict[str, Any]) -> tuple[SessionConfig, list[str]]:
    """The fallback core's configuration for the session object the client last saw (in
    its dialect), and the fields it had to leave out: an upstream may show fields, or
    values, this server's core does not take."""
    seen = copy.deepcopy(session)
    model = seen.get("model")
    base = default_config(spec.kind, model if isinstance(model, str) else spec.model)
    try:
        wanted = BetaDialect().session_to_ga(seen, spec.kind.value) if spec.beta else seen
    except ClientError:
        return base, ["session"]
    if spec.media:
        wanted = with_pcm_audio(wanted)
    dropped: list[str] = []
    for _ in range(_MAX_DROPPED_FIELDS):
        try:
            return apply_session_update(base, wanted), dropped
        except ClientError as exc:
            target = exc.param
            while target is not None and not _drop(wanted, target):
                target = _parent(target)  # a field that is missing: its object goes
            if target is None:
                break
            dropped.append(target)
    return base, [*dropped, "session"]


def _drop(session: dict[str, Any], param: str) -> bool:
    """Remove what ``param`` names (``session.audio.input.foo``; in an array, the element:
    ``session.tools[1].type`` drops that tool); ``False`` if it names nothing there."""
    if not param.startswith("session.") and not param.startswith("session["):
        return False
    steps = [
        int(index) if index else key for key, index in _STEP.findall(param.removeprefix("session"))
    ]
    node: Any = session
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(node, list) or not 0 <= step < len(node):
                return False
            del node[step]  # an array element goes whole
            return True
        if not isinstance(node, dict) or step not in node:
            return False
        if last:
            del node[step]
            return True
        node = node[step]
    return False


_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def _parent(param: str) -> str | None:
    """``session.a.b`` -> ``session.a``; ``None`` above the session's own fields."""
    parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", param)
    return parent if parent not in (param, "session") else None


def replayed_items(history: History) -> list[dict[str, Any]]:
    """The conversation items the client has seen, in GA shape, for ``RealtimeSession.resume``."""
    items: list[dict[str, Any]] = []
    for item in history.items():
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            continue
        ga = {key: value for key, value in item.items() if key != "object"}
        if kind != "message":
            ga.pop("content", None)  # function calls and outputs have none
        else:
            content = item.get("content")
            if item.get("role") not in ("user", "assistant", "system"):
                continue
            if not isinstance(content, list):
                continue
            names = _PART_TO_GA if item["role"] == "assistant" else {}
            ga["content"] = [
                {**part, "type": names.get(part["type"], part["type"])}
                for part in content
                if isinstance(part, dict) and isinstance(part.get("type"), str)
            ]
        items.append(ga)
    return items


def resumed_core(
    spec: SessionSpec, history: History, max_input_audio_ms: int
) -> tuple[RealtimeSession, list[str]]:
    """The core that goes on from what the client has seen, and the session fields it left
    out (logged)."""
    session = history.session or {}
    config, dropped = resumed_config(spec, session)
    expires_at = session.get("expires_at")
    session_id = session.get("id")
    return (
        RealtimeSession.resume(
            spec,
            config,
            replayed_items(history),
            session_id=session_id if isinstance(session_id, str) else None,
            conversation_id=history.conversation_id,
            expires_at_s=expires_at if isinstance(expires_at, int) and expires_at else None,
            created_at_s=time.time(),
            max_input_audio_ms=max_input_audio_ms,
        ),
        dropped,
    )


def fresh_spec(spec: SessionSpec, model: str | None, session: dict[str, Any]) -> SessionSpec:
    """``spec`` as the proxy would have started it upstream: the mapped ``model`` and the
    configuration ``session`` (GA; the key's or the offer's, with the instructions prefix)."""
    kind_realtime = spec.kind is SessionKind.REALTIME
    return SessionSpec(
        kind=spec.kind,
        model=model if kind_realtime else spec.model,
        dialect=spec.dialect,
        transport=spec.transport,
        overrides=session or None,
        conn=spec.conn,
    )


async def run_core(
    core: RealtimeSession,
    backend: Backend,
    client: Any,
    first: list[dict[str, Any]],
    frames: AsyncIterable[str | bytes],
    metrics: Metrics,
    turn_model: TurnModel | None = None,
) -> None:
    """Run ``core`` on ``backend`` over the client connection until it ends: what the core
    has to say (a fresh session's ``session.created``), then ``first``, then the session;
    semantic_vad's pauses are judged by ``turn_model``, the server's (transceiver/turns.py),
    as in any session of the fallback's backend."""

    async def send(message: str) -> None:
        metrics.events_out.inc()
        if message.startswith('{"type":"error"'):
            metrics.error(json.loads(message).get("error", {}).get("code"))
        await client.send(message)

    async def close(code: int, reason: str) -> None:
        await client.close(code, reason)

    try:
        for event in [*core.events_to_send(), *first]:
            await send(encode_server_event(event))
        runner = SessionRunner(core, backend, send, close, metrics=metrics, turn_model=turn_model)
        await runner.run(frames)
    except ConnectionClosed:
        pass
