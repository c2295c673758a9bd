"""The relay's FastAPI app: ``WS /v1/realtime`` forwarded to a transceiver, frame for frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from relay.auth import bearer_key, error_body, key_allowed, wants_beta
from relay.calls import CallRegistry, calls_router
from relay.drain import SHUTDOWN_MESSAGE
from relay.edge import Edge, KeyLimits
from relay.ephemeral import EphemeralKey, InvalidKey, call_owner, expiry_seconds, validate_session
from relay.pool import NoTransceiver
from relay.settings import RelaySettings
from relay.webrtc import Call
from transceiver.observability import CONTENT_TYPE, log_event
from transceiver.protocol.beta import BetaDialect
from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec
from transceiver.protocol.errors import ClientError

log = logging.getLogger(__name__)
INDEX_HTML = Path(__file__).with_name("static") / "index.html"


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_api_key"), status_code=401)


def _bad_request(exc: ClientError) -> JSONResponse:
    envelope = error_body(exc.message, exc.code or "invalid_value")
    envelope["error"]["param"] = exc.param  # type: ignore[index]
    return JSONResponse(envelope, 400)


def create_app(settings: RelaySettings) -> FastAPI:
    app = FastAPI(title="realtime-relay", docs_url=None, redoc_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Location"],
    )
    edge = Edge.create(settings)
    pool, signer, metrics = edge.pool, edge.signer, edge.metrics
    registry = CallRegistry()
    app.state.calls = registry
    app.state.edge = edge
    app.include_router(calls_router(edge, registry))

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        """A small page that talks to the server over WebRTC (mic in, reply out)."""
        return HTMLResponse(INDEX_HTML.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while serving; 503 while draining, so load balancers stop sending here."""
        if edge.live.draining:
            return JSONResponse({"status": "draining", **edge.describe()}, status_code=503)
        return JSONResponse({"status": "ok", **edge.describe()})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        names: list[str] = []
        async with pool.http_client(timeout_s=5) as client:
            for member in pool.members:
                try:
                    reply = await client.get(f"{member.http_url}/v1/models")
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

    async def minting_request(request: Request) -> tuple[str, dict[str, Any]] | JSONResponse:
        """The minting key's identity and the JSON object body of a key-minting request, or
        the error to answer with.

        Minting needs an API key: an ephemeral key cannot mint more keys.
        """
        key = bearer_key({k.lower(): v for k, v in request.headers.items()})
        if (key is not None and key.startswith("ek_")) or not key_allowed(key, settings.api_keys):
            return _unauthorized("Incorrect API key provided.")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse(error_body("The body is not valid JSON.", "invalid_json"), 400)
        if not isinstance(body, dict):
            return JSONResponse(
                error_body("The body must be a JSON object.", "invalid_request"), 400
            )
        return KeyLimits.identity(key), body

    @app.post("/v1/realtime/client_secrets")
    async def client_secrets(request: Request) -> JSONResponse:
        """Mint an ephemeral key (GA): ``{value: "ek_...", expires_at, session}``."""
        minted = await minting_request(request)
        if isinstance(minted, JSONResponse):
            return minted
        owner, body = minted
        try:
            seconds = expiry_seconds(body)
            session = validate_session(body.get("session"))
        except ClientError as exc:
            return _bad_request(exc)
        value = signer.mint(session, seconds, owner=owner)
        expires_at = signer.verify(value).expires_at
        kind = session["type"]
        shown = {
            "object": "realtime.session"
            if kind == "realtime"
            else "realtime.transcription_session",
            "id": edge.ids.new("sess"),
            **session,
            "expires_at": 0,
        }
        return JSONResponse({"value": value, "expires_at": expires_at, "session": shown})

    async def beta_session(request: Request, kind: str) -> JSONResponse:
        """Beta ephemeral sessions: a flat beta config in, the session plus ``client_secret``."""
        minted = await minting_request(request)
        if isinstance(minted, JSONResponse):
            return minted
        owner, body = minted
        dialect = BetaDialect()
        try:
            secret = body.pop("client_secret", None) or {}
            seconds = expiry_seconds(secret if isinstance(secret, dict) else {}, default=60)
            session = validate_session(dialect.session_to_ga(body, kind))
        except ClientError as exc:
            return _bad_request(exc)
        value = signer.mint(session, seconds, owner=owner)
        expires_at = signer.verify(value).expires_at
        shown = dialect.session_to_beta(
            {
                "object": "realtime.session"
                if kind == "realtime"
                else "realtime.transcription_session",
                "id": edge.ids.new("sess"),
                **session,
                "expires_at": expires_at,
            },
            kind,
        )
        shown["client_secret"] = {"value": value, "expires_at": expires_at}
        return JSONResponse(shown)

    @app.post("/v1/realtime/sessions")
    async def beta_sessions(request: Request) -> JSONResponse:
        return await beta_session(request, "realtime")

    @app.post("/v1/realtime/transcription_sessions")
    async def beta_transcription_sessions(request: Request) -> JSONResponse:
        return await beta_session(request, "transcription")

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        offered = list(websocket.scope.get("subprotocols", []))
        key = bearer_key(headers, offered)
        ephemeral: EphemeralKey | None = None
        if key is not None and key.startswith("ek_"):
            try:
                ephemeral = signer.verify(key)
            except InvalidKey as exc:
                await websocket.send_denial_response(_unauthorized(f"Ephemeral key: {exc}."))
                return
        elif not key_allowed(key, settings.api_keys):
            await websocket.send_denial_response(_unauthorized("Incorrect API key provided."))
            return
        params = websocket.query_params
        subprotocol = "realtime" if "realtime" in offered else None
        if params.get("call_id"):  # an existing call: also while draining, until it ends
            await _sideband_or_forward(edge, registry, websocket, params["call_id"], key)
            return
        if edge.live.draining:
            await websocket.send_denial_response(_draining())
            return
        spec = _session_spec(params, headers, offered, ephemeral)
        holder = edge.limits.acquire(KeyLimits.holder_of(key, ephemeral))
        if holder is None:
            await websocket.accept(subprotocol=subprotocol)
            await websocket.send_text(
                edge.error_event(
                    f"This API key already holds {edge.limits.limit} session(s) here.",
                    "session_limit_reached",
                    "invalid_request_error",
                )
            )
            await websocket.close(1013, "try again later")
            return
        try:
            await _session(edge, websocket, subprotocol, spec)
        finally:
            edge.limits.release(holder)

    return app


