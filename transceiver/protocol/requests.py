"""``response.create`` parameters: per-response overrides of the session (section 7.4)."""

from __future__ import annotations

from typing import Any

from transceiver.protocol.config import validate_audio_format, validate_tools, validate_voice
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.effects import ContextItem, ResponseRequest
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.items import item_text, normalize_item
from transceiver.protocol.responses import Response

_KNOWN = {
    "conversation",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "output_modalities",
    "audio",
    "max_output_tokens",
    "metadata",
    "prompt",
    "reasoning",
    "parallel_tool_calls",
}


def _modalities(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) != 1 or value[0] not in ("audio", "text"):
        raise ClientError(
            f"Invalid value: '{value}'. Supported values are: ['audio'] and ['text'].",
            param="response.output_modalities",
        )
    return list(value)


def _max_tokens(value: Any, param: str) -> int | str:
    if value == "inf":
        return "inf"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return value
    raise ClientError(
        f"Invalid value: '{value}'. Expected an integer from 1 to 4096 or 'inf'.", param=param
    )


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, dict)
        and len(value) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in value.items()
        )
    )
    if not ok:
        raise ClientError(
            "'metadata' must hold at most 16 string pairs (keys up to 64 characters, "
            "values up to 512).",
            param="response.metadata",
        )
    return dict(value)


def _context(
    params: dict[str, Any], conversation: Conversation, ids: IdFactory
) -> list[ContextItem]:
    if "input" not in params:
        return [
            ContextItem(dict(s.item), bytes(s.audio) if s.audio_format else None, s.audio_format)
            for s in conversation.items()
        ]
    raw_input = params["input"]
    if not isinstance(raw_input, list):
        raise ClientError("'response.input' must be an array.", param="response.input")
    context = []
    for index, raw in enumerate(raw_input):
        param = f"response.input[{index}]"
        if isinstance(raw, dict) and raw.get("type") == "item_reference":
            stored = conversation.get(raw.get("id"), f"{param}.id")
            context.append(
                ContextItem(
                    dict(stored.item),
                    bytes(stored.audio) if stored.audio_format else None,
                    stored.audio_format,
                )
            )
            continue
        item, audio = normalize_item(raw, param)
        item.setdefault("id", ids.new("item"))
        context.append(ContextItem(item, audio, "audio/pcm" if audio is not None else None))
    return context


def build_response(
    params: Any, config: dict[str, Any], conversation: Conversation, ids: IdFactory
) -> tuple[Response, ResponseRequest]:
    """Validate ``response.create``'s ``response`` against the session; raise ``ClientError``."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ClientError("'response' must be an object.", param="response")
    for key in params:
        if key not in _KNOWN:
            raise ClientError(
                f"Unknown parameter: 'response.{key}'.",
                code="unknown_parameter",
                param=f"response.{key}",
            )
    conv = params.get("conversation", "auto")
    if conv not in ("auto", "none", conversation.id):
        raise ClientError(
            f"Invalid value: '{conv}'. Supported values are: 'auto' and 'none'.",
            param="response.conversation",
        )
    in_conversation = conv != "none"
    modalities = _modalities(params.get("output_modalities", config["output_modalities"]))
    instructions = params.get("instructions", config["instructions"])
    if not isinstance(instructions, str):
        raise ClientError(
            "'response.instructions' must be a string.", param="response.instructions"
        )
    tools = (
        validate_tools(params["tools"], "response.tools")
        if "tools" in params
        else list(config["tools"])
    )
    audio_out = params.get("audio", {})
    output = audio_out.get("output", {}) if isinstance(audio_out, dict) else None
    if not isinstance(output, dict):
        raise ClientError("'response.audio.output' must be an object.", param="response.audio")
    fmt = (
        validate_audio_format(output["format"], "response.audio.output.format")
        if "format" in output
        else dict(config["audio"]["output"]["format"])
    )
    voice = (
        validate_voice(output["voice"], "response.audio.output.voice")
        if "voice" in output
        else config["audio"]["output"]["voice"]
    )
    max_tokens = _max_tokens(
        params.get("max_output_tokens", config["max_output_tokens"]), "response.max_output_tokens"
    )
    metadata = _metadata(params.get("metadata"))
    context = _context(params, conversation, ids)
    input_tokens = (len(instructions) + sum(len(item_text(c.item)) for c in context) + 3) // 4
    resp = Response(
        id=ids.new("resp"),
        in_conversation=in_conversation,
        conversation=conversation,
        output_modalities=modalities,
        output_format=fmt,
        voice=voice,
        max_output_tokens=max_tokens,
        metadata=metadata,
        input_tokens=input_tokens,
    )
    request = ResponseRequest(
        response_id=resp.id,
        in_conversation=in_conversation,
        context=tuple(context),
        instructions=instructions,
        tools=tuple(tools),
        tool_choice=params.get("tool_choice", config["tool_choice"]),
        output_modalities=tuple(modalities),
        output_format=str(fmt["type"]),
        voice=voice,
        speed=float(config["audio"]["output"]["speed"]),
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
        metadata=metadata,
        model=str(config.get("model", "")),
    )
    return resp, request
