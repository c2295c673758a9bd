"""The operator's policy for proxied sessions: models, instructions, the initial update.

Also how client frames are read: an audio append passes unparsed, everything else is parsed,
so that no frame can slip a ``session.update`` past the policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.errors import ClientError
from transceiver.settings import TransceiverSettings

_APPEND_PREFIX = '{"type":"input_audio_buffer.append"'


def client_event(text: str) -> dict[str, Any] | None:
    """A client frame as an event, or ``None`` for one forwarded as it is.

    Audio appends (nearly every frame) are recognised by their prefix and not parsed; the
    single ``"type"`` check keeps a frame with a second ``type`` key (JSON parsers keep the
    last) from passing as one. Frames that are not JSON objects go upstream unchanged, and
    the upstream answers them with its own error.
    """
    if text.startswith(_APPEND_PREFIX) and text.count('"type"') == 1:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


@dataclass
class ProxyPolicy:
    allowed_models: frozenset[str] = frozenset()
    model_map: dict[str, str] = field(default_factory=dict)
    instructions_prefix: str | None = None

    @classmethod
    def from_settings(cls, settings: TransceiverSettings) -> ProxyPolicy:
        mapping: dict[str, str] = {}
        for entry in settings.model_map:
            client, sep, upstream = entry.partition("=")
            if not sep or not client.strip() or not upstream.strip():
                raise ValueError(f"--model-map entries are CLIENT=UPSTREAM, not {entry!r}")
            mapping[client.strip()] = upstream.strip()
        return cls(frozenset(settings.allowed_models), mapping, settings.instructions_prefix)

    def upstream_model(self, model: str) -> str:
        if self.allowed_models and model not in self.allowed_models:
            raise ClientError(
                f"Invalid value: '{model}'. Supported values are: "
                + ", ".join(f"'{m}'" for m in sorted(self.allowed_models))
                + ".",
                code="invalid_value",
                param="model",
            )
        return self.model_map.get(model, model)

    def model_ids(self) -> list[str]:
        return sorted(self.allowed_models or self.model_map) or ["gpt-realtime"]

    def instructions(self, client: str | None) -> str | None:
        if not self.instructions_prefix:
            return client
        return self.instructions_prefix + ("\n\n" + client if client else "")

    def rewrite_client_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event as sent upstream, or ``None`` when it passes unchanged."""
        etype = event.get("type")
        if etype == "session.update" and isinstance(event.get("session"), dict):
            session = dict(event["session"])
            changed = False
            if isinstance(session.get("model"), str):
                session["model"] = self.upstream_model(session["model"])
                changed = True
            if self.instructions_prefix and isinstance(session.get("instructions"), str):
                session["instructions"] = self.instructions(session["instructions"])
                changed = True
            return {**event, "session": session} if changed else None
        if (
            etype == "response.create"
            and self.instructions_prefix
            and isinstance(event.get("response"), dict)
            and isinstance(event["response"].get("instructions"), str)
        ):
            response = dict(event["response"])
            response["instructions"] = self.instructions(response["instructions"])
            return {**event, "response": response}
        return None


_BETA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def session_update(session: dict[str, Any], beta: bool) -> dict[str, Any]:
    """A GA session configuration (as validated by the relay) as a ``session.update`` body.

    Beta upstreams take the flat beta shape; only the fields a key or an offer can carry
    are translated.
    """
    session = {k: v for k, v in session.items() if k not in ("model", "object", "id")}
    if not beta:
        return session
    flat: dict[str, Any] = {}
    for name in ("instructions", "tools", "tool_choice", "include"):
        if name in session:
            flat[name] = session[name]
    if "output_modalities" in session:
        flat["modalities"] = (
            ["audio", "text"] if session["output_modalities"] == ["audio"] else ["text"]
        )
    if "max_output_tokens" in session:
        flat["max_response_output_tokens"] = session["max_output_tokens"]
    audio = session.get("audio") or {}
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    if "format" in audio_in:
        flat["input_audio_format"] = _BETA_FORMATS.get(audio_in["format"].get("type"), "pcm16")
    if "turn_detection" in audio_in:
        flat["turn_detection"] = audio_in["turn_detection"]
    if "transcription" in audio_in:
        flat["input_audio_transcription"] = audio_in["transcription"]
    if "noise_reduction" in audio_in:
        flat["input_audio_noise_reduction"] = audio_in["noise_reduction"]
    if "format" in audio_out:
        flat["output_audio_format"] = _BETA_FORMATS.get(audio_out["format"].get("type"), "pcm16")
    if "voice" in audio_out:
        flat["voice"] = audio_out["voice"]
    if "speed" in audio_out:
        flat["speed"] = audio_out["speed"]
    return flat


def check_media_formats(event: dict[str, Any]) -> None:
    """A WebRTC call's audio is Opus on its track, played as PCM 24 kHz: a ``session.update``
    that asks for another format (GA or beta shape) is refused."""
    session = event.get("session")
    if event.get("type") != "session.update" or not isinstance(session, dict):
        return
    audio = _mapping(session.get("audio"))
    for direction in ("input", "output"):
        fmt = _mapping(_mapping(audio.get(direction)).get("format"))
        if fmt.get("type") not in (None, "audio/pcm"):
            raise _media_format_error(f"session.audio.{direction}.format")
    for name in ("input_audio_format", "output_audio_format"):
        if session.get(name) not in (None, "pcm16"):
            raise _media_format_error(f"session.{name}")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _media_format_error(param: str) -> ClientError:
    return ClientError(
        "A WebRTC session's audio travels on its media track as Opus; its audio format "
        "stays 'audio/pcm'.",
        param=param,
    )
