"""``POST /v1/realtime/calls`` (GA), ``POST /v1/realtime?model=`` (beta) and hangup.

The offer comes as raw ``application/sdp`` or as multipart with ``sdp`` and ``session``
parts (with or without per-part content types), as in the OpenAI WebRTC guide
(https://platform.openai.com/docs/guides/realtime-webrtc). The answer is ``201`` with
``application/sdp`` and ``Location: /v1/realtime/calls/rtc_...``. Errors are JSON, never SDP:
OpenAI's error envelope (:mod:`relay.errors`), 400 for any offer or form that cannot be used
and 413 for a body over ``--webrtc-max-offer-bytes``. An offer is checked before a session is
placed for it, so a refused one holds nothing; a call needs an audio section
(:func:`check_offer`), and ends when no caller audio arrives for ``--webrtc-idle-timeout-s``
(:mod:`relay.webrtc`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from relay.admission import Admission, admit
from relay.auth import ApiKeyAuth, ClientAuth, Credentials
from relay.bodies import check_text, read_body
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge, EdgeDep
from relay.ephemeral import FORWARDED_HEADER, call_id_for, forward_to, validate_session
from relay.errors import ApiError, draining
from relay.ice import reachable_candidates
from relay.webrtc import Call, first_event
from transceiver.protocol.contract import SessionKind, SessionSpec, Transport
from transceiver.protocol.errors import ClientError, shown_value
from transceiver.protocol.wire import check_depth, loads_strict

log = logging.getLogger(__name__)

router = APIRouter()

_FORM = "invalid_multipart"
_MAX_FORM_PARTS = 8  # a call's form has two: sdp and session
_FORM_FIELDS = frozenset({"sdp", "session"})


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


async def _form_parts(request: Request, body: bytes) -> tuple[str, str]:
    """The ``sdp`` and ``session`` parts of a multipart ``body`` ("" when absent); a 400
    for a form that cannot be parsed (no boundary, truncated, too many parts...)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers,
        chunks(),  # type: ignore[arg-type]  # an async generator, as Starlette's own stream
        max_files=_MAX_FORM_PARTS,
        max_fields=_MAX_FORM_PARTS,
        max_part_size=max(len(body), 1),
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"The multipart form is not valid: {exc.message}", _FORM) from None
    except Exception as exc:  # anything else python-multipart raises on malformed input
        log.debug("multipart form refused: %r", exc)
        raise ApiError(400, "The multipart form is not valid.", _FORM) from None
    try:
        _check_form_fields(form)
        return await _part_text(form.get("sdp")), await _part_text(form.get("session"))
    finally:
        await form.close()
        # A file part the body ends inside of is in no form (Starlette adds a part when it
        # ends), but its spooled file was opened: close those too.
        for file in getattr(parser, "_files_to_close_on_error", ()):
            file.close()


def _check_form_fields(form: FormData) -> None:
    """One ``sdp`` part and at most one ``session`` part: another part, or either twice,
    is a 400 (one of them would have been dropped)."""
    for name in form.keys():
        if name not in _FORM_FIELDS:
            raise ApiError(
                400,
                f"Unknown parameter: '{shown_value(name)}'. A call's form has the parts "
                "'sdp' and 'session'.",
                "unknown_parameter",
                param=shown_value(name),
            )
        if len(form.getlist(name)) > 1:
            raise ApiError(400, f"The form has more than one '{name}' part.", _FORM, param=name)


def _session_part(text: str) -> Any:
    """The ``session`` part's JSON (``None`` when the part is absent or empty)."""
    if not text.strip():
        return None
    try:
        session = loads_strict(text)
        check_depth(session, "The 'session' part", code="invalid_value", param="session")
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code, param=exc.param) from None
    except ValueError:  # RecursionError too (loads_strict)
        raise ApiError(400, "The 'session' part is not valid JSON.", "invalid_json") from None
    check_text(session, "The 'session' part")
    return session


