"""Session configuration: GA shapes, defaults, partial-merge updates.

A session keeps its configuration as a validated, frozen model (``RealtimeSessionConfig``
or ``TranscriptionSessionConfig``) and writes it out (``session_wire``) only in events.
An update is merged into the wire form of the current configuration and the result is
validated as a whole, so a rejected update changes nothing.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.contract import SessionKind
from transceiver.protocol.errors import ClientError, shown_value
from transceiver.protocol.nulls import drop_nulls
from transceiver.protocol.wire import check_depth

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Keep your answers short: they are spoken aloud."
)
# Server VAD defaults. The silence window is 500 ms, the openai SDK docstring's value;
# OpenAI's observed default is 200 ms, which cuts CPU-transcribed speech too eagerly.
DEFAULT_VAD_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_DURATION_MS = 500


class StrictModel(BaseModel):
    """Frozen, and an unknown field is an error (``unknown_parameter``).

    Strict types, as OpenAI's API has them: a string is not a number ("500" for
    ``silence_duration_ms``), a number is not a string, a bool is not a number, and a
    decimal is not an integer (500.0 for ``silence_duration_ms``; OpenAI answers "expected
    an integer, but got a decimal number instead", and ``response.create``'s
    ``max_output_tokens`` refuses it too, transceiver/protocol/requests.py). An integer is a
    number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class AudioFormat(StrictModel):
    # Not strict: a strict enum field takes only AudioFormatType members, not their values.
    type: AudioFormatType = Field(default=AudioFormatType.PCM, strict=False)
    rate: Literal[24000] | None = None

    @model_validator(mode="before")
    @classmethod
    def _pcm_rate(cls, data: Any) -> Any:
        # audio/pcm has one rate, which the session shows even when the client left it out.
        if isinstance(data, dict) and data.get("type", "audio/pcm") == "audio/pcm":
            if data.get("rate") is None:
                return {**data, "rate": AudioFormatType.PCM.sample_rate_hz}
        return data

    @property
    def bytes_per_ms(self) -> int:
        return self.type.bytes_per_ms

    @model_serializer(mode="wrap")
    def _drop_null_rate(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("rate") is None:
            data.pop("rate", None)
        return data


class Transcription(StrictModel):
    model: str | None = None
    language: str | None = None
    languages: list[str] | None = None
    prompt: str | None = None
    keywords: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class Tracing(StrictModel):
    """OpenAI's tracing configuration; here its names go on the session's turn log lines."""

    workflow_name: str | None = Field(default=None, max_length=256)
    group_id: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] | None = None


class NoiseReduction(StrictModel):
    type: Literal["near_field", "far_field"]
    # "Higher values apply more suppression. Defaults to 1" (models/noise.py: 0-1).
    strength: float | None = Field(default=None, ge=0.0, le=1.0)


class ServerVad(StrictModel):
    type: Literal["server_vad"]
    threshold: float = Field(default=DEFAULT_VAD_THRESHOLD, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=DEFAULT_PREFIX_PADDING_MS, ge=0, le=10_000)
    silence_duration_ms: int = Field(default=DEFAULT_SILENCE_DURATION_MS, ge=0, le=10_000)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    create_response: bool = True
    interrupt_response: bool = True


# semantic_vad: "eagerness ... low will let the user take their time to speak ... auto is
# the default and is equivalent to medium. low, medium, and high have max timeouts of 8s,
# 4s, and 2s respectively" (https://platform.openai.com/docs/guides/realtime-vad). An
# end-of-turn model ends the turn at a pause when it judges the user finished
# (transceiver/turns.py); otherwise the turn ends after this much silence.
SEMANTIC_VAD_MAX_WAIT_MS = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}


class SemanticVad(StrictModel):
    """Semantic VAD: the speech detector runs with the server VAD's threshold and prefix
    padding, an end-of-turn model decides at each pause whether the turn has ended
    (transceiver/turns.py), and the eagerness's max timeout is the silence that ends a
    turn the model keeps calling unfinished. Those parameters are these properties, not
    fields (the GA ``semantic_vad`` object has none of them, nor an idle timeout)."""

    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    @property
    def threshold(self) -> float:
        return DEFAULT_VAD_THRESHOLD

    @property
    def prefix_padding_ms(self) -> int:
        return DEFAULT_PREFIX_PADDING_MS

    @property
    def silence_duration_ms(self) -> int:
        """The longest silence before the turn ends: the eagerness's max timeout."""
        return SEMANTIC_VAD_MAX_WAIT_MS[self.eagerness]

    @property
    def idle_timeout_ms(self) -> int | None:
        return None


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInput(StrictModel):
    format: AudioFormat = AudioFormat()
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetection | None = ServerVad(type="server_vad")


