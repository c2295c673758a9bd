"""Fuzzing the WebSocket path: whatever frames a client sends, it gets ``error`` events (or a
clean close for a frame over the size limit), its session goes on, and a bystander's session
answers as before. Bounded: Hypothesis, a fixed number of examples, one server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.servers import RunningServer

CLIENT_EVENTS = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "transcription_session.update",
]
PING = json.dumps({"type": "input_audio_buffer.clear", "event_id": "fuzz_ping"})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["audio/pcm", "server_vad", "semantic_vad", "inf", "auto", "none", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
keys = st.sampled_from(
    ["session", "item", "item_id", "response", "audio", "event_id", "audio_end_ms", "type"]
)
events = st.builds(
    lambda etype, fields: {"type": etype, **fields},
    st.sampled_from(CLIENT_EVENTS),
    st.dictionaries(keys, values, max_size=4),
)


def _deep(depth: int) -> str:
    return '{"type":"session.update","session":' + '{"a":' * depth + "1" + "}" * depth + "}"


frames = st.one_of(
    events.map(json.dumps),
    values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(min_value=50, max_value=5000).map(_deep),
    st.binary(max_size=300).map(
        lambda b: json.dumps({"type": "input_audio_buffer.append", "audio": b.decode("latin-1")})
    ),
    st.binary(min_size=1, max_size=301).map(
        lambda b: json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()}
        )
    ),
)


async def _answer(ws: ClientConnection, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Ping the session; every event up to the ping's answer."""
    await ws.send(PING)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        event = json.loads(raw)
        seen.append(event)
        if event["type"] == "input_audio_buffer.cleared":
            return seen


async def _check(url: str, sent: list[str | bytes]) -> None:
    async with connect(url) as bystander, connect(url, max_size=None) as ws:
        for conn in (bystander, ws):
            assert json.loads(await conn.recv())["type"] == "session.created"
        for frame in sent:
            await ws.send(frame)
        try:
            seen = await _answer(ws)
        except ConnectionClosed as closed:  # only a frame the server cannot read may end it
            assert closed.rcvd is not None and closed.rcvd.code in (1003, 1007, 1009), closed
        else:
            for event in seen:
                assert event["type"] != "error" or set(event["error"]) >= {
                    "type",
                    "code",
                    "message",
                    "param",
                    "event_id",
                }, event
        started = time.monotonic()
        await _answer(bystander, timeout_s=5)
        assert time.monotonic() - started < 2.0  # bystanders keep their latency


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sent=st.lists(frames, min_size=1, max_size=6))
def test_no_frame_sequence_breaks_a_session_or_its_neighbours(
    mock_server: RunningServer, sent: list[str | bytes]
) -> None:
    asyncio.run(_check(f"{mock_server.ws_base_url}/realtime?model=gpt-realtime", sent))
