"""The default conversation: ordered items with their audio."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.errors import ClientError
from transceiver.protocol.items import text_size


@dataclass
class StoredItem:
    item: dict[str, Any]
    audio: bytes | bytearray = field(default_factory=bytearray)
    audio_format: AudioFormatType | None = None
    # For assistant audio: (audio bytes sent, transcript chars sent) at the start of
    # each transcript delta, so a truncation keeps the transcript the user heard.
    marks: list[tuple[int, int]] = field(default_factory=list)
    live: bool = False  # a response is still generating its audio: never let go of it
    audio_let_go: bool = False  # its audio went to keep the conversation within its budget
    text_chars: int = 0  # its strings when it was added (text_size)

    def audio_ms(self) -> float:
        if self.audio_format is None:
            return 0.0
        return self.audio_format.duration_ms(len(self.audio))

    def audio_bytes(self) -> bytes:
        """The audio, immutable: held as ``bytes`` from its first read until more is
        added. Each response's context reads every item's audio; a copy each time grew
        with the conversation."""
        if isinstance(self.audio, bytearray):
            self.audio = bytes(self.audio)
        return self.audio


# What one conversation holds: a session's clients cannot grow it past these.
MAX_ITEMS = 4096
CONVERSATION_AUDIO_MAX_MS = 20 * 60 * 1000
# The strings of the items clients add (text, transcripts, image URLs, arguments, outputs):
# far past any model's context, and what would otherwise be 4,096 frames of 32 MiB.
CONVERSATION_TEXT_MAX_CHARS = 32 * 1024 * 1024


class Conversation:
    """Items in order, with their audio. At most ``max_items`` items (another is refused),
    ``max_text_chars`` of strings in the items clients add (one past it is refused), and
    ``max_audio_ms`` of audio in all: past it, the audio of the oldest items is let go
    (their transcripts and text stay), as a model's context drops its oldest turns."""

    def __init__(
        self,
        conversation_id: str,
        max_items: int = MAX_ITEMS,
        max_audio_ms: float = CONVERSATION_AUDIO_MAX_MS,
        max_text_chars: int = CONVERSATION_TEXT_MAX_CHARS,
    ) -> None:
        self.id = conversation_id
        self.max_items = max_items
        self.max_audio_ms = max_audio_ms
        self.max_text_chars = max_text_chars
        self._text_chars = 0  # held in all (text_size of each item as added)
        self._order: list[str] = []
        self._items: dict[str, StoredItem] = {}
        self._audio_ms = 0.0  # held in all

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._order)

    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def previous_of(self, item_id: str) -> str | None:
        index = self._order.index(item_id)
        return self._order[index - 1] if index else None

    def items(self) -> list[StoredItem]:
        return [self._items[i] for i in self._order]

    def get(self, item_id: Any, param: str = "item_id") -> StoredItem:
        stored = self._items.get(item_id) if isinstance(item_id, str) else None
        if stored is None:
            raise ClientError(
                f"Item with item_id '{item_id}' not found.", code="item_not_found", param=param
            )
        return stored

    def add(
        self,
        item: dict[str, Any],
        *,
        previous_item_id: str | None = None,
        after_given: bool = False,
        audio: bytes | None = None,
        audio_format: AudioFormatType | None = None,
        check_room: bool = True,
    ) -> str | None:
        """Insert ``item``; return the id of the item before it (``None`` at the start).

        With ``after_given``, ``previous_item_id`` names the item to insert after
        (``"root"`` or ``None`` means the start); otherwise the item is appended.
        A response's output passes ``check_room=False``: its ``response.create`` checked.
        """
        item_id = item["id"]
        text_chars = text_size(item)
        if check_room:
            self.check_room()
            self._check_text_room(text_chars)
        if item_id in self._items:
            raise ClientError(
                f"Item with id '{item_id}' already exists.",
                code="item_already_exists",
                param="item.id",
            )
        if after_given and previous_item_id not in (None, "root"):
            self.get(previous_item_id, "previous_item_id")
        stored = StoredItem(
            item=item, audio=bytes(audio or b""), audio_format=audio_format, text_chars=text_chars
        )
        if not after_given:
            previous = self.last_id()
            self._order.append(item_id)
        elif previous_item_id in (None, "root"):
            previous = None
            self._order.insert(0, item_id)
        else:
            previous = previous_item_id
            self._order.insert(self._order.index(previous_item_id) + 1, item_id)
        self._items[item_id] = stored
        self._audio_ms += stored.audio_ms()
        self._text_chars += text_chars
        self._fit_audio(keep=stored)
        return previous

    def check_room(self, param: str = "item") -> None:
        """Refuse another item past ``max_items`` (a ``conversation_full`` error event)."""
        if len(self._order) >= self.max_items:
            raise ClientError(
                f"The conversation already holds {self.max_items} items, the most it may; "
                "delete some (conversation.item.delete) first.",
                code="conversation_full",
                param=param,
            )

    def _check_text_room(self, text_chars: int) -> None:
        if self._text_chars + text_chars > self.max_text_chars:
            raise ClientError(
                f"The conversation's items would hold more than {self.max_text_chars} "
                "characters of text, the most they may; delete some "
                "(conversation.item.delete) first.",
                code="conversation_full",
                param="item",
            )

    def append_audio(self, stored: StoredItem, audio: bytes) -> None:
        """More audio of ``stored`` (a response's output, as it is generated)."""
        if self._items.get(stored.item["id"]) is not stored:
            return  # deleted while it is generated: nothing to keep
        before = stored.audio_ms()
        if not isinstance(stored.audio, bytearray):
            stored.audio = bytearray(stored.audio)
        stored.audio += audio
        self._audio_ms += stored.audio_ms() - before
        self._fit_audio(keep=stored)

    def _fit_audio(self, keep: StoredItem) -> None:
        """Let go of the oldest items' audio (never ``keep``'s, the item being added, nor a
        response's still being generated) until within the budget."""
        for item_id in self._order:
            if self._audio_ms <= self.max_audio_ms:
                return
            stored = self._items[item_id]
            if stored is keep or stored.live or not stored.audio:
                continue
            self._audio_ms -= stored.audio_ms()
            stored.audio = bytearray()
            stored.audio_format = None  # no audio: retrieve shows none, truncate refuses
            stored.marks = []
            stored.audio_let_go = True

    def check_audio_held(self, stored: StoredItem) -> None:
        """Refuse what needs audio that was let go (truncating it)."""
        if stored.audio_let_go:
            raise ClientError(
                "The audio of this item is no longer held: the conversation keeps at most "
                f"{self.max_audio_ms / 1000:.0f} seconds of audio, and lets go of the oldest "
                "items' audio first.",
                param="item_id",
            )

    def delete(self, item_id: Any) -> None:
        stored = self.get(item_id)
        self._audio_ms -= stored.audio_ms()
        self._text_chars -= stored.text_chars
        del self._items[item_id]
        self._order.remove(item_id)

    def truncate_audio(self, stored: StoredItem, audio_end_ms: int) -> None:
        """Cut assistant audio at ``audio_end_ms`` and keep only the transcript heard."""
        assert stored.audio_format is not None
        keep = stored.audio_format.byte_count(audio_end_ms)
        total = len(stored.audio)
        before = stored.audio_ms()
        stored.audio = stored.audio[:keep]
        self._audio_ms -= before - stored.audio_ms()
        for part in stored.item.get("content", []):
            if part.get("type") == "output_audio" and part.get("transcript") is not None:
                part["transcript"] = heard_transcript(part["transcript"], stored.marks, keep, total)
        stored.marks = [m for m in stored.marks if m[0] < keep]


def heard_transcript(transcript: str, marks: list[tuple[int, int]], keep: int, total: int) -> str:
    """The part of ``transcript`` spoken in the first ``keep`` of ``total`` audio bytes.

    Within the clause being spoken at the cut, the share of its characters is
    the share of its audio played, backed off to a word boundary.
    """
    if keep >= total:
        return transcript
    index = bisect.bisect_right([m[0] for m in marks], keep) - 1
    if index < 0:
        return ""
    start_audio, start_chars = marks[index]
    end_audio, end_chars = marks[index + 1] if index + 1 < len(marks) else (total, len(transcript))
    fraction = (keep - start_audio) / (end_audio - start_audio) if end_audio > start_audio else 1.0
    heard = start_chars + int(fraction * (end_chars - start_chars))
    if heard >= end_chars:
        return transcript[:end_chars]
    cut = transcript.rfind(" ", start_chars, heard + 1)
    return transcript[: max(cut, start_chars)].rstrip()
