"""Twilio Media Streams: a phone call to a Twilio number, as a Realtime session.

Two routes (https://www.twilio.com/docs/voice/media-streams):

- ``POST /v1/twilio/voice``, the number's voice webhook, answers with TwiML that connects
  the call to a bidirectional stream, ``<Connect><Stream url="wss://HOST/v1/twilio/media">``,
  with the session's settings as ``<Parameter>`` elements. The settings are the webhook
  URL's query parameters (``session``: a JSON session object; ``instructions``, ``voice``,
  ``model``), checked here so that a bad one is a 400 before any call is connected.
- ``WS /v1/twilio/media`` speaks Twilio's protocol: ``connected``, ``start``, ``media``,
  ``dtmf``, ``mark`` and ``stop`` in; ``media``, ``mark`` and ``clear`` out. The stream's
  ``customParameters`` (or ``--twilio-session``) configure a Realtime session whose audio
  is ``audio/pcmu`` both ways (:func:`relay.phone.phone_session`), so Twilio's 8 kHz mu-law
  passes through unchanged. Each assistant audio delta goes out as a ``media`` message
  followed by a ``mark``; Twilio echoes a mark once the audio before it has played, which
  tells the relay what the caller heard (:class:`relay.phone.Playout`). When the caller
  speaks over the assistant (``input_audio_buffer.speech_started`` while its audio is
  unplayed, and the session's turn detection interrupts responses) the relay sends
  ``clear``, which drops the audio Twilio still holds, and truncates each cut item to what
  was played (``conversation.item.truncate``). A ``dtmf`` key press is logged (not the
  digit: keypads carry PINs and card numbers) and counted. ``stop``, a closed socket or no
  message for ``--twilio-idle-timeout-s`` ends the session; so does the session's end.

Auth: Twilio cannot send an API key; it signs its requests (``X-Twilio-Signature``,
HMAC-SHA1 with the account's auth token over the URL and the sorted POST parameters:
https://www.twilio.com/docs/usage/security#validating-requests). With
``--twilio-auth-token`` both routes require a valid signature (else 403, and the WebSocket
is refused). Without it they refuse every request unless ``--twilio-allow-unsigned`` says
that anyone who can reach them may start calls. Calls are admitted like any session
(:func:`relay.phone.admit_call`, transport ``twilio``); the Twilio account holds the place
of the API key in ``--max-sessions-per-key``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed

from relay.admission import Refused
from relay.bodies import read_body
from relay.edge import Edge, EdgeDep
from relay.errors import ApiError, answer_websocket_failure, draining
from relay.link import Upstream
from relay.phone import Playout, admit_call, call_spec, phone_session, truncate_event
from relay.ratelimit import SessionRates
from relay.twilio_signature import SIGNATURE_HEADER, check_signature, public_base, public_url
from relay.webrtc import _interrupts
from transceiver.observability import log_event
from transceiver.protocol.contract import Transport
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.wire import loads_strict

log = logging.getLogger(__name__)
router = APIRouter()

MEDIA_PATH = "/v1/twilio/media"
SETTINGS = ("session", "instructions", "voice", "model")  # the call's settings, by name
START_TIMEOUT_S = 10.0  # Twilio sends connected and start as soon as the socket opens
_MAX_FORM_FIELDS = 200


# -- the voice webhook ------------------------------------------------------------------


def _call_session(edge: Edge, values: dict[str, str]) -> dict[str, Any]:
    """The session a call's settings (``SETTINGS``, as strings) ask for; ``ClientError``."""
    default = edge.settings.twilio_session
    if default is not None:
        try:
            phone_session(default)
        except ClientError as exc:
            raise ApiError(
                500,
                f"The server's --twilio-session is not valid: {exc.message}",
                "invalid_server_config",
                type="server_error",
            ) from None
    session: Any = None
    if values.get("session"):
        try:
            session = loads_strict(values["session"])
        except (ValueError, RecursionError):
            raise ClientError("'session' is not valid JSON.", param="session") from None
        if not isinstance(session, dict):
            raise ClientError("'session' must be a JSON object.", param="session")
    return phone_session(
        edge.settings.twilio_session,
        session,
        instructions=values.get("instructions"),
        voice=values.get("voice"),
        model=values.get("model"),
    )


def twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """``<Response><Connect><Stream url=...>`` with a ``<Parameter>`` for each setting."""
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


async def _form(request: Request, edge: Edge) -> list[tuple[str, str]]:
    body = await read_body(request, edge.settings.max_body_bytes)
    try:
        return parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(
            400, "The body must be a form (application/x-www-form-urlencoded).", "invalid_form"
        ) from None


