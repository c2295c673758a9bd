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
    bare_append_audio,
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


_BASE64ISH = st.text(alphabet="ABCxyz019+/=", max_size=40)
_HEADS = [
    '{"type":"input_audio_buffer.append","audio":"',
    '{"type": "input_audio_buffer.append", "audio": "',
]


@given(audio=_BASE64ISH, head=st.sampled_from(_HEADS))
def test_a_bare_append_gives_the_audio_json_would(audio: str, head: str) -> None:
    frame = f'{head}{audio}"}}'
    assert json.loads(frame) == {"type": "input_audio_buffer.append", "audio": audio}
    assert bare_append_audio(frame) == audio


def _valid_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


@given(
    frame=st.one_of(
        st.builds(lambda head, tail: head + tail, st.sampled_from(_HEADS), st.text(max_size=30)),
        st.builds(
            lambda audio, extra, compact: json.dumps(
                {"type": "input_audio_buffer.append", "audio": audio, **extra},
                separators=(",", ":") if compact else None,
            ),
            st.text(max_size=20),
            st.dictionaries(st.sampled_from(["event_id", "type", "x"]), st.text(max_size=5)),
            st.booleans(),
        ),
    )
)
def test_what_the_fast_path_takes_and_decodes_is_a_bare_append(frame: str) -> None:
    # Whatever it returns and decodes as base64 (the session's check) is exactly a bare
    # append of that audio; the rest (other fields, escapes, not JSON, not base64) is left
    # to the general parse.
    audio = bare_append_audio(frame)
    if audio is not None and _valid_base64(audio):
        assert json.loads(frame) == {"type": "input_audio_buffer.append", "audio": audio}


@pytest.mark.parametrize(
    "frame",
    [
        '{"audio": "AAAA", "type": "input_audio_buffer.append"}',
        '{"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "e1"}',
        '{"type": "input_audio_buffer.append", "audio": "AA\\u0041A"}',
        '{"type": "input_audio_buffer.append", "audio": "AA"A"}',
        '{"type":"input_audio_buffer.append","audio":"}',  # not JSON: the value never closes
        '{"type": "input_audio_buffer.append", "audio": "}',
        '{"type": "input_audio_buffer.append", "audio": "AAAA"} ',
        '\ufeff{"type": "input_audio_buffer.append", "audio": "AAAA"}',
        b'{"type": "input_audio_buffer.append", "audio": "AAAA"}',
    ],
)
def test_other_frames_take_the_general_parse(frame: str | bytes) -> None:
    assert bare_append_audio(frame) is None
