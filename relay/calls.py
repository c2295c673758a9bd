"""``POST /v1/realtime/calls`` (GA), ``POST /v1/realtime?model=`` (beta) and hangup.

The offer comes as raw ``application/sdp`` or as multipart with ``sdp`` and ``session``
parts (with or without per-part content types), as in the OpenAI WebRTC guide
(https://platform.openai.com/docs/guides/realtime-webrtc). The answer is ``201`` with
``application/sdp`` and ``Location: /v1/realtime/calls/rtc_...``. Errors are JSON, never SDP.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from relay.admission import Admission, admit
from relay.auth import ApiKeyAuth, ClientAuth, Credentials
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge, EdgeDep
from relay.ephemeral import call_id_for, call_owner, validate_session
from relay.errors import ApiError, draining
from relay.webrtc import Call
from transceiver.protocol.contract import SessionKind, SessionSpec, Transport
from transceiver.protocol.errors import ClientError

router = APIRouter()


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


async def _offer_and_session(request: Request) -> tuple[str, Any]:
    """The SDP offer and the ``session`` part (parsed JSON, ``None`` if absent)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        sdp_text = await _part_text(form.get("sdp"))
        session_text = await _part_text(form.get("session"))
        return sdp_text, json.loads(session_text) if session_text else None
    return (await request.body()).decode("utf-8", "replace"), None


async def read_offer(
    request: Request, credentials: Credentials, model: str | None
) -> tuple[str, SessionSpec]:
    """The offer and the session it asks for: the ``session`` part, else the ephemeral
    key's session, else a realtime session with ``model``."""
    session: Any = credentials.ephemeral.session if credentials.ephemeral else None
    try:
        sdp, part = await _offer_and_session(request)
        if part is not None:
            session = validate_session(part)
        elif session is None:
            session = validate_session({"type": "realtime", "model": model or "gpt-realtime"})
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code or "invalid_value", param=exc.param) from None
    except ValueError:
        raise ApiError(400, "The 'session' part is not valid JSON.", "invalid_json") from None
    if "v=0" not in sdp:
        raise ApiError(400, "The body must hold an SDP offer.", "invalid_sdp")
    transcription = session.get("type") == "transcription"
    spec = SessionSpec(
        kind=SessionKind.TRANSCRIPTION if transcription else SessionKind.REALTIME,
        model=None if transcription else str(session.get("model", "gpt-realtime")),
        transport=Transport.WEBRTC,
        overrides=session,
    )
    return sdp, spec


async def _peer(edge: Edge, sdp: str) -> RTCPeerConnection:
    """A peer connection with the caller's offer set, or a 400."""
    ice = [RTCIceServer(urls=url) for url in edge.settings.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # aiortc raises ValueError and others on bad SDP
        await pc.close()
        raise ApiError(400, f"The SDP offer could not be used: {exc}", "invalid_sdp") from None
    return pc


def _start_call(edge: Edge, pc: RTCPeerConnection, admission: Admission) -> Call:
    """The call over ``pc`` for an admitted session, registered and running."""

    def closed(call: Call) -> None:
        edge.calls.drop(call)
        admission.release()

    call = Call(admission.conn, pc, admission.upstream, closed, edge.settings.webrtc_idle_timeout_s)

    async def close_for_drain() -> None:
        await call.broadcast(edge.error_event(SHUTDOWN_MESSAGE, "server_shutting_down"))
        await call.close()

    edge.calls.add(call)
    admission.on_drain(close_for_drain)
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            pc.addTrack(call.outbound)
            break
    call.start()
    return call


async def create_call(
    request: Request, edge: Edge, credentials: Credentials, model: str | None
) -> Response:
    sdp, spec = await read_offer(request, credentials, model)
    pc = await _peer(edge, sdp)
    # The call id names this relay, and the transceiver's session.start line names the call.
    call_id = call_id_for(edge.signer, edge.peer_url)
    try:
        admission = await admit(edge, credentials, replace(spec, conn=call_id))
    except BaseException:
        await pc.close()
        raise
    call: Call | None = None
    try:
        call = _start_call(edge, pc, admission)
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        if call is not None:
            await call.close()
        await admission.close()
        await pc.close()
        raise
    return Response(
        advertise(pc.localDescription.sdp, edge.settings.webrtc_public_ip),
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{call_id}"},
    )


def refuse_while_draining(edge: EdgeDep) -> None:
    """No new calls while draining: checked before the credentials and the offer."""
    if edge.live.draining:
        raise draining()


@router.post("/v1/realtime/calls", dependencies=[Depends(refuse_while_draining)])
async def calls(
    request: Request, edge: EdgeDep, credentials: ClientAuth, model: str | None = None
) -> Response:
    return await create_call(request, edge, credentials, model)


@router.post("/v1/realtime", dependencies=[Depends(refuse_while_draining)])
async def beta_call(
    request: Request, edge: EdgeDep, credentials: ClientAuth, model: str | None = None
) -> Response:
    """The beta API's WebRTC offer: ``POST /v1/realtime?model=...``."""
    return await create_call(request, edge, credentials, model)


@router.post("/v1/realtime/calls/{call_id}/hangup")
async def hangup(
    call_id: str, request: Request, edge: EdgeDep, credentials: ApiKeyAuth
) -> Response:
    """End a call here, or on the relay that holds it (several relays behind one load
    balancer), with the caller's credentials."""
    call = edge.calls.get(call_id)
    if call is not None:
        await call.close()
        return Response(status_code=200)
    owner = call_owner(edge.signer, call_id)
    if owner is None or owner.rstrip("/") == edge.peer_url:
        raise ApiError(404, f"Call '{call_id}' not found.", "call_not_found")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(
                f"{owner}/v1/realtime/calls/{call_id}/hangup",
                headers={"Authorization": request.headers.get("authorization", "")},
            )
    except httpx.HTTPError:
        raise ApiError(
            502, "The relay holding this call cannot be reached.", "call_unreachable"
        ) from None
    return Response(reply.content, reply.status_code, media_type="application/json")