@router.post("/v1/twilio/voice")
async def voice(request: Request, edge: EdgeDep) -> Response:
    """The voice webhook: TwiML connecting the call to this relay's media stream."""
    form = await _form(request, edge)
    url = public_url(edge.settings, request, websocket=False)
    check_signature(edge.settings, url, form, request.headers.get(SIGNATURE_HEADER))
    if edge.live.draining:
        raise draining()
    values = dict(request.query_params)
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ApiError(
            400,
            f"Unknown parameter '{unknown[0]}'; the supported ones are "
            + ", ".join(f"'{name}'" for name in SETTINGS)
            + ".",
            "unknown_parameter",
            param=unknown[0],
        )
    try:
        _call_session(edge, values)
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code or "invalid_value", param=exc.param) from None
    stream_url = public_base(edge.settings, request, websocket=True) + MEDIA_PATH
    return Response(twiml(stream_url, values), media_type="text/xml")


# -- the media stream -------------------------------------------------------------------


@router.websocket(MEDIA_PATH)
async def media(websocket: WebSocket, edge: EdgeDep) -> None:
    """A Twilio media stream; a bug here is logged and closes the stream (1011)."""
    try:
        await _media(websocket, edge)
    except Exception:
        log.exception("twilio media stream failed")
        await answer_websocket_failure(websocket)  # Twilio reads no Realtime events


async def _media(websocket: WebSocket, edge: Edge) -> None:
    url = public_url(edge.settings, websocket, websocket=True)
    try:
        check_signature(edge.settings, url, [], websocket.headers.get(SIGNATURE_HEADER))
        if edge.live.draining:
            raise draining()
    except ApiError as exc:
        await websocket.send_denial_response(exc.response())
        return
    await websocket.accept()
    start = await _read_start(websocket)
    if start is None:
        return
    stream_sid = str(start.get("streamSid") or "")
    params = start.get("customParameters")
    values = {k: str(v) for k, v in params.items()} if isinstance(params, dict) else {}
    try:
        _check_format(start.get("mediaFormat"))
        session = _call_session(edge, {k: v for k, v in values.items() if k in SETTINGS})
    except ApiError as exc:
        log.error("twilio stream %s refused: %s", stream_sid, exc.message)
        await websocket.close(1011, "server configuration")
        return
    except ClientError as exc:
        log.warning("twilio stream %s refused: %s (%s)", stream_sid, exc.message, exc.param)
        await websocket.close(1008, exc.message[:120])
        return
    spec = call_spec(session, Transport.TWILIO)
    try:
        admission = await admit_call(edge, spec, f"twilio:{start.get('accountSid') or ''}")
    except (Refused, ApiError) as exc:
        log.warning("twilio stream %s refused: %s", stream_sid, exc.message)
        await websocket.close(1013 if isinstance(exc, Refused) else 1012, exc.message[:120])
        return
    log_event(log, "twilio.stream", conn=admission.conn, stream=stream_sid)
    stream = TwilioStream(
        websocket, admission.upstream, edge, stream_sid, admission.conn, admission.rates
    )
    async with admission:
        admission.on_drain(stream.end)
        await stream.run()


