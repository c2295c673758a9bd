"""Server VAD: webrtcvad run incrementally on each new 20 ms frame.

Never rescans a window: each frame is classified once, and a small counter state
machine turns frame decisions into speech start and stop at the session's
``threshold``, ``prefix_padding_ms`` and ``silence_duration_ms``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import webrtcvad

from models.audio import rms

VAD_RATE_HZ = 8_000
FRAME_MS = 20
_FRAME_BYTES = VAD_RATE_HZ * FRAME_MS // 1000 * 2
# Speech starts when this many of the last START_WINDOW frames are voiced.
START_WINDOW = 5
START_VOICED = 4


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: float


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: float


@dataclass(frozen=True)
class SilenceStarted:
    """Speech paused long enough that the turn may be ending (for speculative STT)."""

    audio_ms: float


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after ``SilenceStarted``: the turn goes on."""


VadEvent = SpeechStarted | SpeechStopped | SilenceStarted | SpeechResumed
# Unvoiced frames after speech before ``SilenceStarted`` (100 ms).
SPECULATE_FRAMES = 5


class FrameClassifier(Protocol):
    """Says whether one 20 ms frame of PCM16 at 8 kHz is speech (frames come in order)."""

    def voiced(self, frame: bytes) -> bool: ...


class WebRtcFrames:
    """webrtcvad behind an energy floor. ``threshold`` (0-1, the Realtime
    ``server_vad.threshold``) picks webrtcvad's aggressiveness and the floor: higher is
    stricter, as in OpenAI's VAD."""

    def __init__(self, threshold: float) -> None:
        self._vad = webrtcvad.Vad(min(3, int(threshold * 4)))
        # Energy floor: about -54 dBFS at threshold 0, -36 dBFS at threshold 1.
        self._min_rms = 32768 * 10 ** ((-54 + 18 * threshold) / 20)

    def voiced(self, frame: bytes) -> bool:
        return rms(frame) >= self._min_rms and self._vad.is_speech(frame, VAD_RATE_HZ)


class ServerVad:
    """Feed PCM16 at 8 kHz with its place in session audio time; get speech events.

    ``classifier`` decides frame by frame (default: :class:`WebRtcFrames` at ``threshold``;
    models/silero.py has the neural one); this class turns its decisions into speech start
    and stop at the session's ``prefix_padding_ms`` and ``silence_duration_ms``.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        classifier: FrameClassifier | None = None,
    ) -> None:
        self._classifier = classifier or WebRtcFrames(threshold)
        self._padding_ms = prefix_padding_ms
        self._silence_frames = max(1, -(-silence_duration_ms // FRAME_MS))
        self._speculate_frames = min(SPECULATE_FRAMES, self._silence_frames - 1) or -1
        self._carry = b""
        self._clock_ms = 0.0  # session time of the start of ``_carry``
        self._recent: deque[tuple[float, bool]] = deque(maxlen=START_WINDOW)
        self._recent_voiced = 0  # of the frames in ``_recent``
        self._speaking = False
        self._unvoiced_run = 0
        self._last_voiced_end_ms = 0.0
        self._pause_frames: int | None = None  # this pause's own window (end_pause_after)

    @property
    def speaking(self) -> bool:
        return self._speaking

    def end_pause_after(self, silence_ms: int) -> None:
        """End the turn once the current pause has lasted ``silence_ms`` (if that is sooner
        than the configured window), unless speech resumes; later pauses use the window."""
        if self._speaking:
            self._pause_frames = max(1, -(-silence_ms // FRAME_MS))

    def end_pause(self, at_least_ms: int) -> bool:
        """The current pause is to end the turn (an end-of-turn model said so): ``True``
        if it has lasted ``at_least_ms`` (the caller ends the turn now); else the detector
        ends it (``SpeechStopped``) once it has, unless speech resumes."""
        if self._unvoiced_run * FRAME_MS >= at_least_ms:
            return True
        self.end_pause_after(at_least_ms)
        return False

    def reset(self) -> None:
        """Forget the current turn (buffer cleared or committed); time goes on."""
        self._recent.clear()
        self._recent_voiced = 0
        self._speaking = False
        self._unvoiced_run = 0
        self._pause_frames = None

    def feed(self, pcm16: bytes, start_ms: float) -> list[VadEvent]:
        if abs(start_ms - (self._clock_ms + len(self._carry) / 16)) > 1.0:
            self._carry = b""  # a gap (audio not fed): resynchronise
            self._clock_ms = start_ms
        data = self._carry + pcm16
        events: list[VadEvent] = []
        offset = 0
        while offset + _FRAME_BYTES <= len(data):
            frame = data[offset : offset + _FRAME_BYTES]
            event = self._frame(frame, self._clock_ms)
            if event is not None:
                events.append(event)
            offset += _FRAME_BYTES
            self._clock_ms += FRAME_MS
        self._carry = data[offset:]
        return events

    def _frame(self, frame: bytes, frame_start_ms: float) -> VadEvent | None:
        voiced = self._classifier.voiced(frame)
        if not self._speaking:
            recent = self._recent
            if len(recent) == START_WINDOW and recent[0][1]:
                self._recent_voiced -= 1  # about to leave the window
            recent.append((frame_start_ms, voiced))
            if voiced:  # an int whatever the classifier's bool (Silero's may be numpy's)
                self._recent_voiced += 1
            if self._recent_voiced >= START_VOICED:
                first = next(t for t, v in self._recent if v)
                self._speaking = True
                self._unvoiced_run = 0
                self._last_voiced_end_ms = frame_start_ms + FRAME_MS
                return SpeechStarted(max(0.0, first - self._padding_ms))
            return None
        if voiced:
            resumed = self._unvoiced_run >= self._speculate_frames
            self._unvoiced_run = 0
            self._pause_frames = None
            self._last_voiced_end_ms = frame_start_ms + FRAME_MS
            return SpeechResumed() if resumed else None
        self._unvoiced_run += 1
        if self._unvoiced_run == self._speculate_frames:
            return SilenceStarted(self._last_voiced_end_ms)
        window = min(self._silence_frames, self._pause_frames or self._silence_frames)
        if self._unvoiced_run >= window:
            self._speaking = False
            self._recent.clear()
            self._recent_voiced = 0
            self._pause_frames = None
            return SpeechStopped(self._last_voiced_end_ms)
        return None