def _draining() -> JSONResponse:
    return JSONResponse(
        error_body("This server is restarting; try again shortly.", "server_shutting_down"),
        status_code=503,
    )


def _session_spec(
    params: Any, headers: dict[str, str], offered: list[str], ephemeral: EphemeralKey | None
) -> SessionSpec:
    """The transceiver session for a client connection: its URL, headers and key."""
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


async def _session(
    edge: Edge, websocket: WebSocket, subprotocol: str | None, spec: SessionSpec
) -> None:
    """Place the session on a transceiver and pass frames until either side ends.

    ``conn`` names the connection in the relay's log lines and the transceiver's
    ``session.start`` line, which joins it to the session id.
    """
    conn = edge.ids.new("conn")
    started = time.monotonic()
    try:
        member, upstream = await edge.pool.open_session(replace(spec, conn=conn))
    except NoTransceiver:
        edge.metrics.placement_refusals.labels("none").inc()
        await websocket.accept(subprotocol=subprotocol)
        await websocket.send_text(
            edge.error_event(
                "No transceiver can take this session now; try again later.",
                "session_limit_reached",
            )
        )
        await websocket.close(1013, "try again later")
        return

    async def close_for_drain() -> None:
        await websocket.send_text(edge.error_event(SHUTDOWN_MESSAGE, "server_shutting_down"))
        await websocket.close(1012, "server restarting")

    gauge = edge.metrics.sessions.labels("ws")
    edge.metrics.sessions_total.labels("ws").inc()
    gauge.inc()
    edge.live.add(websocket, close_for_drain)
    log_event(log, "session.placed", conn=conn, transport="ws", transceiver=member.url)
    try:
        await websocket.accept(subprotocol=subprotocol)
        await _forward(websocket, upstream, edge)
    finally:
        edge.live.discard(websocket)
        gauge.dec()
        edge.pool.release(member)
        await upstream.close()
        log_event(log, "session.closed", conn=conn, seconds=round(time.monotonic() - started, 1))


