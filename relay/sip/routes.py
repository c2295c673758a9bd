"""The app's decisions on SIP calls, as in OpenAI's SIP interface (API reference,
"Realtime calls"): ``POST /v1/realtime/calls/{call_id}/accept`` (the body is the session
configuration), ``/reject`` (``status_code``, 603 Decline by default) and ``/refer``
(``target_uri``, e.g. ``tel:+14155550123`` or ``sip:agent@example.com``, for the SIP
``Refer-To``). ``/hangup`` is relay/calls.py's, as for a WebRTC call. Each needs an API key.
A call id names the relay holding the call (:func:`relay.ephemeral.call_id_for`): a request
for a call held by another relay (several relays behind one load balancer) is forwarded to
it with the caller's credentials, as a hangup or a sideband is.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from relay.auth import ApiKeyAuth
from relay.bodies import json_object_body, read_body
from relay.edge import Edge, EdgeDep
from relay.ephemeral import FORWARDED_HEADER, forward_to
from relay.errors import ApiError
from relay.sip.endpoint import SipEndpoint
from transceiver.protocol.errors import ClientError, check_known_fields

router = APIRouter()

_MAX_TARGET_CHARS = 2048
_FORWARD_TIMEOUT_S = 40.0  # more than a REFER's transaction (32 s) on the other relay


async def _forwarded(request: Request, edge: Edge, call_id: str, action: str) -> Response | None:
    """The answer of the relay holding ``call_id``, if that is another relay."""
    endpoint = getattr(request.app.state, "sip", None)
    if isinstance(endpoint, SipEndpoint) and endpoint.holds(call_id):
        return None
    owner = forward_to(edge.signer, call_id, edge.peer_url, request.headers)
    if owner is None:
        return None
    body = await read_body(request, edge.settings.max_body_bytes)
    headers = {
        "Authorization": request.headers.get("authorization", ""),
        "Content-Type": "application/json",
        FORWARDED_HEADER: "1",
    }
    try:
        async with httpx.AsyncClient(timeout=_FORWARD_TIMEOUT_S) as client:
            reply = await client.post(
                f"{owner}/v1/realtime/calls/{call_id}/{action}", content=body, headers=headers
            )
    except httpx.HTTPError:
        raise ApiError(
            502, "The relay holding this call cannot be reached.", "call_unreachable"
        ) from None
    return Response(reply.content, reply.status_code, media_type="application/json")


def _endpoint(request: Request) -> SipEndpoint:
    endpoint = getattr(request.app.state, "sip", None)
    if not isinstance(endpoint, SipEndpoint):
        raise ApiError(404, "This server takes no SIP calls (--sip-listen).", "sip_disabled")
    return endpoint


def _known(body: dict[str, Any], *fields: str) -> None:
    """A 400 ``unknown_parameter`` for a field the route does not take (a misspelt one
    would otherwise be ignored, and its default taken)."""
    try:
        check_known_fields(body, frozenset(fields))
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code, param=exc.param) from None


@router.post("/v1/realtime/calls/{call_id}/accept")
async def accept(
    call_id: str, request: Request, edge: EdgeDep, credentials: ApiKeyAuth
) -> Response:
    forwarded = await _forwarded(request, edge, call_id, "accept")
    if forwarded is not None:
        return forwarded
    endpoint = _endpoint(request)
    session = await json_object_body(request, edge)
    await endpoint.accept(call_id, session)
    return JSONResponse({})


@router.post("/v1/realtime/calls/{call_id}/reject")
async def reject(
    call_id: str, request: Request, edge: EdgeDep, credentials: ApiKeyAuth
) -> Response:
    forwarded = await _forwarded(request, edge, call_id, "reject")
    if forwarded is not None:
        return forwarded
    endpoint = _endpoint(request)
    body = await json_object_body(request, edge)
    _known(body, "status_code")
    status = body.get("status_code", 603)
    if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 699:
        raise ApiError(
            400,
            "'status_code' must be a SIP final status from 300 to 699.",
            "invalid_value",
            param="status_code",
        )
    endpoint.reject(call_id, status)
    return JSONResponse({})


@router.post("/v1/realtime/calls/{call_id}/refer")
async def refer(call_id: str, request: Request, edge: EdgeDep, credentials: ApiKeyAuth) -> Response:
    forwarded = await _forwarded(request, edge, call_id, "refer")
    if forwarded is not None:
        return forwarded
    endpoint = _endpoint(request)
    body = await json_object_body(request, edge)
    _known(body, "target_uri")
    target = body.get("target_uri")
    if (
        not isinstance(target, str)
        or not target.startswith(("sip:", "sips:", "tel:"))
        or len(target) > _MAX_TARGET_CHARS
        or any(c in target for c in '<>\r\n" ')
    ):
        raise ApiError(
            400,
            "'target_uri' must be a sip:, sips: or tel: URI.",
            "invalid_value",
            param="target_uri",
        )
    await endpoint.refer(call_id, target)
    return JSONResponse({})
