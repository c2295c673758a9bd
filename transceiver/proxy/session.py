"""One proxied session: the upstream connection and the bridge between it and the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close

from transceiver.observability import Metrics, log_event
from transceiver.protocol.beta import session_fields_to_beta
from transceiver.protocol.contract import SessionKind, SessionSpec
from transceiver.protocol.errors import ClientError, server_error_event
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.media import check_media_formats, with_pcm_audio
from transceiver.proxy.mirror import OUTPUT_AUDIO_DELTAS, Mirror, is_output_delta
from transceiver.proxy.policy import ProxyPolicy, client_event
from transceiver.settings import TransceiverSettings

log = logging.getLogger(__name__)

_TYPE = re.compile(r'"type"\s*:\s*"([^"]+)"')
_INJECTED = "event_proxy"


def peek_type(frame: str) -> str | None:
    """The event type of an upstream frame from its first bytes (``type`` comes first)."""
    match = _TYPE.search(frame, 0, 200)
    return match.group(1) if match else None


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
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            # The details (host, address, handshake) go to the log, not to the client.
            log.warning("upstream unreachable: %s", exc or type(exc).__name__)
            raise UpstreamRefused(
                "The upstream Realtime server could not be reached.",
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
        spec: SessionSpec,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.client = client  # a websockets connection: send, close, async iteration
        self.spec = spec
        self.transcription = spec.kind is SessionKind.TRANSCRIPTION
        self.beta = spec.beta
        self.media = spec.media
        self.ids = IdFactory()
        self.id = self.ids.new("sess")
        self.metrics = metrics or Metrics("realtime_transceiver")
        self.mirror = Mirror()
        self._injected: set[str] = set()
        self._held_created: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._early: list[tuple[dict[str, Any], str]] = []
        self._client_left = False

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
            await self._refuse(exc.message, exc.code, exc.close_code)
            return
        try:
            await self._bridge(upstream)
        finally:
            await upstream.close()
            log_event(log, "proxy.summary", id=self.id, **self.mirror.summary())

    def _initial_update(self) -> dict[str, Any] | None:
        """The ``session.update`` that applies the key's or the offer's configuration (GA,
        as the relay validated it) and the instructions prefix, in the upstream's dialect."""
        overrides = self.spec.overrides or {}
        session = {k: v for k, v in overrides.items() if k not in ("model", "object", "id")}
        if self.media:  # a format in an offer's or a key's session means nothing on a track
            session = with_pcm_audio(session)
        if not self.transcription:
            instructions = self.backend.policy.instructions(session.get("instructions"))
            if instructions is not None:
                session["instructions"] = instructions
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

    async def _bridge(self, upstream: ClientConnection) -> None:
        update = self._initial_update()
        to_client = asyncio.create_task(self._upstream_to_client(upstream, update))
        to_upstream = asyncio.create_task(self._client_to_upstream(upstream))
        stall = asyncio.create_task(self._stalled())
        tasks = (to_client, to_upstream, stall)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task not in done:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if self._client_left or any(isinstance(r, _Refused) for r in results):
            return
        with contextlib.suppress(ConnectionClosed):
            if stall in done:
                timeout_s = self.backend.settings.upstream_open_timeout_s
                log.warning("upstream did not start the session within %.0f s", timeout_s)
                await self._refuse(
                    "The upstream Realtime server did not start the session in time.",
                    "upstream_unavailable",
                    1011,
                )
                return
            failed = [r for r in results if isinstance(r, Exception) and not _closed(r)]
            if failed:  # a bug, not a client's or upstream's doing: logged, never silent
                log.error("proxy session %s failed", self.id, exc_info=failed[0])
                await self._refuse("The proxy failed this session.", "server_error", 1011)
                return
            await self._upstream_closed(upstream.protocol.close_rcvd)

    async def _stalled(self) -> None:
        """Returns if the upstream has not started the session within the open timeout."""
        with contextlib.suppress(TimeoutError):
            timeout_s = self.backend.settings.upstream_open_timeout_s
            await asyncio.wait_for(self._ready.wait(), timeout_s)
            await asyncio.Future()  # started: wait to be cancelled

    async def _upstream_closed(self, rcvd: Close | None) -> None:
        """The upstream ended the session: tell the client, with a close code that says
        whether to reconnect (1011 and 1012/1013 invite a retry, 1008 does not)."""
        if rcvd is not None and rcvd.code in (1000, 1001):
            await self.client.close(rcvd.code, rcvd.reason)
            return
        reason = f" ({rcvd.code} {rcvd.reason})" if rcvd is not None else ""
        log.warning("upstream connection lost mid-session%s", reason)
        if rcvd is not None and (rcvd.code == 1008 or 4000 <= rcvd.code < 5000):
            await self._refuse(
                "The upstream Realtime server ended this session by policy.",
                "upstream_refused",
                1008,
            )
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
                continue
            await self._forward(event, text)

    async def _forward(self, event: dict[str, Any], text: str) -> None:
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
                self._held_created = event
                await self._inject(upstream, update)
                return None
            self._ready.set()
            await self._forward(event, text)
            return update
        if etype.endswith("session.updated") and isinstance(event.get("session"), dict):
            await self.client.send(json.dumps({**self._held_created, "session": event["session"]}))
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
        return (event.get("error") or {}).get("event_id") in self._injected

    async def _client_to_upstream(self, upstream: ClientConnection) -> None:
        await self._ready.wait()  # the configuration is applied before any client event
        policy = self.backend.policy
        try:
            async for frame in self.client:
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                self.metrics.events_in.inc()
                event = client_event(text)
                if event is not None:
                    try:
                        if self.media and event.get("type") == "session.update":
                            check_media_formats(event.get("session"))
                        rewritten = policy.rewrite_client_event(event)
                    except ClientError as exc:
                        await self._send_error(
                            exc.message,
                            exc.code or "invalid_value",
                            **_client(exc),
                            event_id=event.get("event_id"),
                        )
                        continue
                    if rewritten is not None:
                        text = json.dumps(rewritten)
                try:
                    await upstream.send(text)
                except ConnectionClosed:
                    return  # the upstream ended: _bridge tells the client
        except ConnectionClosed:
            pass
        self._client_left = True


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