async def _offer_and_session(request: Request, edge: Edge) -> tuple[str, Any]:
    """The SDP offer and the ``session`` part (parsed JSON, ``None`` if absent), from a
    body of at most ``--webrtc-max-offer-bytes``."""
    body = await read_body(request, edge.settings.webrtc_max_offer_bytes)
    content_type = request.headers.get("content-type", "").strip().lower()
    if content_type.startswith("multipart/form-data"):
        sdp_text, session_text = await _form_parts(request, body)
        return sdp_text, _session_part(session_text)
    if content_type.startswith("multipart/"):
        raise ApiError(
            400, "A multipart offer must be multipart/form-data.", _FORM, param="content-type"
        )
    return body.decode("utf-8", "replace"), None


def _validated(session: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full session configuration from a call's ``session`` (an update of ``base``, an
    ephemeral key's session, if given), or a 400."""
    try:
        return validate_session(session, base)
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code or "invalid_value", param=exc.param) from None
    except ValidationError as exc:  # a field the core's model refuses, if not a ClientError
        errors = exc.errors(include_url=False, include_input=False)
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        message = f"Invalid 'session': {errors[0]['msg'] if errors else 'not a valid session'}."
        param = f"session.{where}" if where else "session"
        raise ApiError(400, message, "invalid_value", param=param) from None
    except (ValueError, TypeError, RecursionError) as exc:
        log.debug("call session refused: %r", exc)
        raise ApiError(
            400, "The 'session' is not valid.", "invalid_value", param="session"
        ) from None


def _call_session(part: Any, credentials: Credentials, model: str | None) -> dict[str, Any]:
    """The session a call asks for: its ``session`` part, as an update of the ephemeral
    key's session if there is one (the key's type and fields stay, as a ``session.update``
    would leave them); the model ``?model=`` names where the session names none, a 400 where
    it names another."""
    key_session = credentials.ephemeral.session if credentials.ephemeral else None
    if part is None and key_session is None:
        part = {}
    if isinstance(part, dict) and model is not None and part.get("model") is None:
        kind = part.get("type") or (key_session or {}).get("type") or "realtime"
        if kind == "realtime" and key_session is None:
            part = {**part, "model": model}
    session = _validated(part, key_session) if part is not None else key_session
    assert session is not None
    if model is not None and session.get("type") != "transcription" and session["model"] != model:
        raise ApiError(
            400,
            f"The session is for model '{shown_value(session['model'])}', and ?model= asks "
            f"for '{shown_value(model)}'.",
            "invalid_value",
            param="model",
        )
    return session


def check_offer(sdp: str, max_media: int) -> SessionDescription:
    """``sdp`` parsed, or a 400 ``invalid_sdp`` unless it is an offer a call can answer with
    audio: it parses, has at most ``max_media`` media sections, and one audio section that
    is not ``inactive``. Checked before a session is placed: a refused offer holds nothing."""
    if "v=0" not in sdp:
        raise ApiError(400, "The body must hold an SDP offer.", "invalid_sdp")
    try:
        description = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises ValueError, AssertionError, IndexError...
        raise ApiError(400, "The SDP offer could not be parsed.", "invalid_sdp") from None
    if len(description.media) > max_media:
        raise ApiError(
            400,
            f"The SDP offer has {len(description.media)} media sections; at most "
            f"{max_media} are accepted.",
            "invalid_sdp",
        )
    if not any(m.kind == "audio" and m.direction != "inactive" for m in description.media):
        raise ApiError(
            400,
            "The SDP offer has no audio section (m=audio): a call needs one.",
            "invalid_sdp",
        )
    return description


async def read_offer(
    request: Request, edge: Edge, credentials: Credentials, model: str | None
) -> tuple[str, SessionDescription, SessionSpec]:
    """The offer and the session it asks for: the ``session`` part, else the ephemeral
    key's session, else a realtime session with ``model``. Every failure is a 4xx."""
    sdp, part = await _offer_and_session(request, edge)
    session = _call_session(part, credentials, model)
    offer = check_offer(sdp, edge.settings.webrtc_max_media_sections)
    transcription = session.get("type") == "transcription"
    chosen = session.get("model") or "gpt-realtime"
    if not transcription and not isinstance(chosen, str):
        raise ApiError(
            400, "'session.model' must be a string.", "invalid_type", param="session.model"
        )
    spec = SessionSpec(
        kind=SessionKind.TRANSCRIPTION if transcription else SessionKind.REALTIME,
        model=None if transcription else chosen,
        transport=Transport.WEBRTC,
        overrides=session,
    )
    return sdp, offer, spec


