"""Errors of the protocol core.

``ClientError`` is bad input from the client: it becomes a Realtime ``error``
event and the session goes on. ``ProtocolMisuse`` is a bug in our own shell.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """Base of this package's exceptions."""


class ProtocolMisuse(ProtocolError):
    """The shell called the core in a way it must not (a bug, never client input)."""


class ClientError(ProtocolError):
    """A client event could not be honoured; reported as an ``error`` event."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    def to_error(self, client_event_id: str | None) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": client_event_id,
        }


def shown_value(value: Any, limit: int = 64) -> str:
    """A client's value as an error message echoes it: a scalar, cut short past ``limit``
    characters; "…" for an object or an array (the message stays small)."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:
        return "…"  # a huge integer (its digits alone would pass the limit)
    if isinstance(value, str | int | float | bool) or value is None:
        text = str(value)
        return text if len(text) <= limit else text[:limit] + "…"
    return "…"


def check_known_fields(obj: dict[str, Any], known: frozenset[str], prefix: str = "") -> None:
    """``unknown_parameter`` for the first key of ``obj`` not in ``known``, as OpenAI answers
    a field it does not take (``prefix``: where ``obj`` is, e.g. ``item.``)."""
    for key in obj:
        if key not in known:
            param = f"{prefix}{shown_value(key)}"
            raise ClientError(
                f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param
            )


def server_error_event(
    event_id: str, message: str, code: str, type: str = "server_error"
) -> dict[str, Any]:
    """An ``error`` event the server sends of its own accord (answering no client event)."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {"type": type, "code": code, "message": message, "param": None, "event_id": None},
    }
