"""Client frames to events: strict JSON (no NaN or Infinity), objects only, bounded depth.

Server events to frames: compact JSON, ``{"type":...`` first (the shells count error events
by that prefix).
"""

from __future__ import annotations

import json
import math
from typing import Any

from transceiver.protocol.errors import ClientError

MAX_EVENT_DEPTH = 100


def encode_server_event(event: dict[str, Any]) -> str:
    """The frame for a server event (``type`` is its first key)."""
    return json.dumps(event, separators=(",", ":"))


def parse_client_frame(raw: str | bytes) -> dict[str, Any]:
    """A client frame as an event object, or ``ClientError`` (nothing is echoed)."""
    try:
        # NaN and Infinity are not JSON; echoed back they would break clients.
        event = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ClientError("The event is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict):
        raise ClientError("An event must be a JSON object.", code="invalid_event")
    return event


def check_depth(event: dict[str, Any]) -> None:
    if nested_deeper_than(event, MAX_EVENT_DEPTH):
        raise ClientError(
            f"The event nests objects and arrays deeper than {MAX_EVENT_DEPTH} levels.",
            code="invalid_event",
        )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
