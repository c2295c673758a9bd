"""Request bodies, bounded: read at most ``--max-body-bytes``, then parsed strictly.

:func:`read_body` is the one way a route reads a body. It refuses a declared
``Content-Length`` over the limit before reading anything, and counts the bytes as they
arrive, so a chunked body (no ``Content-Length``) or one that lies about its length is cut
off at the limit too: a client can make the relay hold at most ``limit`` bytes of body.
Errors are OpenAI's JSON envelope (:mod:`relay.errors`): 413 for a body over the limit.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from relay.edge import EdgeDep
from relay.errors import ApiError
from transceiver.protocol.errors import ClientError
from transceiver.protocol.wire import JsonTooDeep, check_depth, loads_strict, too_deep_message


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"The request body is larger than the limit of {limit} bytes.", "request_too_large"
    )


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise ApiError(400, "The Content-Length header is not a number.", "invalid_request")
    return int(declared)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, or :class:`ApiError` 413 as soon as it is known to exceed ``limit``
    bytes (its ``Content-Length``, else the bytes read so far).

    The body is then cached on the request as Starlette's own ``Request.body()`` caches it,
    so ``request.form()`` or ``request.json()`` afterwards parse it without reading again.
    """
    if hasattr(request, "_body"):  # already read (by this function or Request.body())
        cached: bytes = request._body
        if len(cached) > limit:
            raise body_too_large(limit)
        return cached
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(
            400, "The request body was not completely received.", "invalid_request"
        ) from None
    body = b"".join(chunks)
    request._body = body  # Starlette's cache for Request.body(), form() and json()
    return body


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body (``{}`` when empty), else :class:`ApiError` 400: strict JSON (no
    NaN or Infinity), an object, nested at most as deep as a WebSocket event
    (transceiver/protocol/wire.py)."""
    if not raw:
        return {}
    try:
        body = loads_strict(raw)
    except JsonTooDeep:
        raise ApiError(400, too_deep_message("The body"), "invalid_request") from None
    except ValueError:  # UnicodeDecodeError included
        raise ApiError(400, "The body is not valid JSON.", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.", "invalid_request")
    try:
        check_depth(body, "The body", code="invalid_request")
    except ClientError as exc:
        raise ApiError(400, exc.message, exc.code) from None
    check_text(body, "The body")
    return body


def check_text(value: Any, what: str) -> None:
    """A 400 if a JSON escape left half a surrogate pair in a string (or a key) of
    ``value``: valid JSON syntax, but no Unicode text, so nothing could encode it back (a
    reply quoting it, a key carrying it)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            f"{what} is not valid: a string holds a lone UTF-16 surrogate (an escape from "
            "\\ud800 to \\udfff without its pair), which is not text.",
            "invalid_json",
        ) from None


async def json_object_body(request: Request, edge: EdgeDep) -> dict[str, Any]:
    """The request's JSON object body, bounded by ``--max-body-bytes``."""
    return parse_json_object(await read_body(request, edge.settings.max_body_bytes))


JsonObject = Annotated[dict[str, Any], Depends(json_object_body)]
