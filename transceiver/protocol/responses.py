"""One response's output: items, content parts, deltas and their ``done`` events.

Every ``.added`` gets its ``.done``, also on cancel; nothing is written after
``response.done`` (the session drops stale output by response id).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.config import AudioFormat, CustomVoice, voice_name
from transceiver.protocol.conversation import Conversation, StoredItem
from transceiver.protocol.errors import ProtocolMisuse
from transceiver.protocol.ids import IdFactory
from transceiver.protocol.items import copy_item

Emit = Callable[..., None]


@dataclass
class _OpenItem:
    item: dict[str, Any]
    output_index: int
    kind: str  # "text" | "audio" | "function_call"
    text: str = ""
    stored: StoredItem | None = None
    audio_bytes: int = 0


@dataclass
class Response:
    id: str
    in_conversation: bool
    conversation: Conversation
    output_modalities: list[str]
    output_format: AudioFormat
    voice: str | CustomVoice
    max_output_tokens: int | str
    metadata: dict[str, Any] | None
    input_tokens: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    open: _OpenItem | None = None
    text_chars: int = 0
    audio_bytes: int = 0
    done: bool = False
    played_until_ms: float | None = None  # the playback clock (``play``), if kept

    def play(self, now_ms: float, duration_ms: float) -> None:
        """Audio sent at ``now_ms``, played as a WebRTC relay plays it (relay/playback.py):
        at once, or after what is already queued."""
        start = now_ms if self.played_until_ms is None else max(now_ms, self.played_until_ms)
        self.played_until_ms = start + duration_ms

    def playback_end_ms(self, done_ms: float, media: bool) -> float:
        """When the reply's audio has finished playing. On a media track (WebRTC, SIP)
        the playback clock says; over a WebSocket, as OpenAI defines it for
        idle_timeout_ms: "the response.done time plus audio playback duration"."""
        if media and self.played_until_ms is not None:
            return max(done_ms, self.played_until_ms)
        return done_ms + self.audio_ms()

    def wire(
        self, status: str, details: dict[str, Any] | None = None, final: bool = False
    ) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            # Copies down to the parts: a later truncation must not rewrite sent events.
            "output": [copy_item(item) for item in self.output] if final else [],
            "conversation_id": self.conversation.id if self.in_conversation else None,
            "output_modalities": list(self.output_modalities),
            "max_output_tokens": self.max_output_tokens,
            "audio": {
                "output": {
                    "format": self.output_format.model_dump(mode="json"),
                    "voice": voice_name(self.voice),
                }
            },
            "usage": self._usage() if final else None,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }

    def audio_ms(self) -> float:
        """The duration of the audio the response has sent."""
        return self.output_format.type.duration_ms(self.audio_bytes)

    def _usage(self) -> dict[str, Any]:
        # Audio tokens: 1 per 50 ms of assistant audio; text: ~4 characters a token.
        audio_tokens = int(self.output_format.type.duration_ms(self.audio_bytes) / 50)
        text_tokens = (self.text_chars + 3) // 4
        output_tokens = audio_tokens + text_tokens
        return {
            "total_tokens": self.input_tokens + output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": self.input_tokens,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }


class ResponseWriter:
    """Writes the events of a response's output through ``emit``."""

    def __init__(self, emit: Emit, ids: IdFactory) -> None:
        self._emit = emit
        self._ids = ids

    def _open(self, resp: Response, item: dict[str, Any], kind: str) -> _OpenItem:
        self.close_open(resp, "completed")
        opened = _OpenItem(item=item, output_index=len(resp.output), kind=kind)
        resp.output.append(item)
        self._emit(
            "response.output_item.added",
            response_id=resp.id,
            output_index=opened.output_index,
            item=dict(item),
        )
        if resp.in_conversation:
            fmt = resp.output_format.type if kind == "audio" else None
            previous = resp.conversation.add(item, audio_format=fmt, check_room=False)
            opened.stored = resp.conversation.get(item["id"])
            opened.stored.live = True  # its audio is kept whole while it is generated
            self._emit("conversation.item.added", previous_item_id=previous, item=dict(item))
        resp.open = opened
        if kind in ("text", "audio"):
            part = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "audio", "transcript": ""}
            )
            self._emit("response.content_part.added", **self._where(resp, opened), part=part)
        return opened

    def _where(self, resp: Response, opened: _OpenItem) -> dict[str, Any]:
        return {
            "response_id": resp.id,
            "item_id": opened.item["id"],
            "output_index": opened.output_index,
            "content_index": 0,
        }

    def _message(self, resp: Response, kind: str) -> _OpenItem:
        if resp.open is not None and resp.open.kind == kind:
            return resp.open
        item = {
            "id": self._ids.new("item"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        return self._open(resp, item, kind)

    def text(self, resp: Response, delta: str) -> None:
        opened = self._message(resp, "text")
        opened.text += delta
        resp.text_chars += len(delta)
        self._emit("response.output_text.delta", **self._where(resp, opened), delta=delta)

    def transcript(self, resp: Response, delta: str) -> None:
        opened = self._message(resp, "audio")
        if opened.stored is not None:
            opened.stored.marks.append((opened.audio_bytes, len(opened.text)))
        opened.text += delta
        resp.text_chars += len(delta)
        self._emit(
            "response.output_audio_transcript.delta", **self._where(resp, opened), delta=delta
        )

    def audio(self, resp: Response, audio: bytes) -> None:
        opened = self._message(resp, "audio")
        opened.audio_bytes += len(audio)
        resp.audio_bytes += len(audio)
        if opened.stored is not None:
            resp.conversation.append_audio(opened.stored, audio)
        self._emit(
            "response.output_audio.delta",
            **self._where(resp, opened),
            delta=base64.b64encode(audio).decode("ascii"),
        )

    def function_call(self, resp: Response, name: str, call_id: str | None) -> str:
        call_id = call_id or self._ids.call_id()
        item = {
            "id": self._ids.new("item"),
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        self._open(resp, item, "function_call")
        return call_id

    def arguments(self, resp: Response, delta: str) -> None:
        opened = resp.open
        if opened is None or opened.kind != "function_call":
            raise ProtocolMisuse("arguments delta without an open function call")
        opened.text += delta
        resp.text_chars += len(delta)
        self._emit(
            "response.function_call_arguments.delta",
            response_id=resp.id,
            item_id=opened.item["id"],
            output_index=opened.output_index,
            call_id=opened.item["call_id"],
            delta=delta,
        )

    def close_open(self, resp: Response, status: str) -> None:
        opened, resp.open = resp.open, None
        if opened is None:
            return
        item = opened.item
        where = self._where(resp, opened)
        if opened.kind == "text":
            self._emit("response.output_text.done", **where, text=opened.text)
            self._emit(
                "response.content_part.done", **where, part={"type": "text", "text": opened.text}
            )
            item["content"] = [{"type": "output_text", "text": opened.text}]
        elif opened.kind == "audio":
            self._emit("response.output_audio.done", **where)
            self._emit("response.output_audio_transcript.done", **where, transcript=opened.text)
            self._emit(
                "response.content_part.done",
                **where,
                part={"type": "audio", "transcript": opened.text},
            )
            item["content"] = [{"type": "output_audio", "transcript": opened.text}]
        else:
            item["arguments"] = opened.text
            self._emit(
                "response.function_call_arguments.done",
                response_id=resp.id,
                item_id=item["id"],
                output_index=opened.output_index,
                call_id=item["call_id"],
                name=item["name"],
                arguments=opened.text,
            )
        item["status"] = status
        # The response keeps the item as generated: a truncation before response.done
        # changes the conversation item only.
        resp.output[opened.output_index] = copy_item(item)
        self._emit(
            "response.output_item.done",
            response_id=resp.id,
            output_index=opened.output_index,
            item=copy_item(item),
        )
        if opened.stored is not None:
            opened.stored.live = False
        if opened.stored is not None and opened.item["id"] in resp.conversation:
            previous = resp.conversation.previous_of(item["id"])
            self._emit("conversation.item.done", previous_item_id=previous, item=copy_item(item))

    def finish(self, resp: Response, status: str, details: dict[str, Any] | None) -> None:
        self.close_open(resp, "completed" if status == "completed" else "incomplete")
        resp.done = True
        self._emit("response.done", response=resp.wire(status, details, final=True))