async def _close_quietly(pc: RTCPeerConnection) -> None:
    """Close ``pc`` whatever state a bad offer left it in (aiortc's ``close`` can raise on
    a connection whose offer it accepted but could not answer)."""
    try:
        await pc.close()
    except Exception as exc:
        log.debug("closing a refused offer's peer connection failed: %r", exc)


async def _peer(edge: Edge, sdp: str, offer: SessionDescription) -> RTCPeerConnection:
    """A peer connection with the caller's offer set, or a 400. The answer is drafted here,
    before any session is placed, so an offer aiortc accepts but cannot answer with audio
    is refused like one it cannot parse."""
    ice = [RTCIceServer(urls=url) for url in edge.settings.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    sdp = reachable_candidates(sdp, edge.settings.webrtc_host_addresses)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        draft = await pc.createAnswer()  # no side effects: ICE starts with setLocalDescription
        answered = _sections(SessionDescription.parse(draft.sdp))
    except Exception as exc:  # aiortc raises ValueError, AttributeError, ... on bad SDP
        await _close_quietly(pc)
        detail = f": {str(exc)[:200]}" if str(exc) else "."  # aiortc's words, bounded
        raise ApiError(400, f"The SDP offer could not be used{detail}", "invalid_sdp") from None
    problem = None
    if answered != _sections(offer):  # aiortc's setLocalDescription would refuse this answer
        problem = "The SDP offer's media sections cannot be answered one for one (a=mid)."
    elif not any(kind == "audio" for kind, _ in answered):
        problem = "The SDP offer cannot be answered with audio."
    if problem is not None:
        await _close_quietly(pc)
        raise ApiError(400, problem, "invalid_sdp")
    return pc


def _sections(description: SessionDescription) -> list[tuple[str, str | None]]:
    """The kind and mid of each media section, in order."""
    return [(media.kind, media.rtp.muxId) for media in description.media]


def _start_call(
    edge: Edge, pc: RTCPeerConnection, admission: Admission, first: str | bytes | None
) -> Call:
    """The call over ``pc`` for an admitted session, registered and running; ``first``:
    the session's event read before (:func:`relay.webrtc.first_event`)."""

    def closed(call: Call) -> None:
        edge.calls.drop(call)
        admission.release()

    settings = edge.settings
    call = Call(
        admission.conn,
        pc,
        admission.upstream,
        closed,
        settings.webrtc_idle_timeout_s,
        settings.webrtc_max_pending_audio_s,
        rates=admission.rates,
        first=first,
    )

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
    sdp, offer, spec = await read_offer(request, edge, credentials, model)
    pc = await _peer(edge, sdp, offer)
    # The call id names this relay, and the transceiver's session.start line names the call.
    call_id = call_id_for(edge.signer, edge.peer_url)
    try:
        admission = await admit(edge, credentials, replace(spec, conn=call_id))
    except BaseException:
        await _close_quietly(pc)
        raise
    call: Call | None = None
    try:
        first = await first_event(admission.upstream)
        if edge.live.draining:  # began while the session started: it ends with the rest
            raise draining()
        call = _start_call(edge, pc, admission, first)
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException as exc:
        if call is not None:
            await call.close()
        with contextlib.suppress(Exception):
            await admission.close()
        await _close_quietly(pc)
        if isinstance(exc, ApiError):
            raise
        if isinstance(exc, Exception):  # aiortc could not answer the offer it accepted
            log.info("call %s: no answer to the offer: %r", call_id, exc)
            raise ApiError(400, "The SDP offer could not be answered.", "invalid_sdp") from None
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
    owner = forward_to(edge.signer, call_id, edge.peer_url, request.headers)
    if owner is None:
        raise ApiError(404, f"Call '{call_id}' not found.", "call_not_found")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(
                f"{owner}/v1/realtime/calls/{call_id}/hangup",
                headers={
                    "Authorization": request.headers.get("authorization", ""),
                    FORWARDED_HEADER: "1",
                },
            )
    except httpx.HTTPError:
        raise ApiError(
            502, "The relay holding this call cannot be reached.", "call_unreachable"
        ) from None
    return Response(reply.content, reply.status_code, media_type="application/json")
