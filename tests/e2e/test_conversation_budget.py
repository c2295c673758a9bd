"""The audio a conversation keeps is bounded by the transceiver's --max-conversation-audio-s,
passed on by ``serve``: past it, the oldest items' audio is let go (their transcripts
stay), and the session goes on."""

from __future__ import annotations

import base64

import pytest
from openai import AsyncOpenAI

from tests.e2e.client import Recorder
from tests.e2e.conftest import MOCK_ARGS
from tests.servers import relay_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

ITEM_S = 40  # two items of 40 s: past a 60 s budget


def audio_item(item_id: str) -> dict[str, object]:
    audio = base64.b64encode(b"\1\0" * (24_000 * ITEM_S)).decode()
    part = {"type": "input_audio", "audio": audio, "transcript": f"words of {item_id}"}
    return {
        "type": "conversation.item.create",
        "item": {"id": item_id, "type": "message", "role": "user", "content": [part]},
    }


async def test_the_oldest_items_audio_is_let_go_past_the_budget() -> None:
    with relay_server(*MOCK_ARGS, "--max-conversation-audio-s", "60") as server:
        client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            for item_id in ("item_a", "item_b"):
                await rec.send(audio_item(item_id))
                await rec.until("conversation.item.done")
            retrieved = {}
            for item_id in ("item_a", "item_b"):
                await rec.send({"type": "conversation.item.retrieve", "item_id": item_id})
                retrieved[item_id] = (await rec.until("conversation.item.retrieved"))["item"]
            old = retrieved["item_a"]["content"][0]
            assert "audio" not in old and old["transcript"] == "words of item_a"
            new = retrieved["item_b"]["content"][0]
            assert len(base64.b64decode(new["audio"])) == 2 * 24_000 * ITEM_S
            await rec.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
            done = await rec.until("response.done")
            assert done["response"]["status"] == "completed"
            rec.check()
