"""The load generator's cheap reading of delta frames (loadgen/client.py)."""

from __future__ import annotations

import json

import pytest

from loadgen.client import _delta_event


@pytest.mark.parametrize(
    "kind", ["response.output_audio.delta", "response.audio.delta", "response.output_text.delta"]
)
def test_a_compact_delta_is_read_by_its_type_alone(kind: str) -> None:
    frame = json.dumps({"type": kind, "delta": "AAAA" * 1000}, separators=(",", ":"))
    assert _delta_event(frame) == {"type": kind}


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"response.done","response":{"status":"completed"}}',  # read in full
        '{"type": "response.output_audio.delta", "delta": "AAAA"}',  # not compact: parsed
        '{"delta":"AAAA","type":"response.output_audio.delta"}',  # type not first: parsed
        b'{"type":"response.output_audio.delta","delta":"AAAA"}',  # bytes: parsed
        '{"type":"error","error":{"message":"x"}}',
    ],
)
def test_anything_else_is_left_to_json(frame: str | bytes) -> None:
    assert _delta_event(frame) is None
