"""``WS /v1/realtime``: a client session forwarded to a transceiver, frame for frame.

With ``?call_id=rtc_...`` it is a sideband instead: a server-side control connection to a
WebRTC call (https://platform.openai.com/docs/guides/realtime-server-controls), served here
or, for a call another relay holds, forwarded to that relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from relay.admission import Refused, admit
from relay.auth import Credentials, authenticate, lower_headers, wants_beta
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge, EdgeDep
from relay.ephemeral import FORWARDED_HEADER, EphemeralKey, forward_to
from relay.errors import ApiError, answer_websocket_failure
from relay.forward import forward
from relay.webrtc import Call
from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, edge: EdgeDep) -> None:
    """A Realtime session (or a sideband); a bug here still answers in OpenAI's shape: the
    error envelope before the upgrade, an error event and 1011 after it."""
    try:
        await _realtime(websocket, edge)
    except Exception:
        log.exception("realtime connection failed")
        event = edge.error_event("The server failed this session.", "internal_error")
        await answer_websocket_failure(websocket, event)


async def _realtime(websocket: WebSocket, edge: EdgeDep) -> None:
    headers = lower_headers(websocket.headers)
    offered = list(websocket.scope.get("subprotocols", []))
    subprotocol = "realtime" if "realtime" in offered else None
    try:
        credentials = authenticate(edge, headers, offered)
    except ApiError as exc:
        await websocket.send_denial_response(exc.response())
        return
    params = websocket.query_params
    if params.get("call_id"):  # an existing call: also while draining, until it ends
        await sideband_or_forward(edge, websocket, params["call_id"], credentials)
        return
    spec = session_spec(params, headers, offered, credentials.ephemeral)
    try:
        admission = await admit(edge, credentials, spec)
    except Refused as exc:
        await websocket.accept(subprotocol=subprotocol)
        await websocket.send_text(exc.event(edge))
        await websocket.close(1013, "try again later")
        return
    except ApiError as exc:  # draining
        await websocket.send_denial_response(exc.response())
        return

    async def close_for_drain() -> None:
        await websocket.send_text(edge.error_event(SHUTDOWN_MESSAGE, "server_shutting_down"))
        await websocket.close(1012, "server restarting")

    async with admission:
        admission.on_drain(close_for_drain)
        await websocket.accept(subprotocol=subprotocol)
        await forward(websocket, admission.upstream, edge, admission.rates)


def session_spec(
    params: Any, headers: dict[str, str], offered: list[str], ephemeral: EphemeralKey | None
) -> SessionSpec:
    """The transceiver session for a client connection: kind, model, dialect, and the
    session configuration an ephemeral key carries."""
    kind = SessionKind.TRANSCRIPTION if params.get("intent") == "transcription" else None
    model = params.get("model") or None
    overrides = None
    if ephemeral is not None:  # the key carries its session configuration
        overrides = ephemeral.session
        if ephemeral.session.get("type") == "transcription":
            kind = SessionKind.TRANSCRIPTION
        else:
            model = model or str(ephemeral.session.get("model", "gpt-realtime"))
    return SessionSpec(
        kind=kind or SessionKind.REALTIME,
        model=None if kind is SessionKind.TRANSCRIPTION else model,
        dialect=Dialect.BETA if wants_beta(headers, offered) else Dialect.GA,
        overrides=overrides,
    )


async def sideband_or_forward(
    edge: Edge, websocket: WebSocket, call_id: str, credentials: Credentials
) -> None:
    """``?call_id=``: the call's events here, or on the relay that holds the call."""
    offered = list(websocket.scope.get("subprotocols", []))
    subprotocol = "realtime" if "realtime" in offered else None
    call = edge.calls.get(call_id)
    if call is not None:
        await websocket.accept(subprotocol=subprotocol)
        await sideband(websocket, call)
        return
    owner = forward_to(edge.signer, call_id, edge.peer_url, websocket.headers)
    if owner is None:
        error = ApiError(404, f"Call '{call_id}' not found.", "call_not_found")
        await websocket.send_denial_response(error.response())
        return
    upstream = await _connect_owner(websocket, owner, call_id, credentials, edge)
    if upstream is None:
        return
    try:
        await websocket.accept(subprotocol=subprotocol)
        await forward(websocket, upstream, edge)
    finally:
        await upstream.close()


async def _connect_owner(
    websocket: WebSocket, owner: str, call_id: str, credentials: Credentials, edge: Edge
) -> ClientConnection | None:
    """A sideband on the relay holding the call, with the caller's credentials; ``None``
    once the client has been answered with that relay's refusal or a 502."""
    target = owner.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    key = credentials.key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers[FORWARDED_HEADER] = "1"
    # Pinged like a client (relay/server.py): a relay that vanishes ends the sideband.
    ping_s = edge.settings.client_ping_interval_s or None
    try:
        return await connect(
            f"{target}/v1/realtime?{urlencode({'call_id': call_id})}",
            additional_headers=headers,
            subprotocols=[Subprotocol("realtime")],
            max_size=edge.settings.max_frame_bytes,
            open_timeout=10,
            ping_interval=ping_s,
            ping_timeout=edge.settings.client_ping_timeout_s if ping_s else None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = bytes(exc.response.body or b"{}")  # websockets may hold it as a bytearray
        await websocket.send_denial_response(
            Response(body, status_code=status, media_type="application/json")
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("relay %s holding call %s is unreachable: %s", owner, call_id, exc)
        error = ApiError(502, "The relay holding this call cannot be reached.", "call_unreachable")
        await websocket.send_denial_response(error.response())
    return None


async def sideband(websocket: WebSocket, call: Call) -> None:
    """A server-side control connection to a WebRTC call: the same events, both ways.

    It ends with the call (hangup, idle caller, lost transceiver): close code 1000.
    """
    call.sidebands.add(websocket.send_text)
    ended = asyncio.create_task(call.closed.wait())
    try:
        while True:
            receive = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receive, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await websocket.close(1000, "call ended")
                return
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            await call.from_client(data if data is not None else message.get("bytes") or b"")
    finally:
        ended.cancel()
        call.sidebands.discard(websocket.send_text)
