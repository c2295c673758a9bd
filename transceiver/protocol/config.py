"""Session configuration: GA shapes, defaults, partial-merge updates (PROTOCOL.md section 6).

The effective session is kept as a plain GA dict; updates are merged into a copy
and the result is validated as a whole, so a rejected update changes nothing.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from transceiver.protocol.errors import ClientError

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Keep your answers short: they are spoken aloud."
)
# The issue asks for a 500 ms silence window by default (the SDK docstring's value);
# OpenAI's observed default is 200 ms, which cuts CPU-transcribed speech too eagerly.
DEFAULT_SILENCE_DURATION_MS = 500

AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
# Bytes per millisecond of each wire format (PCM16 24 kHz = 48, G.711 8 kHz = 8).
BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AudioFormat(_Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None

    @model_validator(mode="after")
    def _pcm_rate(self) -> AudioFormat:
        if self.type == "audio/pcm":
            self.rate = 24000
        return self

    @model_serializer(mode="wrap")
    def _drop_null_rate(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("rate") is None:
            data.pop("rate", None)
        return data


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    languages: list[str] | None = None
    prompt: str | None = None
    keywords: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"]
    strength: float | None = None


class ServerVad(_Strict):
    type: Literal["server_vad"]
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=10_000)
    silence_duration_ms: int = Field(default=DEFAULT_SILENCE_DURATION_MS, ge=0, le=10_000)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    create_response: bool = True
    interrupt_response: bool = True


class SemanticVad(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInput(_Strict):
    format: AudioFormat = AudioFormat()
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetection | None = ServerVad(type="server_vad")


class CustomVoice(_Strict):
    id: str  # SDK VoiceID: {"id": "voice_1234"}


class AudioOutput(_Strict):
    format: AudioFormat = AudioFormat()
    voice: str | CustomVoice = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=1.5)


class SessionAudio(_Strict):
    input: AudioInput = AudioInput()
    output: AudioOutput = AudioOutput()


class FunctionTool(_Strict):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpTool(_Open):
    type: Literal["mcp"]
    server_label: str


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]
ToolChoice = Literal["auto", "none", "required"] | dict[str, Any]
MaxTokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]


class _ReadOnly(_Strict):
    # Clients may send back a session object they received; these are ignored.
    object: str | None = None
    id: str | None = None
    expires_at: int | None = None
    client_secret: Any = None


def _audio_only() -> list[Literal["audio", "text"]]:
    return ["audio"]


class RealtimeSessionConfig(_ReadOnly):
    type: Literal["realtime"] = "realtime"
    model: str = "gpt-realtime"
    output_modalities: list[Literal["audio", "text"]] = Field(
        default_factory=_audio_only, min_length=1, max_length=1
    )
    instructions: str = DEFAULT_INSTRUCTIONS
    audio: SessionAudio = SessionAudio()
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    max_output_tokens: MaxTokens = "inf"
    tracing: Literal["auto"] | dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | dict[str, Any] = "auto"
    prompt: dict[str, Any] | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    reasoning: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # reasoning and parallel_tool_calls are absent, not null, unless set (section 6.1).
        data: dict[str, Any] = handler(self)
        for key in ("reasoning", "parallel_tool_calls"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TranscriptionAudio(_Strict):
    input: AudioInput = AudioInput()


class TranscriptionSessionConfig(_ReadOnly):
    type: Literal["transcription"] = "transcription"
    audio: TranscriptionAudio = TranscriptionAudio()
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


_READ_ONLY = ("object", "id", "expires_at", "client_secret")
# Objects merged field by field; anything deeper is replaced whole (defaults filled in).
_MERGED_PATHS = {(), ("audio",), ("audio", "input"), ("audio", "output")}


def _merge(base: dict[str, Any], update: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        sub = (*path, key)
        if sub in _MERGED_PATHS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _param(loc: tuple[int | str, ...], prefix: str, data: Any, error_type: str) -> str:
    """The JSON path of an error in ``data``.

    pydantic puts union member labels in ``loc`` (a discriminator tag such as
    ``server_vad``, or ``constrained-int``, ``literal['inf']``, ``str``...); only the
    parts that are places in the input (or a missing field, last) belong in ``param``.
    """
    parts = [prefix]
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (index == len(loc) - 1 and error_type == "missing"):
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).replace(".[", "[")


def validation_to_client_error(exc: ValidationError, prefix: str, data: Any) -> ClientError:
    first = exc.errors()[0]
    param = _param(tuple(first["loc"]), prefix, data, first["type"])
    if first["type"] == "extra_forbidden":
        return ClientError(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if first["type"] == "missing":
        return ClientError(
            f"Missing required parameter: '{param}'.",
            code="missing_required_parameter",
            param=param,
        )
    value = first.get("input")
    shown = value if isinstance(value, str | int | float | bool) or value is None else "…"
    return ClientError(
        f"Invalid value: '{shown}' for '{param}': {first['msg']}.",
        code="invalid_value",
        param=param,
    )


def default_session(kind: str, model: str | None) -> dict[str, Any]:
    if kind == "transcription":
        return TranscriptionSessionConfig().model_dump(mode="json", exclude=set(_READ_ONLY))
    config = RealtimeSessionConfig(model=model or "gpt-realtime")
    return config.model_dump(mode="json", exclude=set(_READ_ONLY))


def apply_session_update(current: dict[str, Any], update: Any) -> dict[str, Any]:
    """Return the new effective session, or raise ``ClientError`` (nothing changes)."""
    if not isinstance(update, dict):
        raise ClientError("'session' must be an object.", param="session")
    kind = current["type"]
    requested = update.get("type", kind)  # a missing type keeps the current one (section 6.1)
    if requested != kind:
        raise ClientError(
            f"Invalid value: '{requested}'. This is a {kind} session; "
            f"its type cannot change to '{requested}'.",
            param="session.type",
        )
    merged = _merge(current, {k: v for k, v in update.items() if k not in _READ_ONLY}, ())
    model_cls = TranscriptionSessionConfig if kind == "transcription" else RealtimeSessionConfig
    try:
        validated = model_cls.model_validate(merged)
    except ValidationError as exc:
        raise validation_to_client_error(exc, "session", merged) from None
    if kind == "realtime" and update.get("model") not in (None, current.get("model")):
        raise ClientError(
            "The model of a session cannot be changed.", code="invalid_value", param="session.model"
        )
    return validated.model_dump(mode="json", exclude=set(_READ_ONLY))


def validate_tools(tools: Any, prefix: str) -> list[dict[str, Any]]:
    class _Tools(_Strict):
        tools: list[Tool]

    try:
        parsed = _Tools.model_validate({"tools": tools})
    except ValidationError as exc:
        raise validation_to_client_error(exc, prefix.rsplit(".", 1)[0], {"tools": tools}) from None
    return [tool.model_dump(mode="json", exclude_none=True) for tool in parsed.tools]


def validate_audio_format(value: Any, param: str) -> dict[str, Any]:
    try:
        return AudioFormat.model_validate(value).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise validation_to_client_error(exc, param, value) from None


def validate_voice(value: Any, param: str) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    try:
        return CustomVoice.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        raise validation_to_client_error(exc, param, value) from None


def voice_name(voice: Any) -> str:
    """A voice as a string: responses and beta sessions have no custom voice object."""
    return voice if isinstance(voice, str) else str(voice["id"])


def format_type(fmt: dict[str, Any]) -> str:
    return str(fmt.get("type", "audio/pcm"))
