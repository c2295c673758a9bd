"""One proxied session: the upstream connection and the bridge between it and the client."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from transceiver.observability import Metrics, log_event
from transceiver.protocol.beta import session_fields_to_beta
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.errors import ClientError, server_error_event
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.media import check_media_formats, with_pcm_audio
from transceiver.protocol.session import RealtimeSession
from transceiver.proxy import fallback
from transceiver.proxy.fallback import CAPACITY, DROPPED, UNREACHABLE
from transceiver.proxy.history import History
from transceiver.proxy.local_bridge import LocalTurnsBridge
from transceiver.proxy.local_view import AudioMeter, read_input_format
from transceiver.proxy.mirror import OUTPUT_AUDIO_DELTAS, Mirror, is_output_delta
from transceiver.proxy.policy import client_event
from transceiver.proxy.turns import LocalTurns
from transceiver.proxy.upstream import ProxyBackend, UpstreamRefused
from transceiver.turns import TurnModel

__all__ = ["ProxyBackend", "ProxySession", "UpstreamRefused", "peek_type"]

log = logging.getLogger(__name__)

_TYPE = re.compile(r'"type"\s*:\s*"([^"]+)"')
_INJECTED = "event_proxy"


def peek_type(frame: str) -> str | None:
    """The event type of an upstream frame from its first bytes (``type`` comes first)."""
    match = _TYPE.search(frame, 0, 200)
    return match.group(1) if match else None


Send = Callable[[str], Awaitable[None]]


class ProxySession(LocalTurnsBridge):
    """One client session bridged to one upstream connection."""

    def __init__(
        self,
        backend: ProxyBackend,
        client: Any,
        spec: SessionSpec,
        *,
        metrics: Metrics | None = None,
        turn_model: TurnModel | None = None,
    ) -> None:
        """``turn_model``: semantic_vad's end-of-turn model, for ``--local-turn-detection``
        and the fallback."""
        self.backend = backend
        self.client = client  # a websockets connection: send, close, async iteration
        self.spec = spec
        self.transcription = spec.kind is SessionKind.TRANSCRIPTION
        self.beta = spec.beta
        self.media = spec.media
        self.ids = IdFactory()
        self.id = self.ids.new("sess")
        self.metrics = metrics or Metrics("realtime_transceiver")
        settings = backend.settings
        self.mirror = Mirror(History(settings.mirror_max_items, settings.mirror_max_bytes))
        self.fallback_reason: str | None = None
        self._unsent: str | None = None  # a client frame the upstream closed before taking
        self._injected: set[str] = set()
        self._held_created: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._early: list[tuple[dict[str, Any], str]] = []
        self._client_left = False
        self.turn_model = turn_model
        self.meter = AudioMeter(self.metrics.upstream_audio)
        self.turns = (
            LocalTurns(
                realtime=not self.transcription,
                beta=self.beta,
                ids=self.ids,
                session_id=self.id,
                turn_model=turn_model,
                on_sent=self.meter.sent,
                vad_model=backend.vad_model,
            )
            if settings.local_turn_detection
            else None
        )
        self._turns_lock = asyncio.Lock()

    async def _send_error(self, message: str, code: str, **error: Any) -> None:
        """An ``error`` event of the proxy's own, counted; ``error`` overrides its fields
        (``type``, ``param``, the client's ``event_id``)."""
        event = server_error_event(self.ids.event_id(), message, code)
        event["error"].update(error)
        self.metrics.error(code)
        await self.client.send(json.dumps(event))

    async def _refuse(self, message: str, code: str, close_code: int, **error: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._send_error(message, code, **error)
            await self.client.close(close_code, code)

    async def run(self) -> None:
        try:
            upstream = await self.backend.open(self.spec.model, self.transcription, self.beta)
        except ClientError as exc:
            await self._refuse(exc.message, exc.code or "invalid_value", 1008, **_client(exc))
            return
        except UpstreamRefused as exc:
            log.warning("upstream refused a session: %s", exc.message)
            if exc.fallback is not None and self.backend.fallback is not None:
                await self._fall_back(exc.fallback)
            else:
                await self._refuse(exc.message, exc.code, exc.close_code)
            return
        closing: asyncio.Task[None] | None = None
        try:
            reason = await self._bridge(upstream)
            if reason is not None:
                # A silent upstream may take its close timeout to close: not the client's wait.
                closing = asyncio.create_task(upstream.close())
                await self._fall_back(reason)
        finally:
            if self.turns is not None:
                self.turns.close()
            await (closing or upstream.close())
            summary = self.mirror.summary()
            log_event(log, "proxy.summary", id=self.id, fallback=self.fallback_reason, **summary)

    async def _fall_back(self, reason: str) -> None:
        """Go on with the fallback backend (transceiver/proxy/fallback.py)."""
        backend = self.backend.fallback
        assert backend is not None
        history = self.mirror.history
        resumed = history.session is not None  # the client has seen its session start
        self.fallback_reason = reason
        self.metrics.fallbacks.labels(reason).inc()
        max_audio_ms = int(self.backend.settings.max_input_audio_s * 1000)
        first: list[dict[str, Any]] = []
        try:
            if resumed:
                core, dropped = fallback.resumed_core(self.spec, history, max_audio_ms)
                error = fallback.interrupted_error(reason)
                first = history.end_open_responses(self.ids.event_id, error, self.beta)
            else:
                spec = fallback.fresh_spec(self.spec, self._upstream_model(), self._start_session())
                core = RealtimeSession(
                    spec, created_at_s=time.time(), max_input_audio_ms=max_audio_ms
                )
                dropped = []
        except ClientError as exc:  # a start configuration the fallback's core refuses
            await self._refuse(exc.message, exc.code or "invalid_value", 1008, **_client(exc))
            return
        log_event(
            log,
            "proxy.fallback",
            id=self.id,
            reason=reason,
            resumed=resumed,
            items=len(core.conversation),
            ended_responses=sum(e["type"] == "response.done" for e in first) or None,
            left_out=",".join(dropped) or None,
        )
        first.append(fallback.notice(self.ids.event_id(), reason, resumed, dropped))
        frames = self._fallback_frames()
        await fallback.run_core(
            core, backend, self.client, first, frames, self.metrics, self.turn_model
        )

    def _upstream_model(self) -> str | None:
        if self.transcription:
            return None
        return self.backend.policy.upstream_model(self.spec.model or "gpt-realtime")

    def _start_session(self) -> dict[str, Any]:
        """The session configuration the proxy applies at the start (GA): the key's or the
        offer's (as the relay validated it), and the instructions prefix."""
        overrides = self.spec.overrides or {}
        session = {k: v for k, v in overrides.items() if k not in ("model", "object", "id")}
        if self.media:  # a format in an offer's or a key's session means nothing on a track
            session = with_pcm_audio(session)
        if not self.transcription:
            instructions = self.backend.policy.instructions(session.get("instructions"))
            if instructions is not None:
                session["instructions"] = instructions
        return session

    def _initial_update(self) -> dict[str, Any] | None:
        """The ``session.update`` that applies ``_start_session`` in the upstream's dialect."""
        session = self._start_session()
        self._meter_format(session, beta=False)
        if self.turns is not None:  # the upstream does not detect turns: the proxy does
            session = self.turns.start(session)
        body = session_fields_to_beta(session) if self.beta else session
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

    async def _bridge(self, upstream: ClientConnection) -> str | None:
        """Bridge until either side ends; a fallback's reason if the session goes on."""
        update = self._initial_update()
        to_client = asyncio.create_task(self._upstream_to_client(upstream, update))
        to_upstream = asyncio.create_task(self._client_to_upstream(upstream))
        stall = asyncio.create_task(self._stalled())
        tasks: tuple[asyncio.Task[None], ...] = (to_client, to_upstream, stall)
        if self.turns is not None:
            tasks += (asyncio.create_task(self._turns_ended(upstream, self.turns)),)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if to_upstream in done and self._unsent is not None and to_client not in done:
            # The upstream closed under a client frame: what it sent before its close still
            # reaches the client (and the mirror), within a bound.
            timeout_s = self.backend.settings.upstream_open_timeout_s
            drained, _ = await asyncio.wait({to_client}, timeout=timeout_s)
            done |= drained
        for task in tasks:
            if task not in done:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if self._client_left or any(isinstance(r, _Refused) for r in results):
            return None
        with contextlib.suppress(ConnectionClosed):
            if stall in done:
                timeout_s = self.backend.settings.upstream_open_timeout_s
                log.warning("upstream did not start the session within %.0f s", timeout_s)
                if self.backend.fallback is not None:
                    return UNREACHABLE
                await self._refuse(
                    "The upstream Realtime server did not start the session in time.",
                    "upstream_unavailable",
                    1011,
                )
                return None
            failed = [r for r in results if isinstance(r, Exception) and not _closed(r)]
            if failed:  # a bug, not a client's or upstream's doing: logged, never silent
                log.error("proxy session %s failed", self.id, exc_info=failed[0])
                await self._refuse("The proxy failed this session.", "server_error", 1011)
                return None
            return await self._upstream_closed(upstream.protocol.close_rcvd)
        return None

    async def _stalled(self) -> None:
        """Returns if the upstream has not started the session within the open timeout."""
        with contextlib.suppress(TimeoutError):
            timeout_s = self.backend.settings.upstream_open_timeout_s
            await asyncio.wait_for(self._ready.wait(), timeout_s)
            await asyncio.Future()  # started: wait to be cancelled

    async def _upstream_closed(self, rcvd: Close | None) -> str | None:
        """The upstream ended the session: tell the client, with a close code that says
        whether to reconnect (1011 and 1012/1013 invite a retry, 1008 does not); or, with a
        fallback, return why the session goes on there (not after a policy refusal)."""
        if rcvd is not None and rcvd.code in (1000, 1001):
            await self.client.close(rcvd.code, rcvd.reason)
            return None
        reason = f" ({rcvd.code} {rcvd.reason})" if rcvd is not None else ""
        log.warning("upstream connection lost mid-session%s", reason)
        if rcvd is not None and (rcvd.code == 1008 or 4000 <= rcvd.code < 5000):
            await self._refuse(
                "The upstream Realtime server ended this session by policy.",
                "upstream_refused",
                1008,
            )
        elif self.backend.fallback is not None:
            return CAPACITY if rcvd is not None and rcvd.code == 1013 else DROPPED
        elif rcvd is not None and rcvd.code in (1012, 1013):  # restarting, or try later
            await self._refuse(
                "The upstream Realtime server is restarting or busy.",
                "upstream_unavailable",
                rcvd.code,
            )
        else:
            await self._refuse(
                "The upstream Realtime server dropped this session.", "upstream_unavailable", 1011
            )
        return None

    async def _upstream_to_client(
        self, upstream: ClientConnection, update: dict[str, Any] | None
    ) -> None:
        async for frame in upstream:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            etype = peek_type(text)
            self.metrics.events_out.inc()
            if etype in OUTPUT_AUDIO_DELTAS:
                await self.client.send(text)  # the hot path: not parsed
                self._output(etype)
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                log.warning("upstream sent a frame that is not a JSON object; forwarded")
                await self.client.send(text)
                continue
            if not self._ready.is_set():
                update = await self._configure(upstream, event, text, update)
                continue
            if event.get("type") == "error" and self._answers_injection(event):
                log.warning("upstream refused a proxy event: %s", event.get("error"))
                if self.turns is not None:
                    self.turns.refused(event)
                continue
            await self._forward(event, text)

    async def _forward(self, event: dict[str, Any], text: str) -> None:
        if self.turns is not None:
            event, text = self._local_view(self.turns, event, text)
        await self._deliver(event, text)

    async def _deliver(self, event: dict[str, Any], text: str) -> None:
        await self.client.send(text)
        etype = event.get("type")
        self._output(etype if isinstance(etype, str) else None)
        for kind, tokens in self.mirror.observe(event, time.monotonic()).items():
            self.metrics.usage_tokens.labels(kind.removesuffix("_tokens")).inc(tokens)
        if etype == "error":
            self.metrics.error((event.get("error") or {}).get("code"))

    def _output(self, etype: str | None) -> None:
        """After a frame reached the client: the turn's first output delta is its latency."""
        if not is_output_delta(etype):
            return
        seconds = self.mirror.first_output(time.monotonic())
        if seconds is not None:
            self.metrics.turn_latency.labels("first_delta").observe(seconds)
            log_event(log, "turn", session_id=self.id, first_delta_ms=round(seconds * 1000))

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
        if etype == "error" and _auth_error(event):
            # An admission error for the server's key: the client is told the server's
            # credentials failed, never shown the upstream's message (it names the key).
            log.warning("upstream refused the server's credentials: %s", event.get("error"))
            await self._refuse(
                "The upstream Realtime server refused the server's credentials.",
                "upstream_auth_failed",
                1008,
            )
            raise _Refused
        if self._held_created is None:
            if etype.endswith("session.created") and update is not None:
                if self.turns is not None:  # the upstream's default turn detection
                    self.turns.client_view(copy.deepcopy(event))
                self._held_created = event
                await self._inject(upstream, update)
                return None
            self._ready.set()
            await self._forward(event, text)
            return update
        if etype.endswith("session.updated") and isinstance(event.get("session"), dict):
            created = {**self._held_created, "session": event["session"]}
            if self.turns is not None:
                self.turns.client_view(created)
            await self.client.send(json.dumps(created))
            self.mirror.history.observe(created)
        elif etype == "error" and self._answers_injection(event):
            # Without its configuration (the instructions prefix, the key's or the offer's
            # session) the session must not run: fail closed, with the upstream's reason.
            error = dict(event.get("error") or {})
            log.warning("upstream refused the session configuration: %s", error)
            await self._refuse(
                "The upstream Realtime server refused this session's configuration: "
                f"{error.get('message', 'no reason given')}",
                "session_configuration_refused",
                1008,
            )
            raise _Refused
        else:
            self._early.append((event, text))
            return None
        self._held_created = None
        self._ready.set()
        for early_event, early_text in self._early:
            await self._forward(early_event, early_text)
        self._early.clear()
        return None

    def _answers_injection(self, event: dict[str, Any]) -> bool:
        """Whether an ``error`` answers an event the proxy sent (not the client)."""
        if self.turns is not None and self.turns.answers(event):
            return True
        return (event.get("error") or {}).get("event_id") in self._injected

    async def _client_to_upstream(self, upstream: ClientConnection) -> None:
        await self._ready.wait()  # the configuration is applied before any client event
        try:
            async for frame in self.client:
                text = await self._client_frame(frame)
                if text is None:
                    continue
                self._unsent = text  # until the upstream took it: else a fallback takes it
                try:
                    if self.turns is None:
                        if peek_type(text) == "input_audio_buffer.append":
                            self.meter.passed(text)
                        await upstream.send(text)
                    else:
                        await self._local_client_frame(upstream, self.turns, text)
                except ConnectionClosed:
                    return  # the upstream ended: _bridge tells the client
                self._unsent = None
        except ConnectionClosed:
            pass
        self._client_left = True

    async def _client_frame(self, frame: str | bytes) -> str | None:
        """A client frame as it goes on, the policy applied; ``None`` if the policy refused
        it (the client has been told)."""
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        self.metrics.events_in.inc()
        event = client_event(text)
        if event is None:
            return text
        try:
            if self.media and event.get("type") == "session.update":
                check_media_formats(event.get("session"))
            elif self.media and event.get("type") == "response.create":
                check_media_formats(event.get("response"), "response")
            if str(event.get("type")).endswith("session.update"):
                self._meter_format(event.get("session"))
            rewritten = self.backend.policy.rewrite_client_event(event)
        except ClientError as exc:
            await self._send_error(
                exc.message,
                exc.code or "invalid_value",
                **_client(exc),
                event_id=event.get("event_id"),
            )
            return None
        return text if rewritten is None else json.dumps(rewritten)

    def _meter_format(self, session: Any, *, beta: bool | None = None) -> None:
        with contextlib.suppress(ClientError):  # the upstream (or LocalTurns) answers it
            fmt = read_input_format(session, self.beta if beta is None else beta)
            self.meter.fmt = fmt or self.meter.fmt

    async def _fallback_frames(self) -> AsyncIterator[str]:
        """The client's frames for a fallback: the one the upstream did not take, then the
        rest, under the same policy."""
        unsent, self._unsent = self._unsent, None
        if unsent is not None:
            yield unsent
        async for frame in self.client:
            text = await self._client_frame(frame)
            if text is not None:
                yield text


class _Refused(Exception):
    """The session was refused and the client told; the bridge ends quietly."""


def _closed(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionClosed, _Refused))


_AUTH_CODES = frozenset({"invalid_api_key", "invalid_authentication", "unauthorized"})


def _auth_error(event: dict[str, Any]) -> bool:
    error = event.get("error")
    if not isinstance(error, dict):
        return False
    message = str(error.get("message") or "")
    return error.get("code") in _AUTH_CODES or message.startswith("Incorrect API key")


def _client(exc: ClientError) -> dict[str, Any]:
    return {"type": "invalid_request_error", "param": exc.param}
