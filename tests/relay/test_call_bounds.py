"""What a WebRTC call makes the relay hold is bounded (relay/webrtc.py): reply audio ahead of
playback, events kept for a data channel not open yet, events queued on an open one, and
the audio of a caller that never receives it. Without a network, as in
tests/relay/test_playback_cuts.py, whose harness these tests share.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from relay.webrtc import MAX_BACKLOG_BYTES, MAX_BACKLOG_EVENTS, MAX_CHANNEL_BUFFERED_BYTES, Call
from tests.relay.test_playback_cuts import FakeSession, Harness

SECOND = 48_000  # bytes of PCM16 24 kHz


class FastUpstream(FakeSession):
    """A session that streams 60 s of reply audio per response, as fast as it can."""

    def __init__(self, seconds: int) -> None:
        super().__init__()
        self.seconds = seconds

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        delta = base64.b64encode(b"\x10\x00" * (SECOND // 2)).decode()
        for n in range(self.seconds):
            yield json.dumps(
                {
                    "type": "response.output_audio.delta",
                    "response_id": f"resp_{n // 60}",
                    "item_id": f"item_{n // 60}",
                    "delta": delta,
                }
            )
            await asyncio.sleep(0)


async def test_an_upstream_faster_than_real_time_is_held_to_the_bound() -> None:
    upstream = FastUpstream(600)  # ten minutes of audio, ten responses
    pc = RTCPeerConnection()
    call = Call("rtc_test", pc, upstream, lambda call: None, max_pending_audio_s=5)  # type: ignore[arg-type]
    shown: list[dict[str, Any]] = []

    async def show(text: str) -> None:
        shown.append(json.loads(text))

    call.sidebands.add(show)
    try:
        await call._pump_upstream()
        assert call.outbound.pending_bytes <= 5 * SECOND
        assert call.outbound.pending_bytes == 5 * SECOND  # the first five seconds, to play
        # Each response is cut where the bound fell, its item truncated to what will play.
        cuts = [(e["item_id"], e["audio_end_ms"]) for e in upstream.truncates()]
        assert cuts == [("item_0", 5000)] + [(f"item_{n}", 0) for n in range(1, 10)]
        errors = [e["error"] for e in shown if e["type"] == "error"]
        assert len(errors) == 10 and {e["code"] for e in errors} == {"output_audio_overflow"}
        assert [e["type"] for e in shown].count("output_audio_buffer.started") == 1
    finally:
        call.outbound.stop()
        await pc.close()


@pytest.fixture
async def bounded() -> Any:
    harness = Harness(max_pending_audio_s=1.0)
    yield harness
    await harness.close()


async def test_barge_in_cuts_at_once_under_the_bound(bounded: Harness) -> None:
    h = bounded
    await h.audio("resp_1", "item_1", 600)
    await h.audio("resp_1", "item_1", 400)  # 1000 ms pending: at the bound
    assert h.session.truncates() == []
    await h.audio("resp_1", "item_1", 400)  # past it: the response is cut there
    assert [(e["item_id"], e["audio_end_ms"]) for e in h.session.truncates()] == [("item_1", 1000)]
    assert h.types()[-1] == "error" and h.shown[-1]["error"]["code"] == "output_audio_overflow"
    assert h.call.outbound.pending_bytes == SECOND
    await h.audio("resp_1", "item_1", 400)  # the rest of it is dropped
    assert h.call.outbound.pending_bytes == SECOND and len(h.session.truncates()) == 1
    # The caller hears 100 ms of it, then speaks: the track stops, the item is cut to 100 ms.
    await h.play(5)
    await h.server("input_audio_buffer.speech_started", item_id="item_user", audio_start_ms=0)
    assert [(e["item_id"], e["audio_end_ms"]) for e in h.session.truncates()][-1] == (
        "item_1",
        100,
    )
    assert h.types()[-2:] == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared"]
    assert not h.call.outbound.playing
    # The next response plays, counted from its own start.
    await h.audio("resp_2", "item_2", 200)
    await h.play(3)
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear"}))
    assert h.session.truncates()[-1]["item_id"] == "item_2"
    assert h.session.truncates()[-1]["audio_end_ms"] == 60


class OpenChannel:
    """An open data channel whose SCTP queue holds ``bufferedAmount`` bytes."""

    readyState = "open"

    def __init__(self, buffered: int = 0) -> None:
        self.bufferedAmount = buffered
        self.sent: list[dict[str, Any]] = []
        self.handlers: dict[str, Callable[..., Any]] = {}

    def on(self, name: str, handler: Callable[..., Any] | None = None) -> Any:
        if handler is None:
            return lambda f: self.handlers.setdefault(name, f)
        self.handlers[name] = handler
        return handler

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def test_events_before_the_data_channel_opens_are_bounded(h: Harness) -> None:
    await h.server("session.created", session={"id": "sess_1"})
    for n in range(MAX_BACKLOG_EVENTS + 100):
        await h.server("response.output_audio_transcript.delta", delta=f"word {n}")
    assert len(h.call._backlog) == MAX_BACKLOG_EVENTS
    big = "x" * (MAX_BACKLOG_BYTES // 8)
    for _ in range(10):
        await h.server("response.output_audio_transcript.delta", delta=big)
    assert sum(len(event) for event in h.call._backlog) <= MAX_BACKLOG_BYTES
    assert len(h.call._backlog) < 10
    channel = OpenChannel()
    h.call._open_channel(channel)  # type: ignore[arg-type]
    # session.created, the newest events, then one error saying how many were dropped.
    assert channel.sent[0]["type"] == "session.created"
    assert channel.sent[-2]["delta"] == big
    assert channel.sent[-1]["type"] == "error"
    assert channel.sent[-1]["error"]["code"] == "events_dropped"
    dropped = MAX_BACKLOG_EVENTS + 100 + 10 + 1 - (len(channel.sent) - 1)
    assert channel.sent[-1]["error"]["message"].startswith(f"{dropped} server events")
    assert h.call._backlog_bytes == 0 and not h.call._backlog
    await h.server("response.done", response={"id": "resp_1"})
    assert channel.sent[-1]["type"] == "response.done"


@pytest.fixture
async def h() -> Any:
    harness = Harness()
    yield harness
    await harness.close()


async def test_a_full_data_channel_drops_events_and_says_so(h: Harness) -> None:
    channel = OpenChannel(buffered=MAX_CHANNEL_BUFFERED_BYTES)
    h.call._open_channel(channel)  # type: ignore[arg-type]
    for n in range(5):
        await h.server("response.output_audio_transcript.delta", delta=f"word {n}")
    assert channel.sent == []
    assert h.types().count("response.output_audio_transcript.delta") == 5  # sidebands get all
    channel.bufferedAmount = 0
    await h.server("response.done", response={"id": "resp_1"})
    assert [e["type"] for e in channel.sent] == ["error", "response.done"]
    assert channel.sent[0]["error"]["code"] == "events_dropped"
    assert channel.sent[0]["error"]["message"].startswith("5 server events")


async def test_a_caller_that_never_receives_audio_holds_none(h: Harness) -> None:
    caller = RTCPeerConnection()
    relay = h.pc
    try:
        caller.addTransceiver("audio", direction="sendonly")
        await caller.setLocalDescription(await caller.createOffer())
        await relay.setRemoteDescription(caller.localDescription)
        relay.addTrack(h.call.outbound)  # as relay/calls.py does
        await relay.setLocalDescription(await relay.createAnswer())
        assert relay.getTransceivers()[0].currentDirection == "recvonly"
        for _ in range(20):
            await h.audio("resp_1", "item_1", 1000)
        assert h.call.outbound.pending_bytes == 0
        assert "output_audio_buffer.started" not in h.types()
        # Nothing plays, so nothing is cut: the caller's speech passes as it is.
        await h.server("input_audio_buffer.speech_started", item_id="item_user", audio_start_ms=0)
        assert h.session.truncates() == []
        assert h.types() == ["input_audio_buffer.speech_started"]
    finally:
        await caller.close()
