"""relay/forward.py's DirectSession between a fake client protocol and a fake link session:
the answers the relay gives by itself (a rate-limit refusal) keep their place after the
server frames taken before them, and a client that does not read them is not read either
until it does, as for the frames it sends upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from relay.forward import DirectSession
from relay.ratelimit import RateLimits, SessionRates
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

CREATE = json.dumps({"type": "response.create", "event_id": "evt_mine"}).encode()
APPEND = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}).encode()


class Frames:
    """The client's protocol (relay/direct.py) as DirectSession uses it."""

    def __init__(self, held: tuple[bytes, ...] = ()) -> None:
        self.held = held  # read before the session attached
        self.on_message: Callable[[bytes, bool], None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.writes: list[bytes] = []
        self.reading = True

    @property
    def writable_now(self) -> bool:
        return self.writable.is_set()

    def send_frame(self, payload: bytes, text: bool) -> None:
        self.writes.append(payload)

    def write_frames(self, data: bytes) -> None:
        self.writes.append(data)

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        self.reading = True

    async def drain(self) -> None:
        await self.writable.wait()

    def detach(self) -> None:
        pass

    def attach(self, on_message: Callable[[bytes, bool], None]) -> Frames:
        self.on_message = on_message
        return self

    def deliver_held(self) -> None:
        assert self.on_message is not None
        for payload in self.held:
            self.on_message(payload, True)


class Link:
    """The session's link (transceiver/link.py ``LinkSession``), with room for all."""

    def __init__(self) -> None:
        self.take = None
        self.sent: list[bytes] = []
        self.later: list[bool] = []

    def offer(self, data: bytes, text: bool, later: bool = False) -> bool:
        self.sent.append(data)
        self.later.append(later)
        return True

    async def wait_credit(self) -> None:
        return None


class Count:
    def inc(self, amount: float = 1) -> None:
        pass


def past_limit() -> SessionRates:
    rates = RateLimits(1, None).session("key")
    assert rates.refuse(CREATE) is None
    rates.on_server(json.dumps({"type": "response.created", "response": {"id": "r"}}))
    assert rates.refuse(CREATE) is not None
    return rates


def session(frames: Frames, link: Link) -> DirectSession:
    return DirectSession(frames.attach, link, past_limit(), Count(), Count())  # type: ignore[arg-type]


async def test_a_refusal_leaves_after_the_server_frames_taken_before_it() -> None:
    frames, link = Frames(), Link()
    direct = session(frames, link)
    assert direct.take(b'{"type":"response.output_audio.delta"}', True)
    direct.on_message(CREATE, True)
    assert len(frames.writes) == 2
    assert b"response.output_audio.delta" in frames.writes[0]
    assert json.loads(frames.writes[1])["error"]["code"] == "rate_limit_exceeded"
    assert frames.reading and link.sent == []


async def test_a_client_that_does_not_read_its_refusals_is_not_read_until_it_does() -> None:
    frames, link = Frames(), Link()
    direct = session(frames, link)
    frames.writable.clear()  # the client's transport is over its high-water mark
    direct.on_message(CREATE, True)
    assert not frames.reading
    direct.on_message(APPEND, True)  # the rest of the same read: passed on as usual
    assert link.sent == [APPEND]
    await asyncio.sleep(0)
    assert not frames.reading
    frames.writable.set()
    await eventually(lambda: frames.reading, what="reading resumed once the client reads")
    assert direct.flushing is None


async def test_frames_read_before_the_session_attached_are_answered_too() -> None:
    """A client that sent before the session attached: its frames reach the session first
    (uvicorn held them), a refusal among them is answered like any other."""
    frames, link = Frames(held=(APPEND, CREATE)), Link()
    session(frames, link)
    assert link.sent == [APPEND]
    assert [json.loads(w)["type"] for w in frames.writes] == ["error"]


async def test_appends_may_wait_for_others_on_the_link_and_other_frames_may_not() -> None:
    frames, link = Frames(), Link()
    direct = session(frames, link)
    spaced = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}).encode()
    compact = b'{"type":"input_audio_buffer.append","audio":"AAAA"}'
    audio_first = b'{"audio":"AAAA","type":"input_audio_buffer.append"}'
    commit = b'{"type":"input_audio_buffer.commit"}'
    for frame in (spaced, compact, audio_first, commit):
        direct.on_message(frame, True)
    assert link.later == [True, True, False, False]