class CustomVoice(StrictModel):
    id: str  # SDK VoiceID: {"id": "voice_1234"}


class AudioOutput(StrictModel):
    format: AudioFormat = AudioFormat()
    voice: str | CustomVoice = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=1.5)


class SessionAudio(StrictModel):
    input: AudioInput = AudioInput()
    output: AudioOutput = AudioOutput()


class FunctionTool(StrictModel):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Reasoning(StrictModel):
    """``reasoning`` (the SDK's ``RealtimeReasoning``): validated so that a bad effort is an
    error, not an echo; the mock and local models do not reason (requests.py says so)."""

    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class McpTool(_Open):
    type: Literal["mcp"]
    server_label: str


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(StrictModel):
    """Force a call of one function (the SDK's ``ToolChoiceFunction``)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class ToolChoiceMcp(StrictModel):
    """Force a call of a tool of one MCP server (the SDK's ``ToolChoiceMcp``)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    name: str | None = None

    @model_serializer(mode="wrap")
    def _drop_null_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("name") is None:
            data.pop("name", None)
        return data


def _tool_choice_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "mode"
    if isinstance(value, ToolChoiceFunction | ToolChoiceMcp):
        return value.type
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if kind in ("function", "mcp") else None


# "auto", "none", "required", or a function or MCP tool to call (RealtimeToolChoiceConfig).
ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("mode")]
    | Annotated[ToolChoiceFunction, Tag("function")]
    | Annotated[ToolChoiceMcp, Tag("mcp")],
    Discriminator(
        _tool_choice_kind,
        custom_error_type="invalid_tool_choice",
        custom_error_message="expected 'auto', 'none', 'required', {\"type\": \"function\", "
        '"name": ...} or {"type": "mcp", "server_label": ...}',
    ),
]
MaxTokens = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]


class TokenLimits(StrictModel):
    post_instructions: int | None = Field(default=None, ge=1)


class RetentionRatio(StrictModel):
    """``truncation: {"type": "retention_ratio", ...}``: "Fraction of post-instruction
    conversation tokens to retain (0.0 - 1.0) when the conversation exceeds the input token
    limit" (RealtimeTruncationRetentionRatio)."""

    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0.0, le=1.0)
    token_limits: TokenLimits | None = None


def _truncation_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "mode"
    # The tags are not field names: an error's path skips them (_param).
    if isinstance(value, RetentionRatio):
        return "ratio"
    kind = value.get("type") if isinstance(value, dict) else None
    return "ratio" if kind == "retention_ratio" else None


Truncation = Annotated[
    Annotated[Literal["auto", "disabled"], Tag("mode")] | Annotated[RetentionRatio, Tag("ratio")],
    Discriminator(
        _truncation_kind,
        custom_error_type="invalid_truncation",
        custom_error_message="expected 'auto', 'disabled' or "
        '{"type": "retention_ratio", "retention_ratio": ...}',
    ),
]


def check_tool_choice(choice: ToolChoice, tools: list[Any], param: str) -> None:
    """A forced tool must be one of ``tools`` (``ClientError`` otherwise)."""
    if isinstance(choice, ToolChoiceFunction):
        names = [t.name for t in tools if isinstance(t, FunctionTool)]
        if choice.name not in names:
            raise ClientError(
                f"Invalid value: '{shown_value(choice.name)}'. Tool choice 'function' names "
                "no function in 'tools'.",
                param=f"{param}.name",
            )
    elif isinstance(choice, ToolChoiceMcp):
        if not any(isinstance(t, McpTool) and t.server_label == choice.server_label for t in tools):
            raise ClientError(
                f"Invalid value: '{shown_value(choice.server_label)}'. Tool choice 'mcp' "
                "names no MCP server in 'tools'.",
                param=f"{param}.server_label",
            )


class InputText(StrictModel):
    type: Literal["input_text"]
    text: str


class Prompt(StrictModel):
    """A prompt template and its variables (the SDK's ``ResponsePrompt``), resolved from the
    server's prompt library (transceiver/prompts.py); text variables only."""

    id: str = Field(min_length=1, max_length=256)
    version: str | None = Field(default=None, min_length=1, max_length=64)
    variables: dict[str, str | InputText] | None = Field(default=None, max_length=64)

    def values(self) -> dict[str, str]:
        return {
            name: value if isinstance(value, str) else value.text
            for name, value in (self.variables or {}).items()
        }


