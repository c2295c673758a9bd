"""Conversation items from clients: validation and normalisation (the Realtime API's
``conversation.item.create``)."""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

from transceiver.protocol.errors import ClientError, check_known_fields, shown_value
from transceiver.protocol.wire import check_depth

_CONTENT_BY_ROLE = {
    "system": {"input_text"},
    "user": {"input_text", "input_audio", "input_image"},
    "assistant": {"output_text", "output_audio"},
}

# The fields of each item type and content part type (the API reference's
# RealtimeConversationItem* and their content); any other is ``unknown_parameter``, as at
# OpenAI, rather than kept in the conversation (where a stray ``text`` on an audio part
# would have become the user's words).
_ITEM = frozenset({"id", "type", "status", "object"})
_ITEM_FIELDS = {
    "message": _ITEM | {"role", "content"},
    "function_call": _ITEM | {"name", "call_id", "arguments"},
    "function_call_output": _ITEM | {"call_id", "output"},
}
_PART_FIELDS = {
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text"}),
    "input_audio": frozenset({"type", "audio", "transcript"}),
    "output_audio": frozenset({"type", "audio", "transcript"}),
    "input_image": frozenset({"type", "image_url", "detail"}),
}
_STATUSES = ("completed", "incomplete", "in_progress")
MAX_ITEM_ID_CHARS = 64  # a client's own item id


