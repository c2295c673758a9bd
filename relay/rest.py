"""The relay's REST routes: health, metrics, models, and minting ephemeral keys.

``POST /v1/realtime/client_secrets`` is the GA way to mint a key
(https://platform.openai.com/docs/api-reference/realtime-sessions); the beta API's
``POST /v1/realtime/sessions`` and ``/v1/realtime/transcription_sessions`` take a flat
beta session configuration and answer with it and a ``client_secret``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from relay.auth import ApiKeyAuth, Credentials, MintingAuth
from relay.bodies import JsonObject
from relay.edge import Edge, EdgeDep
from relay.ephemeral import KEY_HEADER_ROOM, expiry_seconds, validate_session
from relay.errors import ApiError
from transceiver.observability import CONTENT_TYPE
from transceiver.protocol.beta import BetaDialect
from transceiver.protocol.errors import ClientError, check_known_fields

STATIC = Path(__file__).with_name("static")
INDEX_HTML = STATIC / "index.html"
# The playground's own files (no build step, nothing fetched from elsewhere).
PLAYGROUND_FILES = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground-ui.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    """The playground: a WebRTC call to this server with its settings, chat and events."""
    return HTMLResponse(INDEX_HTML.read_text(encoding="utf-8"))


@router.get("/playground/{name}", include_in_schema=False)
async def playground_file(name: str) -> Response:
    media_type = PLAYGROUND_FILES.get(name)
    if media_type is None:
        raise ApiError(404, f"No playground file named {name!r}.", "not_found")
    return Response((STATIC / name).read_bytes(), media_type=media_type)


@router.get("/healthz")
async def healthz(edge: EdgeDep) -> JSONResponse:
    """200 while serving; 503 while draining, so load balancers stop sending here. Open to
    all, so it shows counts only: no transceiver address or load."""
    if edge.live.draining:
        return JSONResponse({"status": "draining", **edge.describe()}, status_code=503)
    return JSONResponse({"status": "ok", **edge.describe()})


@router.get("/status")
async def status(edge: EdgeDep, credentials: MintingAuth) -> JSONResponse:
    """``/healthz`` with every transceiver's URL and load, for an API key (not an
    ephemeral key, which browsers hold)."""
    return JSONResponse({"status": "draining" if edge.live.draining else "ok", **edge.details()})


@router.get("/metrics", include_in_schema=False)
async def prometheus(edge: EdgeDep, credentials: MintingAuth) -> Response:
    """Prometheus metrics, for an API key as ``/status`` (they name the transceivers): a
    scraper sends it as a bearer token (``authorization: {credentials: ...}``)."""
    return Response(edge.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def models(edge: EdgeDep, credentials: ApiKeyAuth) -> JSONResponse:
    """The models every reachable transceiver serves, in the OpenAI list shape. OpenAI's
    ``GET /v1/models`` wants an API key (https://platform.openai.com/docs/api-reference/models),
    so does this one: an ephemeral key is for sessions only."""
    names: list[str] = []
    async with edge.pool.http_client(timeout_s=5) as client:
        for member in edge.pool.members:
            try:
                reply = await client.get(f"{member.http_url}/v1/models")
                names.extend(n for n in reply.json()["models"] if n not in names)
            except (httpx.HTTPError, ValueError, KeyError):
                continue
    created = int(time.time())
    data = [
        {"id": n, "object": "model", "created": created, "owned_by": "realtime-relay"}
        for n in names
    ]
    return JSONResponse({"object": "list", "data": data})


def bad_request(exc: ClientError) -> ApiError:
    return ApiError(400, exc.message, exc.code or "invalid_value", param=exc.param)


def _mint(
    edge: Edge, credentials: Credentials, session: dict[str, Any], seconds: int
) -> tuple[str, int]:
    """A new key for ``session``, counted against the minting key's limit, and its expiry."""
    room = edge.settings.client_max_header_bytes - KEY_HEADER_ROOM
    value = edge.signer.mint(session, seconds, owner=credentials.holder, max_chars=room)
    return value, edge.signer.verify(value).expires_at


def _shown(edge: Edge, kind: str, session: dict[str, Any], expires_at: int) -> dict[str, Any]:
    return {
        "object": "realtime.session" if kind == "realtime" else "realtime.transcription_session",
        "id": edge.ids.new("sess"),
        **session,
        "expires_at": expires_at,
    }


# The fields of a GA minting body, and of a beta one's ``client_secret``.
_MINT_FIELDS = frozenset({"session", "expires_after"})
_SECRET_FIELDS = frozenset({"expires_after"})


# The credentials come first: a caller without them gets 401 whatever its body.
@router.post("/v1/realtime/client_secrets")
async def client_secrets(edge: EdgeDep, credentials: MintingAuth, body: JsonObject) -> JSONResponse:
    """Mint an ephemeral key (GA): ``{value: "ek_...", expires_at, session}``."""
    try:
        check_known_fields(body, _MINT_FIELDS)
        seconds = expiry_seconds(body)
        session = validate_session(body.get("session"))
        value, expires_at = _mint(edge, credentials, session, seconds)
    except ClientError as exc:
        raise bad_request(exc) from None
    shown = _shown(edge, session["type"], session, 0)
    return JSONResponse({"value": value, "expires_at": expires_at, "session": shown})


async def _beta_session(
    edge: Edge, credentials: Credentials, body: dict[str, Any], kind: str
) -> JSONResponse:
    """Beta ephemeral sessions: a flat beta config in, the session plus ``client_secret``."""
    dialect = BetaDialect()
    try:
        secret = body.pop("client_secret", None)
        if secret is None:
            secret = {}
        if not isinstance(secret, dict):
            raise ClientError("'client_secret' must be an object.", param="client_secret")
        check_known_fields(secret, _SECRET_FIELDS, "client_secret.")
        seconds = expiry_seconds(secret, default=60, param="client_secret.expires_after")
        session = validate_session(dialect.session_to_ga(body, kind))
        value, expires_at = _mint(edge, credentials, session, seconds)
    except ClientError as exc:
        raise bad_request(exc) from None
    shown = dialect.session_to_beta(_shown(edge, kind, session, expires_at), kind)
    shown["client_secret"] = {"value": value, "expires_at": expires_at}
    return JSONResponse(shown)


@router.post("/v1/realtime/sessions")
async def beta_sessions(edge: EdgeDep, credentials: MintingAuth, body: JsonObject) -> JSONResponse:
    return await _beta_session(edge, credentials, body, "realtime")


@router.post("/v1/realtime/transcription_sessions")
async def beta_transcription_sessions(
    edge: EdgeDep, credentials: MintingAuth, body: JsonObject
) -> JSONResponse:
    return await _beta_session(edge, credentials, body, "transcription")
