"""Playback cuts on a WebRTC call, without a network: the relay counts what its track sent
and truncates each cut item to that, answering ``output_audio_buffer.clear`` itself.

The call's session is a fake that records what the relay sends it; server events are fed to
the call as the transceiver would send them, and the track's frames are pulled as aiortc
would pull them (20 ms each, in real time).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from relay.webrtc import Call, OutboundAudio
from tests.waiting import eventually


class FakeSession:
    """The transceiver session's connection: records what the relay sends it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: str | bytes) -> None:
        self.sent.append(json.loads(message))

    async def close(self) -> None:
        return None

    def truncates(self) -> list[dict[str, Any]]:
        return [e for e in self.sent if e["type"] == "conversation.item.truncate"]


class Harness:
    def __init__(self, max_pending_audio_s: float = 60.0) -> None:
        self.session = FakeSession()
        self.pc = RTCPeerConnection()
        self.call = Call(
            "rtc_test",
            self.pc,
            self.session,  # type: ignore[arg-type]
            lambda call: None,
            max_pending_audio_s=max_pending_audio_s,
        )
        self.shown: list[dict[str, Any]] = []  # what the caller's side sees
        self.call.sidebands.add(self.show)

    async def show(self, text: str) -> None:
        self.shown.append(json.loads(text))

    def types(self) -> list[str]:
        return [e["type"] for e in self.shown]

    async def server(self, type: str, **fields: Any) -> None:
        await self.call._server_event(json.dumps({"type": type, "event_id": "event_s", **fields}))

    async def audio(self, response_id: str, item_id: str, ms: int) -> None:
        pcm = (b"\x10\x00" * 24) * ms  # PCM16 24 kHz, not silence
        delta = base64.b64encode(pcm).decode()
        await self.server(
            "response.output_audio.delta", response_id=response_id, item_id=item_id, delta=delta
        )

    async def play(self, frames: int) -> None:
        for _ in range(frames):
            await self.call.outbound.recv()

    async def close(self) -> None:
        self.call.outbound.stop()
        await self.pc.close()


@pytest.fixture
async def h() -> Any:
    harness = Harness()
    yield harness
    await harness.close()


async def test_barge_in_truncates_to_the_frames_sent(h: Harness) -> None:
    await h.audio("resp_1", "item_1", 500)
    assert h.types() == ["output_audio_buffer.started"]
    await h.play(5)
    await h.server("input_audio_buffer.speech_started", item_id="item_user", audio_start_ms=0)
    assert h.session.truncates() == [
        {
            "type": "conversation.item.truncate",
            "event_id": h.session.truncates()[0]["event_id"],
            "item_id": "item_1",
            "content_index": 0,
            "audio_end_ms": 100,  # five 20 ms frames went out
        }
    ]
    assert h.types()[1:] == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared"]
    assert h.shown[-1]["response_id"] == "resp_1"
    assert not h.call.outbound.playing
    # The cut response's audio still on its way is dropped, not played later.
    await h.audio("resp_1", "item_1", 100)
    assert not h.call.outbound.playing
    await h.server("response.done", response={"id": "resp_1", "status": "cancelled"})
    await h.server("conversation.item.truncated", item_id="item_1", audio_end_ms=100)
    assert h.types()[-2:] == ["response.done", "conversation.item.truncated"]
    assert "output_audio_buffer.stopped" not in h.types()
    # The next response plays and is counted from its own start.
    await h.audio("resp_2", "item_2", 40)
    assert h.call.outbound.playing and h.types()[-1] == "output_audio_buffer.started"


async def test_clear_is_answered_after_the_truncation(h: Harness) -> None:
    await h.audio("resp_1", "item_1", 1000)
    await h.play(3)
    await h.call.from_client(json.dumps({"type": "response.cancel"}))
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear", "event_id": "c1"}))
    assert [e["type"] for e in h.session.sent] == ["response.cancel", "conversation.item.truncate"]
    assert h.session.truncates()[0]["audio_end_ms"] == 60
    assert not h.call.outbound.playing
    # The session answers the cancel first: cleared comes after it, before the truncation.
    await h.server("response.done", response={"id": "resp_1", "status": "cancelled"})
    assert "output_audio_buffer.cleared" not in h.types()
    await h.server("conversation.item.truncated", item_id="item_1", audio_end_ms=60)
    assert h.types()[-3:] == [
        "response.done",
        "output_audio_buffer.cleared",
        "conversation.item.truncated",
    ]
    assert h.shown[-2]["response_id"] == "resp_1"
    # Once the buffer is clear, a clear names the response and truncates nothing more.
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear"}))
    assert h.types()[-1] == "output_audio_buffer.cleared" and len(h.session.truncates()) == 1


