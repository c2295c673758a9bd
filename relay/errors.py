"""The relay's HTTP errors: always the OpenAI JSON error envelope, never FastAPI's ``detail``.

``{"error": {"message", "type", "param", "code"}}`` is the shape of every error the OpenAI
REST API answers with (https://platform.openai.com/docs/guides/error-codes); SDKs read it
to raise their typed errors. Routes raise :class:`ApiError`; unknown routes (404), wrong
methods (405), request validation failures (422) and, should a bug raise, the 500 are
answered in the same shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.websockets import WebSocketState


def error_body(
    message: str,
    code: str | None,
    type: str = "invalid_request_error",
    param: str | None = None,
) -> dict[str, object]:
    """The standard OpenAI JSON error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An error answered as the JSON envelope with an HTTP status (raise it from a route)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = error_body(self.message, self.code, self.type, self.param)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def unauthorized(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, "invalid_api_key")


def draining() -> ApiError:
    return ApiError(503, "This server is restarting; try again shortly.", "server_shutting_down")


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: 404 for an unknown route, 405 for a wrong method."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    error = ApiError(exc.status_code, message, _code(exc.status_code), headers=exc.headers)
    return error.response()


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A request that does not fit a route's declared parameters (FastAPI's 422)."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    message = str(first.get("msg", "The request is not valid."))
    param = ".".join(loc) or None
    return ApiError(422, message, "invalid_request", param=param).response()


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: still the envelope (OpenAI's ``server_error``), never a bare text 500. The
    exception is then logged by the server (Starlette's ServerErrorMiddleware re-raises it)."""
    message = "The server had an error while processing your request."
    return ApiError(500, message, "internal_error", type="server_error").response()


async def answer_websocket_failure(websocket: WebSocket, event: str | None = None) -> None:
    """After a bug in a WebSocket route: OpenAI's 500 envelope while the handshake is
    unanswered; after it, ``event`` (an ``error`` event, where the peer reads them), then
    close code 1011. Never raises: the connection may already be gone."""
    with contextlib.suppress(Exception):
        if websocket.client_state is WebSocketState.CONNECTING:
            error = ApiError(
                500, "The server failed this request.", "internal_error", type="server_error"
            )
            await websocket.send_denial_response(error.response())
            return
        if event is not None:
            await websocket.send_text(event)
        await websocket.close(1011, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight (an origin, method or header not allowed)
    answered in OpenAI's JSON envelope instead of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode(errors="replace")  # "Disallowed CORS origin"
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-type", "content-length")
        }
        body = error_body(f"The CORS preflight was refused: {reason}.", "cors_preflight_refused")
        return JSONResponse(body, status_code=response.status_code, headers=headers)
