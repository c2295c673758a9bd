"""The relay's FastAPI app: ``WS /v1/realtime`` forwarded to a transceiver, frame for frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay.auth import bearer_key, error_body, key_allowed, wants_beta
from relay.pool import NoTransceiver, TransceiverPool
from relay.settings import RelaySettings
from transceiver.protocol.ids import IdFactory

log = logging.getLogger(__name__)


def _error_event(ids: IdFactory, message: str, code: str, type: str = "server_error") -> str:
    return json.dumps(
        {
            "type": "error",
            "event_id": ids.event_id(),
            "error": {
                "type": type,
                "code": code,
                "message": message,
                "param": None,
                "event_id": None,
            },
        }
    )


def create_app(settings: RelaySettings) -> FastAPI:
    app = FastAPI(title="realtime-relay", docs_url=None, redoc_url=None)
    pool = TransceiverPool(settings.transceiver, settings.max_frame_bytes)
    ids = IdFactory()
    app.state.pool = pool

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "transceivers": [{"url": m.url, "sessions": m.sessions} for m in pool.members],
        }

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        names: list[str] = []
        async with httpx.AsyncClient(timeout=5) as client:
            for member in pool.members:
                url = member.url.replace("ws://", "http://").replace("wss://", "https://")
                try:
                    reply = await client.get(f"{url}/v1/models")
                    names.extend(n for n in reply.json()["models"] if n not in names)
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
        created = int(time.time())
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": created, "owned_by": "realtime-relay"}
                    for n in names
                ],
            }
        )

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        offered = list(websocket.scope.get("subprotocols", []))
        key = bearer_key(headers, offered)
        if not key_allowed(key, settings.api_keys):
            await websocket.send_denial_response(
                JSONResponse(
                    error_body("Incorrect API key provided.", "invalid_api_key"), status_code=401
                )
            )
            return
        params = websocket.query_params
        if params.get("call_id"):
            await websocket.send_denial_response(
                JSONResponse(
                    error_body(f"Call '{params['call_id']}' not found.", "call_not_found"),
                    status_code=404,
                )
            )
            return
        query: dict[str, str] = {}
        if params.get("model"):
            query["model"] = params["model"]
        if params.get("intent") == "transcription":
            query["intent"] = "transcription"
        if wants_beta(headers, offered):
            query["beta"] = "1"
        subprotocol = "realtime" if "realtime" in offered else None
        try:
            member, upstream = await pool.open_session(urlencode(query))
        except NoTransceiver:
            await websocket.accept(subprotocol=subprotocol)
            await websocket.send_text(
                _error_event(
                    ids,
                    "No transceiver can take this session now; try again later.",
                    "session_limit_reached",
                )
            )
            await websocket.close(1013, "try again later")
            return
        try:
            await websocket.accept(subprotocol=subprotocol)
            await _forward(websocket, upstream, ids)
        finally:
            pool.release(member)
            await upstream.close()

    return app


async def _forward(websocket: WebSocket, upstream: ClientConnection, ids: IdFactory) -> None:
    """Pass frames both ways unchanged until either side ends."""

    async def client_to_upstream() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            await upstream.send(data if data is not None else message.get("bytes") or b"")

    async def upstream_to_client() -> None:
        async for frame in upstream:
            if isinstance(frame, str):
                await websocket.send_text(frame)
            else:
                await websocket.send_bytes(frame)

    to_up = asyncio.create_task(client_to_upstream())
    to_client = asyncio.create_task(upstream_to_client())
    done, _ = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
    for task in (to_up, to_client):
        if task not in done:
            task.cancel()
    await asyncio.gather(to_up, to_client, return_exceptions=True)
    if to_up in done:
        return  # the client left; the caller closes upstream
    rcvd = upstream.protocol.close_rcvd
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, ConnectionClosed):
        if rcvd is None:
            # The transceiver died mid-session (PROTOCOL.md 2.5: 1011 lets SDKs reconnect).
            log.warning("transceiver connection lost mid-session")
            await websocket.send_text(
                _error_event(
                    ids, "The server lost this session's transceiver.", "transceiver_unavailable"
                )
            )
            await websocket.close(1011, "transceiver failed")
        else:
            await websocket.close(rcvd.code, rcvd.reason)
