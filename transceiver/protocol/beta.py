"""The beta dialect as a shim over GA: GA is the one model of a session, beta a translation.

Inbound beta events (``OpenAI-Beta: realtime=v1``) are rewritten to GA before the session
sees them; outbound GA events are rewritten to the beta names (``response.audio.delta``,
``conversation.item.created``...) and the beta flat session shape (``input_audio_format``,
``modalities``...), as OpenAI's beta Realtime API reference has them.
"""

from __future__ import annotations

from typing import Any

from transceiver.protocol.config import voice_name
from transceiver.protocol.errors import ClientError, shown_value

_FORMAT_TO_GA: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_FORMAT_TO_BETA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}

_RENAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}
_DROPPED = {"conversation.item.done", "input_audio_buffer.timeout_triggered"}
_CONTENT_TO_BETA = {"output_text": "text", "output_audio": "audio"}
_CONTENT_TO_GA = {"text": "output_text", "audio": "output_audio"}
DEFAULT_TEMPERATURE = 0.8


def _temperature(value: Any, param: str) -> float | None:
    """A beta ``temperature`` (null: not given); ``ClientError`` when out of range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.6 <= value <= 1.2:
        raise ClientError(
            f"Invalid value: '{shown_value(value)}'. Expected a number from 0.6 to 1.2.",
            param=param,
        )
    return float(value)


def _format_to_ga(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, str) or value not in _FORMAT_TO_GA:
        raise ClientError(
            f"Invalid value: '{shown_value(value)}'. Supported values are: 'pcm16', "
            "'g711_ulaw', and "
            "'g711_alaw'.",
            param=param,
        )
    return dict(_FORMAT_TO_GA[value])


def _asks_for_audio(value: Any, param: str) -> bool:
    """Whether a beta ``modalities`` (``["text"]`` or ``["audio", "text"]`` in the beta
    reference: a session's or a response's) asks for audio replies; ``ClientError`` if it
    is not such a list."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, str) and m in ("audio", "text") for m in value)
    ):
        raise ClientError(
            f"Invalid value: '{shown_value(value)}'. 'modalities' must be a non-empty array "
            "of 'text' and 'audio'.",
            param=param,
        )
    return "audio" in value


