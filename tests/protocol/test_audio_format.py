"""Wire audio formats: rates and sizes have one owner, ``AudioFormatType``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import AudioFormat


@pytest.mark.parametrize(
    ("fmt", "rate_hz", "sample_bytes", "bytes_per_ms"),
    [
        (AudioFormatType.PCM, 24_000, 2, 48),
        (AudioFormatType.PCMU, 8_000, 1, 8),
        (AudioFormatType.PCMA, 8_000, 1, 8),
    ],
)
def test_sizes(fmt, rate_hz, sample_bytes, bytes_per_ms) -> None:
    assert (fmt.sample_rate_hz, fmt.sample_bytes, fmt.bytes_per_ms) == (
        rate_hz,
        sample_bytes,
        bytes_per_ms,
    )
    assert fmt.duration_ms(bytes_per_ms * 250) == 250.0
    assert fmt.byte_count(250) == bytes_per_ms * 250


def test_byte_counts_are_whole_samples() -> None:
    assert AudioFormatType.PCM.byte_count(0.03) == 0  # 1.44 bytes: no whole sample
    assert AudioFormatType.PCM.byte_count(10.01) == 480  # 480.48 bytes
    assert AudioFormatType.PCM.byte_count(10.03) == 480  # 481.44 bytes: half a sample cut
    assert AudioFormatType.PCMU.byte_count(10.2) == 81


def test_a_format_is_its_wire_string() -> None:
    assert AudioFormatType("audio/pcmu") is AudioFormatType.PCMU
    assert AudioFormatType.PCMA == "audio/pcma" and str(AudioFormatType.PCM) == "audio/pcm"
    with pytest.raises(ValueError):
        AudioFormatType("audio/mp3")


def test_the_session_format_model_knows_its_size() -> None:
    assert AudioFormat().bytes_per_ms == 48
    assert AudioFormat().model_dump(mode="json") == {"type": "audio/pcm", "rate": 24000}
    g711 = AudioFormat.model_validate({"type": "audio/pcma"})
    assert g711.bytes_per_ms == 8 and g711.model_dump(mode="json") == {"type": "audio/pcma"}
    with pytest.raises(ValidationError):
        AudioFormat.model_validate({"type": "audio/pcm", "rate": 16000})