def decode_base64(value: Any, param: str, what: str = "audio") -> bytes:
    if not isinstance(value, str):
        raise ClientError(f"Invalid value for '{param}': expected a base64 string.", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(
            f"Invalid value for '{param}': not valid base64-encoded {what}.",
            code="invalid_value",
            param=param,
        ) from None


def _str_field(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise ClientError(
            f"Missing required parameter: '{param}.{key}'.",
            code="missing_required_parameter",
            param=f"{param}.{key}",
        )
    return value


def normalize_item(raw: Any, param: str = "item") -> tuple[dict[str, Any], bytes | None]:
    """Return the GA item (audio bytes removed) and any input audio it carried."""
    if not isinstance(raw, dict):
        raise ClientError(f"'{param}' must be an object.", param=param)
    check_depth(raw, f"'{param}'", code="invalid_value", param=param)  # before the deepcopy
    item = copy.deepcopy(raw)
    item_type = item.get("type")
    if isinstance(item_type, str) and item_type in _ITEM_FIELDS:
        check_known_fields(item, _ITEM_FIELDS[item_type], f"{param}.")
        _check_id_and_status(item, param)
    item.pop("object", None)
    if item_type == "function_call":
        _str_field(item, "name", param)
        _str_field(item, "call_id", param)
        args = item.get("arguments", "")
        if not isinstance(args, str):
            raise ClientError(f"'{param}.arguments' must be a string.", param=f"{param}.arguments")
        item["arguments"] = args
        item.setdefault("status", "completed")
        return item, None
    if item_type == "function_call_output":
        _str_field(item, "call_id", param)
        _str_field(item, "output", param)
        item.setdefault("status", "completed")
        return item, None
    if item_type != "message":
        raise ClientError(
            f"Invalid value: '{shown_value(item_type)}'. Supported values are: 'message', "
            "'function_call', and 'function_call_output'.",
            param=f"{param}.type",
        )
    return item, _normalize_message(item, param)


def _normalize_message(item: dict[str, Any], param: str) -> bytes | None:
    """Check a message item's role and content parts in place; return its input audio."""
    role = item.get("role")
    allowed = _CONTENT_BY_ROLE.get(role) if isinstance(role, str) else None
    if allowed is None:
        raise ClientError(
            f"Invalid value: '{shown_value(role)}'. Supported values are: 'system', 'user', "
            "and 'assistant'.",
            param=f"{param}.role",
        )
    content = item.get("content")
    if not isinstance(content, list):
        raise ClientError(f"'{param}.content' must be an array.", param=f"{param}.content")
    audio: bytes | None = None
    for index, part in enumerate(content):
        part_param = f"{param}.content[{index}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if not isinstance(ptype, str) or ptype not in allowed:
            raise ClientError(
                f"Invalid value: '{shown_value(ptype)}'. Supported values for a {role} message "
                "are: " + ", ".join(f"'{t}'" for t in sorted(allowed)) + ".",
                param=f"{part_param}.type",
            )
        assert isinstance(part, dict)
        check_known_fields(part, _PART_FIELDS[ptype], f"{part_param}.")
        if ptype in ("input_text", "output_text"):
            _str_field(part, "text", part_param)
        elif ptype == "input_audio":
            if "audio" in part and part["audio"] is not None:
                audio = (audio or b"") + decode_base64(part.pop("audio"), f"{part_param}.audio")
            transcript = part.setdefault("transcript", None)
            if transcript is not None and not isinstance(transcript, str):
                raise ClientError(
                    f"'{part_param}.transcript' must be a string.",
                    param=f"{part_param}.transcript",
                )
        elif ptype == "input_image":
            _check_image(part, part_param)
        elif ptype == "output_audio":
            raise ClientError(
                "Assistant audio items cannot be created by the client; use 'output_text'.",
                param=f"{part_param}.type",
            )
    item.setdefault("status", "completed")
    return audio


def _check_id_and_status(item: dict[str, Any], param: str) -> None:
    """A client's ``id`` is a string of at most ``MAX_ITEM_ID_CHARS`` (null or empty: the
    server names the item); ``status`` one of the item statuses (null: not given)."""
    item_id = item.get("id")
    if item_id is not None and (not isinstance(item_id, str) or len(item_id) > MAX_ITEM_ID_CHARS):
        raise ClientError(
            f"Invalid value for '{param}.id': expected a string of at most "
            f"{MAX_ITEM_ID_CHARS} characters.",
            param=f"{param}.id",
        )
    status = item.get("status")
    if status is None:
        item.pop("status", None)
    elif status not in _STATUSES:
        raise ClientError(
            f"Invalid value: '{shown_value(status)}'. Supported values are: 'completed', "
            "'incomplete', and 'in_progress'.",
            param=f"{param}.status",
        )


_IMAGE_DATA = ("data:image/png;base64,", "data:image/jpeg;base64,")


def _check_image(part: dict[str, Any], param: str) -> None:
    """An ``input_image`` part: ``image_url`` a PNG or JPEG data URL (valid base64) or an
    http(s) URL, ``detail`` auto, low or high (the SDK's ``Content``)."""
    url = _str_field(part, "image_url", param)
    if url.startswith(_IMAGE_DATA):
        decode_base64(url.partition(",")[2], f"{param}.image_url", "image data")
    elif not url.startswith(("https://", "http://")) or len(url) > 8192:
        raise ClientError(
            "Invalid 'image_url': expected a PNG or JPEG data URL "
            "('data:image/png;base64,...') or an http(s) URL.",
            param=f"{param}.image_url",
        )
    detail = part.get("detail")
    if detail is not None and detail not in ("auto", "low", "high"):
        raise ClientError(
            f"Invalid value: '{shown_value(detail)}'. Supported values are: 'auto', 'low', and "
            "'high'.",
            param=f"{param}.detail",
        )


def item_text(item: dict[str, Any]) -> str:
    """Text of a message item: its text parts and audio transcripts, joined."""
    pieces = []
    for part in item.get("content", []):
        text = part.get("text")
        if text is None:
            text = part.get("transcript")
        if text:
            pieces.append(str(text))
    return " ".join(pieces)


def text_size(value: Any) -> int:
    """What holding an item costs, in characters: those of every string in it (keys too),
    however nested (text, image URLs and arguments alike), and one for anything else (a
    number, a null, each element of an array), which holds memory too."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return len(value) + sum(len(key) + text_size(inner) for key, inner in value.items())
    if isinstance(value, list):
        return len(value) + sum(text_size(inner) for inner in value)
    return 1


def copy_item(item: dict[str, Any]) -> dict[str, Any]:
    """A copy deep enough that later changes to the item do not reach it."""
    copied = dict(item)
    if "content" in copied:
        copied["content"] = [dict(part) for part in copied["content"]]
    return copied