class _ReadOnly(StrictModel):
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
    tracing: Literal["auto"] | Tracing | None = None
    truncation: Truncation = "auto"
    prompt: Prompt | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # reasoning and parallel_tool_calls appear in session objects only once set.
        data: dict[str, Any] = handler(self)
        for key in ("reasoning", "parallel_tool_calls"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TranscriptionAudio(StrictModel):
    input: AudioInput = AudioInput()


class TranscriptionSessionConfig(_ReadOnly):
    type: Literal["transcription"] = "transcription"
    audio: TranscriptionAudio = TranscriptionAudio()
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


SessionConfig = RealtimeSessionConfig | TranscriptionSessionConfig

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


def error_to_client_error(error: ErrorDetails, prefix: str, data: Any) -> ClientError:
    """One pydantic error in ``data`` (found at ``prefix``) as the client's ``error``."""
    param = _param(tuple(error["loc"]), prefix, data, error["type"])
    if error["type"] == "extra_forbidden":
        return ClientError(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if error["type"] == "missing":
        return ClientError(
            f"Missing required parameter: '{param}'.",
            code="missing_required_parameter",
            param=param,
        )
    return ClientError(
        f"Invalid value: '{shown_value(error.get('input'))}' for '{param}': {error['msg']}.",
        code="invalid_value",
        param=param,
    )


def validation_to_client_error(exc: ValidationError, prefix: str, data: Any) -> ClientError:
    return error_to_client_error(exc.errors()[0], prefix, data)


def default_config(kind: SessionKind, model: Any) -> SessionConfig:
    """The default configuration of a session (``ClientError`` if ``model`` is not a
    string: it comes from a client's ``session.model``)."""
    if kind is SessionKind.TRANSCRIPTION:
        return TranscriptionSessionConfig()
    try:  # only a missing or empty model is the default one: 0, [] or false are errors
        return RealtimeSessionConfig(model="gpt-realtime" if model in (None, "") else model)
    except ValidationError as exc:
        raise validation_to_client_error(exc, "session", {"model": model}) from None


def session_wire(config: SessionConfig) -> dict[str, Any]:
    """The configuration as session objects show it (without their read-only fields)."""
    return config.model_dump(mode="json", exclude=set(_READ_ONLY))


def apply_session_update(current: SessionConfig, update: Any) -> SessionConfig:
    """The configuration after ``update``, or ``ClientError`` (nothing changes)."""
    return _updated(session_wire(current), update)


def _updated(current: dict[str, Any], update: Any) -> SessionConfig:
    if not isinstance(update, dict):
        raise ClientError("'session' must be an object.", param="session")
    # Before anything recurses over it (_merge's deepcopy, pydantic): a REST body or a
    # call's session reaches here without a WebSocket event's depth check.
    check_depth(update, "'session'", code="invalid_value", param="session")
    kind = current["type"]
    # A missing type keeps the current one; another one is refused.
    requested = kind if update.get("type") is None else update["type"]
    if requested != kind:
        raise ClientError(
            f"Invalid value: '{shown_value(requested)}'. This is a {kind} session; "
            f"its type cannot change to '{shown_value(requested)}'.",
            param="session.type",
        )
    given = drop_nulls({k: v for k, v in update.items() if k not in _READ_ONLY})
    merged = _merge(current, given, ())
    model_cls: type[SessionConfig] = (
        TranscriptionSessionConfig if kind == "transcription" else RealtimeSessionConfig
    )
    try:
        validated = model_cls.model_validate(merged)
    except ValidationError as exc:
        raise validation_to_client_error(exc, "session", merged) from None
    if kind == "realtime" and update.get("model") not in (None, current.get("model")):
        raise ClientError(
            "The model of a session cannot be changed.", code="invalid_value", param="session.model"
        )
    if isinstance(validated, RealtimeSessionConfig):
        check_tool_choice(validated.tool_choice, validated.tools, "session.tool_choice")
    return validated


def voice_name(voice: str | CustomVoice | dict[str, Any]) -> str:
    """A voice as a string: responses and beta sessions have no custom voice object."""
    if isinstance(voice, str):
        return voice
    return voice.id if isinstance(voice, CustomVoice) else str(voice["id"])