async def test_clear_with_nothing_played_is_an_error(h: Harness) -> None:
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear", "event_id": "c1"}))
    assert h.types() == ["error"]
    assert h.shown[0]["error"]["event_id"] == "c1" and h.shown[0]["error"]["code"]
    assert h.session.sent == []  # never reaches the session


async def test_a_refused_truncate_is_the_relays_own(h: Harness) -> None:
    await h.audio("resp_1", "item_1", 200)
    await h.play(1)
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear"}))
    event_id = h.session.truncates()[0]["event_id"]
    error = {"type": "invalid_request_error", "message": "gone", "event_id": event_id}
    await h.server("error", error=error)
    assert h.types()[-1] == "output_audio_buffer.cleared"
    assert "error" not in h.types()
    # A client's error passes as ever.
    await h.server("error", error={**error, "event_id": "client_1"})
    assert h.types()[-1] == "error"


async def test_a_dry_track_still_cuts_a_response_in_progress(h: Harness) -> None:
    """Generation slower than real time: the track ran dry, the response goes on."""
    await h.audio("resp_1", "item_1", 40)
    await h.play(2)
    assert not h.call.outbound.playing
    await eventually(lambda: "output_audio_buffer.stopped" in h.types(), what="stopped")
    assert h.types() == ["output_audio_buffer.started", "output_audio_buffer.stopped"]
    await h.call.from_client(json.dumps({"type": "output_audio_buffer.clear"}))
    assert h.session.truncates()[0]["item_id"] == "item_1"
    assert h.session.truncates()[0]["audio_end_ms"] == 40
    await h.audio("resp_1", "item_1", 100)  # generated before the session saw the cut
    assert not h.call.outbound.playing


async def test_without_interrupt_response_speech_does_not_cut(h: Harness) -> None:
    td = {"type": "server_vad", "interrupt_response": False}
    await h.server("session.updated", session={"audio": {"input": {"turn_detection": td}}})
    await h.audio("resp_1", "item_1", 200)
    await h.server("input_audio_buffer.speech_started", item_id="item_user", audio_start_ms=0)
    assert h.call.outbound.playing and h.session.truncates() == []
    assert "output_audio_buffer.cleared" not in h.types()


class SmallChannel:
    """An open data channel whose peer takes messages up to 1000 bytes (aiortc raises)."""

    readyState = "open"
    bufferedAmount = 0

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, text: str) -> None:
        if len(text.encode()) > 1000:
            raise ValueError("Cannot send message: the remote party only supports 1000 bytes")
        self.sent.append(json.loads(text))


async def test_an_event_too_large_for_the_data_channel_does_not_end_the_call(h: Harness) -> None:
    channel = SmallChannel()
    h.call._channel = channel  # type: ignore[assignment]
    item = {"id": "item_1", "type": "message", "content": [{"audio": "A" * 5000}]}
    await h.server("conversation.item.retrieved", item=item)
    assert [e["type"] for e in channel.sent] == ["error"]
    assert channel.sent[0]["error"]["code"] == "event_too_large"
    assert h.types() == ["conversation.item.retrieved"]  # a sideband gets it whole
    await h.server("response.created", response={"id": "resp_1"})
    assert channel.sent[-1]["type"] == "response.created"


async def test_the_track_counts_each_items_frames() -> None:
    track = OutboundAudio(lambda: None)
    try:
        track.push(b"\x01\x00" * 24 * 30, "item_a")  # 30 ms
        track.push(b"\x01\x00" * 24 * 30, "item_b")
        for _ in range(2):  # 40 ms: all of item_a, 10 ms of item_b
            await track.recv()
        assert (track.played_ms("item_a"), track.played_ms("item_b")) == (30, 10)
        assert track.clear() == ["item_b"] and not track.playing
        assert track.played_ms("item_b") == 10
        track.push(b"\x01\x00" * 24 * 20, "item_c")  # items gone from the track are forgotten
        assert track.played_ms("item_a") == 0
    finally:
        track.stop()
