"""``response.create`` parameters: per-response overrides of the session.

https://platform.openai.com/docs/api-reference/realtime-client-events/response/create
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.config import (
    DEFAULT_INSTRUCTIONS,
    AudioFormat,
    CustomVoice,
    Prompt,
    RealtimeSessionConfig,
    Reasoning,
    StrictModel,
    Tool,
    ToolChoice,
    check_tool_choice,
    error_to_client_error,
)
from transceiver.protocol.conversation import Conversation, StoredItem
from transceiver.protocol.effects import ContextItem, ResponseRequest
from transceiver.protocol.errors import ClientError, shown_value
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.input_audio import INPUT_AUDIO_MAX_MS, check_audio_duration
from transceiver.protocol.items import item_text, normalize_item
from transceiver.protocol.nulls import drop_nulls
from transceiver.protocol.responses import Response

# An explicit null is "not given", as OpenAI treats it, in these objects of the response.
_RESPONSE_OBJECTS = {(), ("audio",), ("audio", "output"), ("audio", "output", "format")}


class PromptResolver(Protocol):
    """The server's prompt library (transceiver/prompts.py)."""

    def resolve(self, prompt: Prompt, param: str) -> str:
        """The prompt's text with its variables filled in; ``ClientError`` for an unknown
        id or version, or a missing variable."""
        ...


def prompt_instructions(
    prompt: Prompt | None, instructions: str, prompts: PromptResolver | None, param: str
) -> str:
    """The instructions with ``prompt`` resolved: the prompt's text, then the client's own
    instructions if it set any (not the default ones)."""
    if prompt is None:
        return instructions
    if prompts is None:
        raise ClientError(
            "'prompt' needs a prompt library, and this server has none: start the "
            "transceiver with --prompts DIR (one file per prompt id).",
            param=param,
        )
    text = prompts.resolve(prompt, param)
    if instructions and instructions != DEFAULT_INSTRUCTIONS:
        return f"{text}\n\n{instructions}"
    return text


def _one_metadata_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "invalid_metadata",
            "metadata holds at most 16 string pairs (keys up to 64 characters, values up to 512)",
        ) from None


Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ],
    Field(max_length=16),
    WrapValidator(_one_metadata_error),  # one error, for the whole object
]
# Unlike the session's, no bool or float passes for an integer here.
ResponseMaxTokens = Annotated[int, Field(strict=True, ge=1, le=4096)] | Literal["inf"]
Modalities = Annotated[list[Literal["audio", "text"]], Field(min_length=1, max_length=1)]


class ResponseAudioOutput(StrictModel):
    format: AudioFormat | None = None
    voice: str | CustomVoice | None = None


class ResponseAudio(StrictModel):
    output: ResponseAudioOutput = ResponseAudioOutput()


class ResponseParams(StrictModel):
    """The ``response`` object of ``response.create``; a field left out or null takes the
    session's value."""

    conversation: str = "auto"  # "auto", "none", or the default conversation's id
    input: list[Any] | None = None  # left out: the whole conversation
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_modalities: Modalities | None = None
    audio: ResponseAudio = ResponseAudio()
    max_output_tokens: ResponseMaxTokens | None = None
    metadata: Metadata | None = None
    prompt: Prompt | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


def parse_response_params(params: Any, conversation_id: str) -> ResponseParams:
    """``response.create``'s ``response`` (``None``: left out), or ``ClientError``."""
    if params is None:
        return ResponseParams()
    if not isinstance(params, dict):
        raise ClientError("'response' must be an object.", param="response")
    params = drop_nulls(params, _RESPONSE_OBJECTS, set())
    try:
        parsed = ResponseParams.model_validate(params)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown parameter is named before any bad value.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise error_to_client_error(first, "response", params) from None
    if parsed.conversation not in ("auto", "none", conversation_id):
        raise ClientError(
            f"Invalid value: '{shown_value(parsed.conversation)}'. Supported values are: "
            "'auto' and 'none'.",
            param="response.conversation",
        )
    return parsed


def _stored_context(stored: StoredItem) -> ContextItem:
    audio = stored.audio_bytes() if stored.audio_format else None
    return ContextItem(dict(stored.item), audio, stored.audio_format)


def _context(
    raw_input: list[Any] | None,
    conversation: Conversation,
    ids: IdFactory,
    input_audio: tuple[AudioFormatType, int],
) -> list[ContextItem]:
    """The items a response reads: the conversation's, or ``response.input``'s, whose
    audio is in the session's input format (as a created item's) and, an item, at most
    the given milliseconds."""
    if raw_input is None:
        return [_stored_context(stored) for stored in conversation.items()]
    input_format, max_item_ms = input_audio
    context = []
    for index, raw in enumerate(raw_input):
        param = f"response.input[{index}]"
        if isinstance(raw, dict) and raw.get("type") == "item_reference":
            context.append(_stored_context(conversation.get(raw.get("id"), f"{param}.id")))
            continue
        item, audio = normalize_item(raw, param)
        item.setdefault("id", ids.new("item"))
        if audio is not None:
            audio_ms = input_format.duration_ms(len(audio))
            what = "One conversation item"
            check_audio_duration(audio_ms, max_item_ms, param=f"{param}.content", what=what)
        context.append(ContextItem(item, audio, input_format if audio is not None else None))
    return context


