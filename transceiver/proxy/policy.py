"""The operator's policy for proxied sessions: the models clients may use, and instructions.

Also how client frames are read: an audio append passes unparsed, everything else is parsed,
so that no frame can slip a ``session.update`` past the policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transceiver.protocol.errors import ClientError
from transceiver.protocol.wire import APPEND_HEADS
from transceiver.settings import TransceiverSettings

# The compact spelling only (wire.py owns both): an append spaced as json.dumps writes it is
# parsed, which costs more and passes all the same.
APPEND_PREFIX = APPEND_HEADS[0]


def client_event(text: str) -> dict[str, Any] | None:
    """A client frame as an event, or ``None`` for one forwarded as it is.

    Audio appends (nearly every frame) are recognised by their prefix and not parsed; the
    single ``"type"`` check keeps a frame with a second ``type`` key (JSON parsers keep the
    last) from passing as one. Frames that are not JSON objects go upstream unchanged, and
    the upstream answers them with its own error.
    """
    if text.startswith(APPEND_PREFIX) and text.count('"type"') == 1:
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
