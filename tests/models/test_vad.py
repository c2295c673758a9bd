"""The speech detector's silence window (models/vad.py), on synthetic speech at 8 kHz."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from models.synth import speech
from models.vad import (
    _FRAME_BYTES,
    FRAME_MS,
    START_VOICED,
    START_WINDOW,
    ServerVad,
    SilenceStarted,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
)

SPEECH = speech("hello there how are you", rate_hz=8_000)


def silence(ms: int) -> bytes:
    return b"\0\0" * 8 * ms


class Feeder:
    def __init__(self, vad: ServerVad) -> None:
        self.vad = vad
        self.at_ms = 0.0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        events = self.vad.feed(pcm, self.at_ms)
        self.at_ms += len(pcm) / 16
        return events


def kinds(events: list[VadEvent]) -> list[type]:
    return [type(e) for e in events]


def test_a_pause_can_end_sooner_than_the_window_once() -> None:
    feeder = Feeder(ServerVad(silence_duration_ms=4000))
    assert SpeechStarted in kinds(feeder.feed(SPEECH))
    assert kinds(feeder.feed(silence(600))) == [SilenceStarted]
    feeder.vad.end_pause_after(1000)
    assert kinds(feeder.feed(silence(300))) == []
    assert kinds(feeder.feed(silence(200))) == [SpeechStopped]
    # The next turn has the whole window again.
    assert SpeechStarted in kinds(feeder.feed(SPEECH))
    assert kinds(feeder.feed(silence(3000))) == [SilenceStarted]
    assert kinds(feeder.feed(silence(1100))) == [SpeechStopped]


def test_speech_that_resumes_forgets_the_shorter_wait() -> None:
    feeder = Feeder(ServerVad(silence_duration_ms=4000))
    feeder.feed(SPEECH + silence(300))
    feeder.vad.end_pause_after(500)
    feeder.feed(SPEECH)
    assert SpeechStopped not in kinds(feeder.feed(silence(3000)))


def test_a_shorter_wait_already_passed_ends_the_turn_at_the_next_frame() -> None:
    feeder = Feeder(ServerVad(silence_duration_ms=4000))
    feeder.feed(SPEECH + silence(1500))
    feeder.vad.end_pause_after(1000)
    assert kinds(feeder.feed(silence(20))) == [SpeechStopped]


def test_without_speech_there_is_no_pause_to_shorten() -> None:
    feeder = Feeder(ServerVad(silence_duration_ms=500))
    feeder.vad.end_pause_after(100)
    assert kinds(feeder.feed(silence(1000))) == []


def test_end_pause_ends_now_a_pause_long_enough_else_when_it_is() -> None:
    feeder = Feeder(ServerVad(silence_duration_ms=4000))
    feeder.feed(SPEECH + silence(300))
    assert feeder.vad.end_pause(200)  # lasted long enough: the caller ends the turn
    feeder.vad.reset()
    feeder.feed(SPEECH)
    (started,) = feeder.feed(silence(140))
    assert isinstance(started, SilenceStarted)
    assert not feeder.vad.end_pause(270)  # not yet: the detector ends it at 270 ms
    # The pause is counted from the last voiced frame, which may come before the silence.
    to_go_ms = started.audio_ms + 260 - feeder.at_ms
    assert 0 < to_go_ms < 140
    assert kinds(feeder.feed(silence(int(to_go_ms)))) == []
    assert kinds(feeder.feed(silence(20))) == [SpeechStopped]


class Scripted:
    """A frame classifier that answers from a list."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = iter(answers)

    def voiced(self, frame: bytes) -> bool:
        return next(self.answers)


@given(answers=st.lists(st.booleans(), max_size=60), reset_at=st.integers(0, 60))
def test_speech_starts_where_the_last_frames_window_first_holds_enough_voiced(
    answers: list[bool], reset_at: int
) -> None:
    """Speech starts at the first frame where START_VOICED of the last START_WINDOW frames
    (since the start or a reset) were voiced, and no sooner (a running count of the window,
    kept as frames enter and leave it, and cleared with it)."""
    vad = ServerVad(prefix_padding_ms=0, classifier=Scripted(answers))
    window: list[bool] = []
    expected = None
    for index, voiced in enumerate(answers):
        if index == reset_at:
            vad.reset()
            window.clear()
        window = [*window, voiced][-START_WINDOW:]
        events = vad.feed(bytes(_FRAME_BYTES), index * FRAME_MS)
        if sum(window) >= START_VOICED:
            first = index - len(window) + 1 + window.index(True)
            expected = [SpeechStarted(first * FRAME_MS)]
            assert events == expected
            return
        assert events == []
    assert expected is None
