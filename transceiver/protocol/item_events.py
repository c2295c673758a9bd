"""The ``conversation.item.*`` client events: create, retrieve, delete, truncate.

A mixin of ``RealtimeSession``, kept apart so each file stays readable.
"""

from __future__ import annotations

import base64
from typing import Any

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.conversation import Conversation
from transceiver.protocol.errors import ClientError, shown_value
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.items import copy_item, normalize_item
from transceiver.protocol.responses import Response


class SessionItems:
    conversation: Conversation
    ids: IdFactory
    _responses: dict[str, Response]

    @property
    def input_format(self) -> AudioFormatType:
        raise NotImplementedError

    def _emit(self, type: str, **fields: Any) -> None:
        raise NotImplementedError

    def _cancel(self, resp: Response, reason: str, now_ms: float) -> None:
        raise NotImplementedError

    def _check_item_audio(self, item: Any, param: str = "item", chars: int = 0) -> int:
        raise NotImplementedError

    def _check_item_duration(self, audio: bytes, fmt: AudioFormatType) -> None:
        raise NotImplementedError

    def _on_item_create(self, event: dict[str, Any], now_ms: float) -> None:
        self._check_item_audio(event.get("item"))
        item, audio = normalize_item(event.get("item"))
        if audio is not None:
            self._check_item_duration(audio, self.input_format)
        if not isinstance(item.get("id"), str) or not item["id"]:
            item["id"] = self.ids.new("item")
        if item["type"] == "function_call_output" and not any(
            stored.item.get("type") == "function_call"
            and stored.item.get("call_id") == item["call_id"]
            for stored in self.conversation.items()
        ):
            raise ClientError(
                f"No function call with call_id '{item['call_id']}' found in the conversation.",
                param="item.call_id",
            )
        fmt = self.input_format if audio is not None else None
        previous = self.conversation.add(
            item,
            previous_item_id=event.get("previous_item_id"),
            # SDK docstring: "If not set, the new item will be appended"; clients send null.
            after_given=event.get("previous_item_id") is not None,
            audio=audio,
            audio_format=fmt,
        )
        self._emit("conversation.item.added", previous_item_id=previous, item=copy_item(item))
        self._emit("conversation.item.done", previous_item_id=previous, item=copy_item(item))

    def _on_item_retrieve(self, event: dict[str, Any], now_ms: float) -> None:
        stored = self.conversation.get(event.get("item_id"))
        item = copy_item(stored.item)
        if stored.audio_format is not None:
            for part in item.get("content", []):
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(stored.audio_bytes()).decode("ascii")
        self._emit("conversation.item.retrieved", item=item)

    def _on_item_delete(self, event: dict[str, Any], now_ms: float) -> None:
        item_id = event.get("item_id")
        self.conversation.delete(item_id)
        self._emit("conversation.item.deleted", item_id=item_id)

    def _on_item_truncate(self, event: dict[str, Any], now_ms: float) -> None:
        item_id = event.get("item_id")
        stored = self.conversation.get(item_id)
        self.conversation.check_audio_held(stored)
        content_index = event.get("content_index")
        if content_index is None:  # required, as the API reference has it
            raise ClientError(
                "Missing required parameter: 'content_index'.",
                code="missing_required_parameter",
                param="content_index",
            )
        audio_end_ms = event.get("audio_end_ms")
        # The response still speaking this item, if any (its content part is still open).
        speaking = next(
            (
                resp
                for resp in self._responses.values()
                if resp.open is not None
                and resp.open.kind == "audio"
                and resp.open.item["id"] == item_id
            ),
            None,
        )
        is_audio = stored.item.get("role") == "assistant" and (
            speaking is not None
            or any(part.get("type") == "output_audio" for part in stored.item.get("content", []))
        )
        if not is_audio or stored.audio_format is None:
            raise ClientError(
                "Only assistant messages with audio content can be truncated.", param="item_id"
            )
        if content_index != 0:
            raise ClientError(
                f"Invalid value: '{shown_value(content_index)}'. The item has one content part.",
                param="content_index",
            )
        if isinstance(audio_end_ms, bool) or not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise ClientError(
                "'audio_end_ms' must be a non-negative integer.", param="audio_end_ms"
            )
        have_ms = stored.audio_ms()
        if audio_end_ms > have_ms + 1:
            raise ClientError(
                f"Audio content of {have_ms:.0f}ms is already shorter than {audio_end_ms}ms",
                param="audio_end_ms",
            )
        if speaking is not None:
            # The client stopped playing this item at audio_end_ms (what the Agents SDKs'
            # interrupt() sends, without a response.cancel when interrupt_response is on):
            # generating past it would put words in the context that nobody heard.
            self._cancel(speaking, "client_cancelled", now_ms)
        self.conversation.truncate_audio(stored, audio_end_ms)
        self._emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )
