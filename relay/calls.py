"""``POST /v1/realtime/calls`` (GA), ``POST /v1/realtime?model=`` (beta) and hangup.

The offer comes as raw ``application/sdp`` or as multipart with ``sdp`` and ``session``
parts (with or without per-part content types). The answer is ``201`` with
``application/sdp`` and ``Location: /v1/realtime/calls/rtc_...``. Errors are JSON, never SDP.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from relay.auth import bearer_key, error_body, key_allowed
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge, KeyLimits
from relay.ephemeral import EphemeralKey, InvalidKey, call_id_for, call_owner, validate_session
from relay.pool import NoTransceiver
from relay.webrtc import Call
from transceiver.observability import log_event
from transceiver.protocol.contract import SessionKind, SessionSpec, Transport
from transceiver.protocol.errors import ClientError

log = logging.getLogger(__name__)


def _error(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(message, code), status_code=status)


def advertise(sdp: str, public_ip: str | None) -> str:
    """Put ``public_ip`` in the answer's host candidates (a 1:1 NAT, e.g. Docker or a cloud VM)."""
    if not public_ip:
        return sdp
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " typ host" in line:
            fields = line.split(" ")
            if len(fields) > 4 and ":" not in fields[4]:  # IPv4 host candidates
                fields[4] = public_ip
            line = " ".join(fields)
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {public_ip}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


async def _part_text(part: UploadFile | str | None) -> str:
    """A multipart part as text: with or without its own content type."""
    if part is None:
        return ""
    if isinstance(part, str):
        return part
    return (await part.read()).decode("utf-8", "replace")


class CallRegistry:
    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def drop(self, call: Call) -> None:
        self.calls.pop(call.id, None)


def calls_router(edge: Edge, registry: CallRegistry) -> APIRouter:
    router = APIRouter()
    settings, pool, signer = edge.settings, edge.pool, edge.signer
    ice = [RTCIceServer(urls=url) for url in settings.ice_servers]

    async def offer_and_session(request: Request) -> tuple[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            sdp_text = await _part_text(form.get("sdp"))
            session_text = await _part_text(form.get("session"))
            return sdp_text, json.loads(session_text) if session_text else None
        return (await request.body()).decode("utf-8", "replace"), None

    async def create_call(request: Request, model: str | None) -> Response:
        if edge.live.draining:
            return _error(
                "This server is restarting; try again shortly.", "server_shutting_down", 503
            )
        key = bearer_key({k.lower(): v for k, v in request.headers.items()})
        session: Any = None
        ephemeral: EphemeralKey | None = None
        if key is not None and key.startswith("ek_"):
            try:
                ephemeral = signer.verify(key)
                session = ephemeral.session
            except InvalidKey as exc:
                return _error(f"Ephemeral key: {exc}.", "invalid_api_key", 401)
        elif not key_allowed(key, settings.api_keys):
            return _error("Incorrect API key provided.", "invalid_api_key", 401)
        try:
            sdp, part = await offer_and_session(request)
            if part is not None:
                session = validate_session(part)
            elif session is None:
                session = validate_session({"type": "realtime", "model": model or "gpt-realtime"})
        except ClientError as exc:
            return _error(exc.message, exc.code or "invalid_value", 400)
        except ValueError:
            return _error("The 'session' part is not valid JSON.", "invalid_json", 400)
        if "v=0" not in sdp:
            return _error("The body must hold an SDP offer.", "invalid_sdp", 400)
        transcription = session.get("type") == "transcription"
        spec = SessionSpec(
            kind=SessionKind.TRANSCRIPTION if transcription else SessionKind.REALTIME,
            model=None if transcription else str(session.get("model", "gpt-realtime")),
            transport=Transport.WEBRTC,
            overrides=session,
        )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and others on bad SDP
            await pc.close()
            return _error(f"The SDP offer could not be used: {exc}", "invalid_sdp", 400)
        holder = edge.limits.acquire(KeyLimits.holder_of(key, ephemeral))
        if holder is None:
            await pc.close()
            edge.metrics.error("session_limit_reached")
            return _error(
                f"This API key already holds {edge.limits.limit} session(s) here.",
                "session_limit_reached",
                429,
            )
        call_id = call_id_for(signer, edge.peer_url)
        try:
            # The transceiver's session.start line names the call.
            member, upstream = await pool.open_session(replace(spec, conn=call_id))
        except NoTransceiver:
            edge.limits.release(holder)
            await pc.close()
            edge.metrics.placement_refusals.labels("none").inc()
            edge.metrics.error("session_limit_reached")
            return _error(
                "No transceiver can take this call now; try again later.",
                "session_limit_reached",
                503,
            )
        started = time.monotonic()
        gauge = edge.metrics.sessions.labels("webrtc")
        gauge.inc()
        edge.metrics.sessions_total.labels("webrtc").inc()

        def closed(call: Call) -> None:
            registry.drop(call)
            edge.live.discard(call)
            gauge.dec()
            edge.limits.release(holder)
            pool.release(member)
            seconds = round(time.monotonic() - started, 1)
            log_event(log, "session.closed", conn=call.id, seconds=seconds)

        async def close_for_drain() -> None:
            await call.broadcast(edge.error_event(SHUTDOWN_MESSAGE, "server_shutting_down"))
            await call.close()

        call = Call(call_id, pc, upstream, closed, settings.webrtc_idle_timeout_s)
        registry.calls[call_id] = call
        edge.live.add(call, close_for_drain)
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                pc.addTrack(call.outbound)
                break
        call.start()
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        log_event(log, "session.placed", conn=call_id, transport="webrtc", transceiver=member.url)
        return Response(
            pc.localDescription.sdp,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    @router.post("/v1/realtime/calls")
    async def calls(request: Request) -> Response:
        return await create_call(request, request.query_params.get("model"))

    @router.post("/v1/realtime")
    async def beta_call(request: Request) -> Response:
        return await create_call(request, request.query_params.get("model"))

    @router.post("/v1/realtime/calls/{call_id}/hangup")
    async def hangup(call_id: str, request: Request) -> Response:
        key = bearer_key({k.lower(): v for k, v in request.headers.items()})
        if not key_allowed(key, settings.api_keys):
            return _error("Incorrect API key provided.", "invalid_api_key", 401)
        call = registry.get(call_id)
        if call is not None:
            await call.close()
            return Response(status_code=200)
        owner = call_owner(signer, call_id)
        if owner is None or owner.rstrip("/") == edge.peer_url:
            return _error(f"Call '{call_id}' not found.", "call_not_found", 404)
        # Another relay holds the call (several relays behind one load balancer).
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                reply = await client.post(
                    f"{owner}/v1/realtime/calls/{call_id}/hangup",
                    headers={"Authorization": request.headers.get("authorization", "")},
                )
        except httpx.HTTPError:
            return _error("The relay holding this call cannot be reached.", "call_unreachable", 502)
        return Response(reply.content, reply.status_code, media_type="application/json")

    return router
