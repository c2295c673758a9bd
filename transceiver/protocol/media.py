"""Media sessions (WebRTC calls) keep PCM audio: the one check, for the core and the proxy.

A call's audio travels on its media track as Opus: the relay decodes the caller's audio to
PCM16 24 kHz for the session and encodes the session's PCM output for the track
(relay/webrtc.py). So a media session's audio format stays ``audio/pcm``: a
``session.update`` that asks for another is refused (:func:`check_media_formats`), and a
format in an offer's or an ephemeral key's session is replaced (:func:`with_pcm_audio`).
"""

from __future__ import annotations

from typing import Any

from transceiver.protocol.errors import ClientError

PCM_24K: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
_DIRECTIONS = ("input", "output")
_BETA_FIELDS = ("input_audio_format", "output_audio_format")  # the beta flat shape


def check_media_formats(session: Any, where: str = "session") -> None:
    """Raise ``ClientError`` if ``session`` asks for an audio format other than PCM.

    ``session`` is a session configuration or a ``session.update`` body, whole or partial,
    in the GA shape (``audio.input.format``) or the beta flat one (``input_audio_format``),
    or (``where`` "response") a ``response.create``'s ``response``, whose output format
    would otherwise go to the track as PCM. Anything that is not such an object names no
    format, and passes.
    """
    if not isinstance(session, dict):
        return
    audio = _mapping(session.get("audio"))
    for direction in _DIRECTIONS:
        fmt = _mapping(_mapping(audio.get(direction)).get("format"))
        if fmt.get("type") not in (None, "audio/pcm"):  # no type: PCM, the default
            raise _error(f"{where}.audio.{direction}.format")
    for name in _BETA_FIELDS:
        if session.get(name) not in (None, "pcm16"):
            raise _error(f"{where}.{name}")


def with_pcm_audio(session: dict[str, Any]) -> dict[str, Any]:
    """``session`` (GA shape) with every audio format it names replaced by PCM 24 kHz."""
    audio = session.get("audio")
    if not isinstance(audio, dict):
        return session
    parts = {
        name: {**part, "format": dict(PCM_24K)}
        if name in _DIRECTIONS and isinstance(part, dict) and "format" in part
        else part
        for name, part in audio.items()
    }
    return {**session, "audio": parts}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _error(param: str) -> ClientError:
    return ClientError(
        "A WebRTC session's audio travels on its media track as Opus; its audio format "
        "stays 'audio/pcm'.",
        param=param,
    )
