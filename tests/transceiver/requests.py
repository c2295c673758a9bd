"""A ``ResponseRequest`` for tests of the shell and the backends."""

from __future__ import annotations

from transceiver.protocol.effects import ContextItem, ResponseRequest


def request(*items: dict[str, object]) -> ResponseRequest:
    return ResponseRequest(
        response_id="resp_1",
        in_conversation=True,
        context=tuple(ContextItem(dict(item)) for item in items),
        instructions="Be brief.",
        tools=(),
        tool_choice="auto",
        output_modalities=("audio",),
        output_format="audio/pcm",
        voice="alloy",
        speed=1.0,
        max_output_tokens=None,
        metadata=None,
        model="gpt-realtime",
    )