def _tools(parsed: ResponseParams, config: RealtimeSessionConfig) -> list[dict[str, Any]]:
    if parsed.tools is not None:
        return [tool.model_dump(mode="json", exclude_none=True) for tool in parsed.tools]
    # The session's tools as session objects show them.
    return [tool.model_dump(mode="json") for tool in config.tools]


def check_session_prompt(config: Any, prompts: PromptResolver | None) -> None:
    """A session's ``prompt`` must resolve (``ClientError`` otherwise)."""
    if isinstance(config, RealtimeSessionConfig) and config.prompt is not None:
        prompt_instructions(config.prompt, "", prompts, "session.prompt")


def _tool_choice(parsed: ResponseParams, config: RealtimeSessionConfig) -> str | dict[str, Any]:
    """The response's tool choice, checked against the response's tools."""
    choice = config.tool_choice if parsed.tool_choice is None else parsed.tool_choice
    if parsed.tools is not None or parsed.tool_choice is not None:
        tools = config.tools if parsed.tools is None else parsed.tools
        check_tool_choice(choice, tools, "response.tool_choice")
    return choice if isinstance(choice, str) else choice.model_dump(mode="json")


def _instructions(
    parsed: ResponseParams, config: RealtimeSessionConfig, prompts: PromptResolver | None
) -> str:
    instructions = config.instructions if parsed.instructions is None else parsed.instructions
    if parsed.prompt is not None:
        return prompt_instructions(parsed.prompt, instructions, prompts, "response.prompt")
    return prompt_instructions(config.prompt, instructions, prompts, "session.prompt")


def _refuse_reasoning(parsed: ResponseParams, config: RealtimeSessionConfig) -> None:
    """A reasoning effort has no effect on these models: the response is refused, saying so
    (the openai backend passes ``reasoning`` to OpenAI and never gets here)."""
    response_effort = parsed.reasoning.effort if parsed.reasoning is not None else None
    session_effort = config.reasoning.effort if config.reasoning is not None else None
    if response_effort is None and session_effort is None:
        return
    param = "response.reasoning.effort" if response_effort is not None else "session.reasoning"
    raise ClientError(
        "Reasoning effort is not supported: this server's mock and local models do not "
        "reason. Leave 'reasoning' out (or set it to null), or use the openai backend.",
        param=param,
    )


def build_response(
    params: Any,
    config: RealtimeSessionConfig,
    conversation: Conversation,
    ids: IdFactory,
    *,
    prompts: PromptResolver | None = None,
    temperature: float | None = None,
    input_audio: tuple[AudioFormatType, int] = (AudioFormatType.PCM, INPUT_AUDIO_MAX_MS),
) -> tuple[Response, ResponseRequest]:
    """Validate ``response.create``'s ``response`` against the session; raise ``ClientError``.

    ``prompts`` resolves a ``prompt`` into the instructions; ``temperature`` is the beta
    dialect's (``None``: the backend's own); ``input_audio``: the session's input format
    and the most audio one item may hold, for ``response.input``'s items."""
    parsed = parse_response_params(params, conversation.id)
    in_conversation = parsed.conversation != "none"
    output = parsed.audio.output
    fmt = output.format if output.format is not None else config.audio.output.format
    voice = output.voice if output.voice is not None else config.audio.output.voice
    modalities = (
        config.output_modalities if parsed.output_modalities is None else parsed.output_modalities
    )
    _refuse_reasoning(parsed, config)
    instructions = _instructions(parsed, config, prompts)
    max_tokens = (
        config.max_output_tokens if parsed.max_output_tokens is None else parsed.max_output_tokens
    )
    metadata = dict(parsed.metadata) if parsed.metadata is not None else None
    tool_choice = _tool_choice(parsed, config)
    context = _context(parsed.input, conversation, ids, input_audio)
    input_tokens = (len(instructions) + sum(len(item_text(c.item)) for c in context) + 3) // 4
    resp = Response(
        id=ids.new("resp"),
        in_conversation=in_conversation,
        conversation=conversation,
        output_modalities=list(modalities),
        output_format=fmt,
        voice=voice,
        max_output_tokens=max_tokens,
        metadata=metadata,
        input_tokens=input_tokens,
    )
    truncation = config.truncation
    request = ResponseRequest(
        response_id=resp.id,
        in_conversation=in_conversation,
        context=tuple(context),
        instructions=instructions,
        tools=tuple(_tools(parsed, config)),
        tool_choice=tool_choice,
        output_modalities=tuple(modalities),
        output_format=fmt.type,
        voice=voice if isinstance(voice, str) else voice.model_dump(mode="json"),
        speed=config.audio.output.speed,
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
        metadata=dict(metadata) if metadata is not None else None,
        model=config.model,
        truncation=truncation if isinstance(truncation, str) else truncation.model_dump(),
        parallel_tool_calls=(
            config.parallel_tool_calls
            if parsed.parallel_tool_calls is None
            else parsed.parallel_tool_calls
        ),
        temperature=temperature,
    )
    return resp, request
