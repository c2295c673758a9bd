"""``audio.input.noise_reduction`` in the session shell: appends filtered before the core.

"Noise reduction filters audio added to the input audio buffer before it is sent to VAD
and the model" (the openai SDK's ``NoiseReduction``). With it set, the shell (runner.py)
hands each client frame to :meth:`InputNoise.frame` before the core: an append's audio is
filtered on a worker thread (1-3 ms a 20 ms chunk, and 0.3 s to build DeepFilterNet, too
long for the event loop: models/noise.py) and the core gets the event with the filtered
audio, so its VAD, input buffer, items and transcription all see that. The shell reads
the next client event only once this one is through, so events keep their order. The
core stays as it is: it never knows a filter ran.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from models.noise import InputNoiseFilter, NoiseError
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import NoiseReduction
from transceiver.protocol.errors import ClientError
from transceiver.protocol.input_audio import APPEND_MAX_CHARS
from transceiver.protocol.items import decode_base64
from transceiver.protocol.session import RealtimeSession
from transceiver.protocol.wire import parse_client_frame


class InputNoise:
    """One session's noise reduction, as its shell applies it."""

    def __init__(self, session: RealtimeSession) -> None:
        self._session = session
        self._filter = InputNoiseFilter()
        self._job: asyncio.Future[bytes] | None = None

    def unfiltered(self) -> bool:
        """Whether frames go to the core as they are now (noise reduction is off)."""
        return self._reduction() is None

    def _reduction(self) -> NoiseReduction | None:
        """The session's noise reduction; while it is off, the filter's stream is reset."""
        nr = self._session.config.audio.input.noise_reduction
        if nr is None:
            self._filter.reset_stream()  # audio goes in unfiltered: a gap in the stream
        return nr

    async def frame(self, frame: str | bytes) -> str | bytes | dict[str, Any] | None:
        """What the core should receive for ``frame``: the frame itself, or its event with
        the filtered audio; None when the append was refused here (the engine cannot
        load: an ``error`` event says so)."""
        nr = self._reduction()
        if nr is None:
            return frame
        try:
            event = parse_client_frame(frame)
        except ClientError:
            return frame  # the core answers it
        fmt = self._session.input_format
        audio = _append_audio(event, fmt)
        if audio is None:
            return event
        job = asyncio.get_running_loop().run_in_executor(
            None, self._filter.filter, audio, fmt, nr.type, nr.strength
        )
        self._job = job  # close() waits for it before freeing the engine
        try:
            filtered = await asyncio.shield(job)
        except NoiseError as exc:
            self._session.refuse_append(event, _unavailable(nr.type, exc))
            return None
        return {**event, "audio": base64.b64encode(filtered).decode("ascii")}

    async def close(self) -> None:
        """Free the engine, once no worker is in it (the session may end mid-append)."""
        if self._job is not None:
            await asyncio.wait([self._job])
        self._filter.close()


def _append_audio(event: dict[str, Any], fmt: AudioFormatType) -> bytes | None:
    """The audio of a well-formed ``input_audio_buffer.append`` in whole samples; None for
    anything else, which the core takes (or refuses) as it is."""
    text = event.get("audio")
    if event.get("type") != "input_audio_buffer.append" or not isinstance(text, str):
        return None
    if len(text) > APPEND_MAX_CHARS:
        return None
    try:
        audio = decode_base64(text, "audio")
    except ClientError:
        return None
    return audio if len(audio) % fmt.sample_bytes == 0 else None


def _unavailable(kind: str, exc: Exception) -> ClientError:
    return ClientError(
        f"Noise reduction '{kind}' is not available on this server ({exc}); set "
        "audio.input.noise_reduction to null to send audio without it.",
        code="noise_reduction_unavailable",
        param="session.audio.input.noise_reduction",
        type="server_error",
    )