class BetaDialect:
    """Per-session translation state (beta's ``temperature`` has no GA field)."""

    def __init__(self) -> None:
        self.temperature = DEFAULT_TEMPERATURE  # as session objects show it
        self._temperature_set = False  # the LLM gets a temperature the client set
        self._response_temperature: float | None = None

    @property
    def session_temperature(self) -> float | None:
        """The session's temperature, if the client set one (else the LLM's own)."""
        return self.temperature if self._temperature_set else None

    def response_temperature(self) -> float | None:
        """The temperature of the response being created: the last ``response.create``'s,
        else the session's."""
        pending, self._response_temperature = self._response_temperature, None
        return pending if pending is not None else self.session_temperature

    # -- client -> GA --------------------------------------------------------------

    def session_to_ga(self, session: Any, kind: str) -> Any:
        if not isinstance(session, dict):
            return session
        flat = dict(session)
        out: dict[str, Any] = {"type": kind}
        audio_in: dict[str, Any] = {}
        audio_out: dict[str, Any] = {}
        if flat.get("modalities", None) is None:  # left out or null: unchanged
            flat.pop("modalities", None)
        else:
            audio = _asks_for_audio(flat.pop("modalities"), "session.modalities")
            if kind == "realtime":
                out["output_modalities"] = ["audio"] if audio else ["text"]
        temperature = _temperature(flat.pop("temperature", None), "session.temperature")
        if temperature is not None:
            self.temperature = temperature
            self._temperature_set = True
        if "max_response_output_tokens" in flat:
            out["max_output_tokens"] = flat.pop("max_response_output_tokens")
        # A format left out or null: unchanged (as GA's null).
        if (input_format := flat.pop("input_audio_format", None)) is not None:
            audio_in["format"] = _format_to_ga(input_format, "session.input_audio_format")
        if (output_format := flat.pop("output_audio_format", None)) is not None:
            audio_out["format"] = _format_to_ga(output_format, "session.output_audio_format")
        for beta_key, ga_key in (
            ("input_audio_transcription", "transcription"),
            ("input_audio_noise_reduction", "noise_reduction"),
            ("turn_detection", "turn_detection"),
        ):
            if beta_key in flat:
                audio_in[ga_key] = flat.pop(beta_key)
        for key in ("voice", "speed"):
            if key in flat:
                audio_out[key] = flat.pop(key)
        flat.pop("client_secret", None)
        if "tool_choice" in flat:
            flat["tool_choice"] = _tool_choice_to_ga(flat["tool_choice"])
        out.update(flat)
        if audio_in or audio_out:
            out["audio"] = {}
            if audio_in:
                out["audio"]["input"] = audio_in
            if audio_out:
                out["audio"]["output"] = audio_out
        return out

    def response_to_ga(self, params: Any) -> Any:
        if not isinstance(params, dict):
            return params
        params = dict(params)
        modalities = params.pop("modalities", None)
        if modalities is not None:  # left out or null: the session's
            audio = _asks_for_audio(modalities, "response.modalities")
            params["output_modalities"] = ["audio"] if audio else ["text"]
        self._response_temperature = _temperature(
            params.pop("temperature", None), "response.temperature"
        )
        if "max_response_output_tokens" in params:
            params["max_output_tokens"] = params.pop("max_response_output_tokens")
        if "tool_choice" in params:
            params["tool_choice"] = _tool_choice_to_ga(params["tool_choice"])
        output: dict[str, Any] = {}
        if "voice" in params:
            output["voice"] = params.pop("voice")
        if (output_format := params.pop("output_audio_format", None)) is not None:
            output["format"] = _format_to_ga(output_format, "response.output_audio_format")
        if output:
            params["audio"] = {"output": output}
        if isinstance(params.get("input"), list):
            params["input"] = [_item_to_ga(item) for item in params["input"]]
        return params

    def client_event_to_ga(self, event: dict[str, Any], kind: str) -> dict[str, Any]:
        etype = event.get("type")
        if etype == "transcription_session.update":
            return {
                **event,
                "type": "session.update",
                "session": self.session_to_ga(event.get("session"), "transcription"),
            }
        if etype == "session.update":
            return {**event, "session": self.session_to_ga(event.get("session"), kind)}
        if etype == "response.create":
            self._response_temperature = None  # a refused response.create's goes too
            if "response" in event:
                return {**event, "response": self.response_to_ga(event["response"])}
        if etype == "conversation.item.create" and "item" in event:
            return {**event, "item": _item_to_ga(event["item"])}
        return event

    # -- GA -> client ------------------------------------------------------------------

    def session_to_beta(self, session: dict[str, Any], kind: str) -> dict[str, Any]:
        """A whole GA session object (``session.created``, ``session.updated``) as beta."""
        flat: dict[str, Any] = {"object": session.get("object"), "id": session.get("id")}
        if kind == "realtime":
            flat.update(
                model=session["model"],
                temperature=self.temperature,
                tracing=session["tracing"],
                truncation=session["truncation"],
                prompt=session["prompt"],
            )
        flat.update(session_fields_to_beta(session))
        if kind != "realtime":
            flat["modalities"] = ["text"]
        flat.update(
            expires_at=session.get("expires_at"),
            client_secret=None,
            include=session.get("include"),
        )
        return flat

    def _response_to_beta(self, response: dict[str, Any]) -> dict[str, Any]:
        out = dict(response)
        modalities = out.pop("output_modalities", ["audio"])
        audio = out.pop("audio", {}).get("output", {})
        out["modalities"] = ["audio", "text"] if modalities == ["audio"] else ["text"]
        out["voice"] = audio.get("voice")
        out["output_audio_format"] = _FORMAT_TO_BETA.get(
            audio.get("format", {}).get("type", "audio/pcm"), "pcm16"
        )
        out["temperature"] = self.temperature
        out["output"] = [_item_to_beta(item) for item in out.get("output", [])]
        return out

    def server_event_to_beta(self, event: dict[str, Any], kind: str) -> dict[str, Any] | None:
        etype = event["type"]
        if etype in _DROPPED:
            return None
        if etype in ("session.created", "session.updated"):
            if kind == "transcription":
                etype = "transcription_session." + etype.split(".")[1]
            return {**event, "type": etype, "session": self.session_to_beta(event["session"], kind)}
        event = {**event, "type": _RENAMES.get(etype, etype)}
        if "item" in event:
            event["item"] = _item_to_beta(event["item"])
        if "response" in event:
            event["response"] = self._response_to_beta(event["response"])
        if etype == "conversation.item.input_audio_transcription.completed":
            event.pop("languages", None)
        return event