async def _sideband_or_forward(
    edge: Edge, registry: CallRegistry, websocket: WebSocket, call_id: str, key: str | None
) -> None:
    """``?call_id=``: the call's events here, or on the relay that holds the call."""
    offered = list(websocket.scope.get("subprotocols", []))
    subprotocol = "realtime" if "realtime" in offered else None
    call = registry.get(call_id)
    if call is not None:
        await websocket.accept(subprotocol=subprotocol)
        await _sideband(websocket, call)
        return
    owner = call_owner(edge.signer, call_id)
    if owner is None or owner.rstrip("/") == edge.peer_url:
        await websocket.send_denial_response(
            JSONResponse(
                error_body(f"Call '{call_id}' not found.", "call_not_found"), status_code=404
            )
        )
        return
    # Another relay holds the call: connect there with the caller's credentials, pass frames.
    target = owner.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        upstream = await connect(
            f"{target}/v1/realtime?{urlencode({'call_id': call_id})}",
            additional_headers=headers,
            subprotocols=[Subprotocol("realtime")],
            max_size=edge.settings.max_frame_bytes,
            open_timeout=10,
            ping_interval=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body or b"{}"
        await websocket.send_denial_response(
            Response(body, status_code=status, media_type="application/json")
        )
        return
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("relay %s holding call %s is unreachable: %s", owner, call_id, exc)
        await websocket.send_denial_response(
            JSONResponse(
                error_body("The relay holding this call cannot be reached.", "call_unreachable"),
                status_code=502,
            )
        )
        return
    try:
        await websocket.accept(subprotocol=subprotocol)
        await _forward(websocket, upstream, edge)
    finally:
        await upstream.close()


async def _sideband(websocket: WebSocket, call: Call) -> None:
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


async def _forward(websocket: WebSocket, upstream: ClientConnection, edge: Edge) -> None:
    """Pass frames both ways unchanged until either side ends.

    When the client leaves, the caller closes upstream. When upstream ends (the transceiver
    closed the session, drained, or died), the client gets its close code, or an error and
    1011 for a lost transceiver, whichever direction noticed first.
    """
    events_in, events_out = edge.metrics.events_in, edge.metrics.events_out
    client_left = False

    async def client_to_upstream() -> None:
        nonlocal client_left
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                client_left = True
                return
            events_in.inc()
            data = message.get("text")
            try:
                await upstream.send(data if data is not None else message.get("bytes") or b"")
            except ConnectionClosed:
                return  # upstream ended: answered below

    async def upstream_to_client() -> None:
        nonlocal client_left
        async for frame in upstream:
            events_out.inc()
            try:
                if isinstance(frame, str):
                    await websocket.send_text(frame)
                else:
                    await websocket.send_bytes(frame)
            except (WebSocketDisconnect, RuntimeError, OSError):
                client_left = True
                return

    to_up = asyncio.create_task(client_to_upstream())
    to_client = asyncio.create_task(upstream_to_client())
    done, _ = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
    for task in (to_up, to_client):
        if task not in done:
            task.cancel()
    results = await asyncio.gather(to_up, to_client, return_exceptions=True)
    if client_left or any(isinstance(r, WebSocketDisconnect) for r in results):
        return
    rcvd = upstream.protocol.close_rcvd
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, ConnectionClosed):
        if rcvd is None:
            # The transceiver died mid-session (PROTOCOL.md 2.5: 1011 lets SDKs reconnect).
            log.warning("transceiver connection lost mid-session")
            await websocket.send_text(
                edge.error_event(
                    "The server lost this session's transceiver.", "transceiver_unavailable"
                )
            )
            await websocket.close(1011, "transceiver failed")
        else:
            await websocket.close(rcvd.code, rcvd.reason)
