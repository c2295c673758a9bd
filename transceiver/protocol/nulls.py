"""Explicit nulls in client objects: "not given", as OpenAI treats them, except where null
is a value ("off"). The session's (transceiver/protocol/config.py) and the response's
(transceiver/protocol/requests.py) validation drop them first."""

from __future__ import annotations

from typing import Any

# Where null is a value ("off", "none"); anywhere else in these objects an explicit null
# means "not given", as OpenAI treats it (a framework sends "instructions": null).
_NULL_IS_VALUE = {
    ("audio", "input", "turn_detection"),
    ("audio", "input", "transcription"),
    ("audio", "input", "noise_reduction"),
    ("tracing",),
    ("prompt",),
    ("include",),
    ("reasoning",),
}
# The objects whose null fields are dropped (not tool parameters: JSON schemas hold nulls).
_OBJECT_PATHS = {
    (),
    ("audio",),
    ("audio", "input"),
    ("audio", "output"),
    ("audio", "input", "format"),
    ("audio", "output", "format"),
    ("audio", "input", "turn_detection"),
    ("audio", "input", "transcription"),
    ("audio", "input", "noise_reduction"),
    ("truncation",),
    ("truncation", "token_limits"),
}


def drop_nulls(
    data: Any,
    objects: set[tuple[str, ...]] = _OBJECT_PATHS,
    keep: set[tuple[str, ...]] = _NULL_IS_VALUE,
    path: tuple[str, ...] = (),
) -> Any:
    """``data`` without the null fields of its objects at the paths in ``objects``, except
    those at the paths in ``keep``."""
    if not isinstance(data, dict) or path not in objects:
        return data
    return {
        key: drop_nulls(value, objects, keep, (*path, key))
        for key, value in data.items()
        if value is not None or (*path, key) in keep
    }
