"""The session's bounded outbox and the mock's fault knobs, without a network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.waiting import eventually
from transceiver.backends.mock import MockBackend, MockOptions
from transceiver.faults import Faults
from transceiver.outbox import CloseMarker, Outbox
from transceiver.protocol.contract import SessionSpec
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.session import RealtimeSession
from transceiver.runner import SessionRunner

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_producers_wait_above_the_high_water_mark_until_the_writer_drains() -> None:
    box = Outbox(high_water_bytes=100, high_water_frames=10)
    box.put("x" * 60)
    await asyncio.wait_for(box.room(), 1)  # below the mark: no wait
    box.put("y" * 60)
    assert box.queued_bytes == 120
    waiting = asyncio.ensure_future(box.room())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await box.get() == "x" * 60  # 60 left: above the low-water mark (50)
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await box.get() == "y" * 60
    await asyncio.wait_for(waiting, 1)
    assert box.queued_bytes == 0 and len(box) == 0


async def test_frame_count_is_bounded_too_and_markers_keep_their_place() -> None:
    box = Outbox(high_water_bytes=10_000, high_water_frames=2)
    for frame in ("a", "b", CloseMarker(1000, "bye")):
        box.put(frame)
    waiting = asyncio.ensure_future(box.room())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert [await box.get() for _ in range(3)] == ["a", "b", CloseMarker(1000, "bye")]
    await asyncio.wait_for(waiting, 1)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()  # the writer waits for the next frame
    box.put(None)
    assert await asyncio.wait_for(getter, 1) is None


class Wire:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_no_faults_is_the_plain_send() -> None:
    wire = Wire()
    assert Faults().wrap(wire.send, wire.close, IdFactory()) == wire.send


async def test_fault_knobs_wrap_send() -> None:
    wire = Wire()
    send = Faults(error_after=1, close_after=3).wrap(wire.send, wire.close, IdFactory())
    for n in range(5):
        await send(f"m{n}")
    assert wire.sent[0] == "m0"
    assert json.loads(wire.sent[1])["error"]["code"] == "injected_fault"
    assert wire.sent[2:] == ["m1", "m2"]  # then closed: nothing more is sent
    assert wire.closed == (1011, "injected fault")
    stalled = Wire()
    send = Faults(stall_after=2).wrap(stalled.send, stalled.close, IdFactory())
    for n in range(4):
        await send(f"m{n}")
    assert stalled.sent == ["m0", "m1"] and stalled.closed is None


async def test_a_connection_that_ends_while_the_outbox_is_full_ends_the_session() -> None:
    """The writer's send fails (the client is gone) while the read loop waits for room:
    the session ends instead of waiting for ever."""
    gone = asyncio.Event()
    sent: list[str] = []

    async def send(message: str) -> None:
        await gone.wait()  # a client that stopped reading, then left
        raise OSError("connection lost")

    async def close(code: int, reason: str) -> None:
        sent.append(f"close {code}")

    frames: asyncio.Queue[str] = asyncio.Queue()

    async def incoming() -> AsyncIterator[str]:
        while True:
            yield await frames.get()

    session = RealtimeSession(SessionSpec(model="gpt-realtime"))
    runner = SessionRunner(
        session,
        MockBackend(MockOptions()),
        send,
        close,
        outbox=Outbox(high_water_bytes=10_000, high_water_frames=4),
    )
    task = asyncio.create_task(runner.run(incoming()))
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    for _ in range(10):
        frames.put_nowait(json.dumps({"type": "conversation.item.create", "item": item}))
    await eventually(lambda: len(runner.outbox) >= 4, 2, 0.01, "a full outbox")
    assert not frames.empty()  # the read loop waits for room: the rest stays unread
    assert not task.done()
    gone.set()
    await asyncio.wait_for(task, 2)
    assert runner.outbox.closed and runner.closed.is_set()
