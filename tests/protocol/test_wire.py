"""The wire helpers of the append and audio-delta fast paths (transceiver/protocol/wire.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transceiver.protocol.errors import ClientError
from transceiver.protocol.wire import (
    MAX_EVENT_DEPTH,
    encode_server_event,
    loads_strict,
    nested_deeper_than,
    parse_client_frame,
)


@given(
    audio=st.binary(max_size=5000),
    event_type=st.sampled_from(
        ["response.output_audio.delta", "response.audio.delta", "response.output_text.delta"]
    ),
)
def test_an_event_encodes_to_the_same_json_whatever_the_path(audio: bytes, event_type: str) -> None:
    event = {
        "type": event_type,
        "event_id": "event_1",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }
    frame = encode_server_event(event)
    assert json.loads(frame) == event and frame.startswith(f'{{"type":"{event_type}"')


def test_text_deltas_are_still_escaped() -> None:
    event = {"type": "response.output_text.delta", "delta": 'a "quote"\n\\ and é'}
    assert json.loads(encode_server_event(event)) == event


@pytest.mark.parametrize(
    "raw", [b'{"type": "x"}', '{"type": "x"}', '{"type": "x"}'.encode("utf-16"), bytearray(b"{}")]
)
def test_loads_strict_reads_text_and_bytes_as_json_loads_does(raw: str | bytes) -> None:
    assert loads_strict(raw) == json.loads(raw)


@pytest.mark.parametrize(
    "raw", ['{"a": NaN}', '{"a": 1e999}', '\ufeff{"a": 1}', b"\xff\xfe{", "{", b'{"a": Infinity}']
)
def test_loads_strict_refuses_what_is_not_json(raw: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads_strict(raw)
    with pytest.raises(ClientError):
        parse_client_frame(raw)


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "deeper"),
    [
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, False),  # flat: the fast path
        ({}, False),
        ({"a": nest(MAX_EVENT_DEPTH - 1)}, False),
        ({"a": nest(MAX_EVENT_DEPTH)}, True),
        (nest(MAX_EVENT_DEPTH + 1), True),
    ],
)
def test_depth(value: Any, deeper: bool) -> None:
    assert nested_deeper_than(value, MAX_EVENT_DEPTH) is deeper
    assert nested_deeper_than({"flat": 1}, 0) is True  # one level is past a limit of 0
