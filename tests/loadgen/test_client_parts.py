"""The load generator's cheap reading of delta frames and writing of its own frames
(loadgen/client.py)."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from loadgen.client import _delta_event, send_text_now
from tests.waiting import eventually


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


async def test_a_frame_written_at_once_arrives_as_the_text_sent() -> None:
    """``send_text_now`` writes what ``websockets`` would have (a masked text frame, read
    back by a ``websockets`` server), and declines once the connection is closing."""
    received: list[str | bytes] = []

    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            received.append(message)

    messages = [
        json.dumps({"n": n, "pad": "x" * size}).encode() for n, size in enumerate((0, 200, 70_000))
    ]
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            for message in messages:
                assert send_text_now(ws, message)
            await eventually(lambda: len(received) == len(messages), what="the frames")
            await ws.close()
            assert not send_text_now(ws, b"{}")
    assert received == [m.decode() for m in messages]
