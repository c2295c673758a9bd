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


# Events whose ``delta`` is base64 audio that this server encoded.
_AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encode_server_event(event: dict[str, Any]) -> str:
    """The frame for a server event (``type`` is its first key).

    An audio delta's base64 payload is most of the frame and needs no JSON escaping (its
    alphabet is letters, digits, ``+``, ``/`` and ``=``), so it is spliced in rather than
    scanned: the frame is the same JSON, at a fraction of the cost (``delta`` comes last).
    """
    delta = event.get("delta")
    if event.get("type") in _AUDIO_DELTAS and isinstance(delta, str):
        head = _COMPACT.encode({k: v for k, v in event.items() if k != "delta"})
        return f'{head[:-1]},"delta":"{delta}"}}'
    return _COMPACT.encode(event)


class JsonTooDeep(ValueError):
    """JSON nested deeper than the parser can go (Python's recursion limit)."""


def loads_strict(raw: str | bytes) -> Any:
    """JSON without NaN or Infinity; ``ValueError`` if it is not JSON (``JsonTooDeep`` if it
    nests past the parser's limit)."""
    if isinstance(raw, bytes | bytearray):  # as json.loads reads bytes
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    if raw.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM")
    try:
        return _STRICT.decode(raw)
    except RecursionError:
        raise JsonTooDeep("nested too deeply") from None


def parse_client_frame(raw: str | bytes) -> dict[str, Any]:
    """A client frame as an event object, or ``ClientError`` (nothing is echoed)."""
    try:
        event = loads_strict(raw)
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise ClientError("The event is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict):
        raise ClientError("An event must be a JSON object.", code="invalid_event")
    return event


# What an append starts with, as clients write it: compact (JSON.stringify, pydantic) or with
# json.dumps's default spacing (the audio may come first in others': they are simply not
# recognised as appends from their start). Most client frames of a session are one.
APPEND_HEADS = ('{"type":"input_audio_buffer.append"', '{"type": "input_audio_buffer.append"')

# A bare append (no field but ``type`` and ``audio``), in the same two spellings.
_BARE_APPEND_HEADS = (APPEND_HEADS[0] + ',"audio":"', APPEND_HEADS[1] + ', "audio": "')

_APPEND_STARTS = tuple(head.encode() for head in APPEND_HEADS)


def starts_as_append(raw: bytes) -> bool:
    """Whether a client frame's first bytes name it an ``input_audio_buffer.append``: a
    look at its start, not a parse (the frame may still be invalid)."""
    return raw.startswith(_APPEND_STARTS)


def bare_append_audio(raw: str | bytes) -> str | None:
    """The ``audio`` of a bare ``input_audio_buffer.append`` text frame, read without a
    general parse; None for any other frame (:func:`parse_client_frame`).

    The value holds no quote or backslash, so no escape: it is the JSON string's content,
    if the frame is JSON at all (a control character in it would make it invalid). The
    caller decodes it as base64, which only the alphabet passes, and, where that fails,
    parses the frame the general way for its exact error.
    """
    if type(raw) is not str or not raw.endswith('"}'):
        return None
    for head in _BARE_APPEND_HEADS:
        if raw.startswith(head) and len(raw) >= len(head) + 2:  # its own closing quote
            audio = raw[len(head) : -2]
            return None if '"' in audio or "\\" in audio else audio
    return None


def check_depth(
    value: Any, what: str = "The event", code: str = "invalid_event", param: str | None = None
) -> None:
    """``ClientError`` if ``value`` nests deeper than ``MAX_EVENT_DEPTH``: the one depth bound
    for client JSON (WebSocket events, REST bodies, session configurations, items), so code
    that recurses over it (``copy.deepcopy``, pydantic, ``json.dumps``) stays far from
    Python's recursion limit."""
    if nested_deeper_than(value, MAX_EVENT_DEPTH):
        raise ClientError(too_deep_message(what), code=code, param=param)


def too_deep_message(what: str) -> str:
    return f"{what} nests objects and arrays deeper than {MAX_EVENT_DEPTH} levels."


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every frame (json.loads with hooks builds a new one per call). NaN and
# Infinity are not JSON; echoed back they would break clients.
_STRICT = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels (no recursion)."""
    if isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values()):
        return limit < 1  # flat, as most events are (an append): one level
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