async def _read_start(websocket: WebSocket) -> dict[str, Any] | None:
    """The ``start`` message's ``start`` object (after ``connected``); ``None``, with the
    socket closed, if it does not come within ``START_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                message = _message(await websocket.receive())
                if message is None:
                    return None
                if message.get("event") == "start" and isinstance(message.get("start"), dict):
                    start: dict[str, Any] = message["start"]
                    start.setdefault("streamSid", message.get("streamSid"))
                    return start
    except TimeoutError:
        log.warning("twilio stream: no start message within %.0f s", START_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await websocket.close(1008, "no start message")
        return None


def _message(message: Any) -> dict[str, Any] | None:
    """A Twilio message as a JSON object; ``None`` once the socket closed. Anything that
    is not a JSON object becomes ``{}`` (ignored)."""
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_format(media_format: Any) -> None:
    """Twilio streams 8 kHz mono mu-law; anything else cannot be passed through."""
    if not isinstance(media_format, dict):
        return
    encoding, rate = media_format.get("encoding"), media_format.get("sampleRate")
    if encoding not in (None, "audio/x-mulaw") or rate not in (None, 8000):
        raise ClientError(
            f"The stream's media format ({encoding} at {rate} Hz) is not 8 kHz mu-law.",
            param="mediaFormat",
        )


class TwilioStream:
    """One media stream joined to its Realtime session until either ends."""

    def __init__(
        self,
        websocket: WebSocket,
        upstream: Upstream,
        edge: Edge,
        stream_sid: str,
        conn: str,
        rates: SessionRates | None = None,
    ) -> None:
        self.websocket = websocket
        self.rates = rates  # the account's rate limits (relay/ratelimit.py)
        self.upstream = upstream
        self.edge = edge
        self.stream_sid = stream_sid
        self.conn = conn
        self.playout = Playout()
        self.ids = IdFactory()
        self.barge_in = True  # the session's turn detection interrupts responses
        self.dtmf = 0
        self._ended = asyncio.Event()
        self._close_code = 1000

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._from_twilio()),
            asyncio.create_task(self._from_session()),
            asyncio.create_task(self._ended.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.websocket.close(self._close_code)
            log_event(log, "twilio.stream.end", conn=self.conn, dtmf=self.dtmf)

    async def end(self) -> None:
        """End the stream for a drain (1012, service restart); Twilio goes on to the TwiML
        after ``<Connect>``, or hangs up when there is none."""
        self._close_code = 1012
        self._ended.set()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message))
        self.edge.metrics.events_out.inc()

    async def _to_session(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.upstream.send(text)

    # -- Twilio -> session ----------------------------------------------------------

    async def _from_twilio(self) -> None:
        idle_s = self.edge.settings.twilio_idle_timeout_s
        while True:
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation that meets a message.
                async with asyncio.timeout(idle_s):
                    raw = await self.websocket.receive()
            except TimeoutError:
                log.info("twilio stream %s: nothing for %.0f s", self.stream_sid, idle_s)
                return
            message = _message(raw)
            if message is None:
                return
            event = message.get("event")
            if event == "media":
                await self._media(message.get("media"))
            elif event == "mark":
                mark = message.get("mark")
                if isinstance(mark, dict):
                    self.playout.played(str(mark.get("name")))
            elif event == "dtmf":
                self.dtmf += 1
                self.edge.metrics.events_in.inc()
                log_event(log, "twilio.dtmf", conn=self.conn)
            elif event == "stop":
                log.info("twilio stream %s stopped", self.stream_sid)
                return

    async def _media(self, media: Any) -> None:
        if not isinstance(media, dict) or media.get("track", "inbound") != "inbound":
            return
        payload = media.get("payload")
        if isinstance(payload, str) and payload:
            self.edge.metrics.events_in.inc()
            append = {"type": "input_audio_buffer.append", "audio": payload}
            await self._to_session(json.dumps(append))

    # -- session -> Twilio ----------------------------------------------------------

    async def _from_session(self) -> None:
        try:
            async for frame in self.upstream:
                if self.rates is not None and await self._rate_limited(frame):
                    continue
                event = json.loads(frame)
                if isinstance(event, dict):
                    await self._server_event(event)
        except ConnectionClosed:
            pass
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # Twilio went away mid-send
        if self.upstream.protocol.close_rcvd is None:
            log.warning("twilio stream %s: the session's transceiver was lost", self.conn)
            self._close_code = 1011  # RFC 6455: the server met an unexpected condition

    async def _rate_limited(self, frame: str | bytes) -> bool:
        """Count the frame against the account's limits; True: drop it. A response past
        the limits is cancelled (its ``error`` and ``rate_limits.updated`` are only logged:
        Twilio's protocol carries no Realtime events back to the caller)."""
        assert self.rates is not None
        action = self.rates.on_server(frame)
        for text in action.to_upstream:
            await self._to_session(text)
        for text in action.to_client:
            if '"rate_limit_exceeded"' in text:
                log_event(log, "twilio.rate_limited", conn=self.conn)
        return action.drop

    async def _server_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            await self._play(event)
        elif kind == "input_audio_buffer.speech_started":
            if self.barge_in and self.playout.unplayed:
                await self._cut()
        elif kind == "response.done":
            response = event.get("response")
            self.playout.response_done(response.get("id") if isinstance(response, dict) else None)
        elif kind in ("session.created", "session.updated"):
            self.barge_in = _interrupts(event.get("session"))
        elif kind == "conversation.item.truncated":
            log_event(
                log,
                "twilio.truncated",
                conn=self.conn,
                item=event.get("item_id"),
                audio_end_ms=event.get("audio_end_ms"),
            )
        elif kind == "error":
            error = event.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            log.warning("twilio stream %s: session error %s", self.conn, code)

    async def _play(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        response_id = response_id if isinstance(response_id, str) else None
        delta = event.get("delta")
        if not self.playout.accepts(response_id) or not isinstance(delta, str) or not delta:
            return
        try:
            size = len(base64.b64decode(delta, validate=True))
        except (binascii.Error, ValueError):
            return
        await self._send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": delta}}
        )
        self.playout.sent(response_id, str(event.get("item_id") or ""), size)
        name = self.playout.checkpoint()
        if name is not None:
            await self._send(
                {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
            )

    async def _cut(self) -> None:
        """Barge-in: Twilio drops what it holds; the session keeps what was heard."""
        await self._send({"event": "clear", "streamSid": self.stream_sid})
        for item_id, heard_ms in self.playout.cut():
            log_event(log, "twilio.barge_in", conn=self.conn, item=item_id, heard_ms=heard_ms)
            await self._to_session(truncate_event(self.ids.event_id(), item_id, heard_ms))