def session_fields_to_beta(session: dict[str, Any]) -> dict[str, Any]:
    """The GA session fields present in ``session``, whole or partial, in the beta flat shape.

    The one GA -> beta session mapping: for the session objects a beta client is shown, and
    for the ``session.update`` body the proxy sends a beta upstream (transceiver/proxy).
    Fields the beta shape has no place for are left out.
    """
    flat: dict[str, Any] = {}
    for name in ("instructions", "tools", "include"):
        if name in session:
            flat[name] = session[name]
    if "tool_choice" in session:
        flat["tool_choice"] = _tool_choice_to_beta(session["tool_choice"])
    if "output_modalities" in session:
        audio_reply = session["output_modalities"] == ["audio"]
        flat["modalities"] = ["audio", "text"] if audio_reply else ["text"]
    if "max_output_tokens" in session:
        flat["max_response_output_tokens"] = session["max_output_tokens"]
    audio = _mapping(session.get("audio"))
    audio_in, audio_out = _mapping(audio.get("input")), _mapping(audio.get("output"))
    if "format" in audio_in:
        flat["input_audio_format"] = _format_to_beta(audio_in["format"])
    for ga_key, beta_key in _AUDIO_INPUT_TO_BETA:
        if ga_key in audio_in:
            flat[beta_key] = audio_in[ga_key]
    if "format" in audio_out:
        flat["output_audio_format"] = _format_to_beta(audio_out["format"])
    if "voice" in audio_out:
        flat["voice"] = voice_name(audio_out["voice"])
    if "speed" in audio_out:
        flat["speed"] = audio_out["speed"]
    return flat


_AUDIO_INPUT_TO_BETA = (
    ("turn_detection", "turn_detection"),
    ("transcription", "input_audio_transcription"),
    ("noise_reduction", "input_audio_noise_reduction"),
)


# A beta tool_choice is a string: "auto", "none", "required", or a function's name.
_TOOL_CHOICE_MODES = ("auto", "none", "required")


def _tool_choice_to_ga(value: Any) -> Any:
    if isinstance(value, str) and value not in _TOOL_CHOICE_MODES:
        return {"type": "function", "name": value}
    return value


def _tool_choice_to_beta(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        return value.get("name")
    return value


def _format_to_beta(fmt: Any) -> str:
    return _FORMAT_TO_BETA.get(str(_mapping(fmt).get("type", "audio/pcm")), "pcm16")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _item_to_beta(item: dict[str, Any]) -> dict[str, Any]:
    out = {"object": "realtime.item", **item}
    if "content" in out:
        out["content"] = [
            {**part, "type": _CONTENT_TO_BETA.get(part.get("type"), part.get("type"))}
            for part in out["content"]
        ]
    return out


def _item_to_ga(item: Any) -> Any:
    if not isinstance(item, dict) or item.get("role") != "assistant":
        return item
    content = item.get("content")
    if not isinstance(content, list):
        return item
    return {
        **item,
        "content": [
            {**part, "type": _CONTENT_TO_GA.get(part["type"], part["type"])}
            if isinstance(part, dict) and isinstance(part.get("type"), str)
            else part
            for part in content
        ],
    }
