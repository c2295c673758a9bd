"""The official ``openai`` SDK against ``realtime-relay serve --backend mock`` on loopback:
what the mock server is tested for beyond the scenarios every backend shares
(test_scenarios.py).

Every received event is validated against the SDK's types, and each recorded stream
is checked against the event-stream invariants (tests/invariants.py).
"""

from __future__ import annotations

import base64

import pytest
from openai import AsyncOpenAI

from models.audio import pcm16_to_array, rms
from tests.e2e.client import (
    Recorder,
    append_audio,
    decode_audio,
    long_audio_response,
    silence,
    speech,
    user_text,
)
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client_for(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url)


async def test_manual_commit(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        updated = await rec.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await append_audio(rec, speech("one two three"))
        await rec.send({"type": "input_audio_buffer.commit"})
        committed = await rec.until("input_audio_buffer.committed")
        assert committed["previous_item_id"] is None
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        assert not rec.of_type("input_audio_buffer.speech_started")
        await rec.send({"type": "input_audio_buffer.commit", "event_id": "evt_empty"})
        error = await rec.until("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "evt_empty"
        rec.check()


async def test_response_cancel(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await long_audio_response(rec)
        await rec.send({"type": "response.cancel"})
        done = await rec.until("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await rec.send({"type": "response.cancel", "event_id": "evt_c"})
        error = await rec.until("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        rec.check()


async def test_truncate_retrieve_delete(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await user_text(rec, "tell me a long story")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        item = done["response"]["output"][0]
        full = item["content"][0]["transcript"]
        await rec.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": 1500,
            }
        )
        truncated = await rec.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 1500
        await rec.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = (await rec.until("conversation.item.retrieved"))["item"]
        part = retrieved["content"][0]
        assert len(base64.b64decode(part["audio"])) == 1500 * 48
        assert 0 < len(part["transcript"]) < len(full) and full.startswith(part["transcript"])
        await rec.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": 999_999,
                "event_id": "evt_t",
            }
        )
        assert (await rec.until("error"))["error"]["event_id"] == "evt_t"
        await rec.send({"type": "conversation.item.delete", "item_id": item["id"]})
        assert (await rec.until("conversation.item.deleted"))["item_id"] == item["id"]
        await rec.send(
            {"type": "conversation.item.retrieve", "item_id": item["id"], "event_id": "r2"}
        )
        error = await rec.until("error")
        assert error["error"]["event_id"] == "r2"
        rec.check()


async def test_out_of_band_response(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        await rec.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"topic": "classification"},
                    "output_modalities": ["text"],
                    "instructions": "Classify.",
                    "input": [
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "classify this"}],
                        }
                    ],
                },
            }
        )
        done = await rec.until("response.done")
        assert done["response"]["conversation_id"] is None
        assert done["response"]["metadata"] == {"topic": "classification"}
        assert not [e for e in rec.events if e["type"].startswith("conversation.item.")]
        rec.check()


async def test_transcription_session(mock_server: RunningServer) -> None:
    client = client_for(mock_server)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert created["session"]["type"] == "transcription"
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {"transcription": {"model": "gpt-4o-transcribe", "language": "en"}}
                    },
                },
            }
        )
        await rec.until("session.updated")
        await append_audio(rec, speech("transcribe these words") + silence(800))
        committed = await rec.until("input_audio_buffer.committed")
        completed = await rec.until("conversation.item.input_audio_transcription.completed")
        assert completed["item_id"] == committed["item_id"]
        assert completed["usage"]["seconds"] > 0.5
        assert not [e for e in rec.events if e["type"].startswith("response.")]
        rec.check()


async def test_transcription_logprobs_when_included(mock_server: RunningServer) -> None:
    """The mock is certain of its words: each delta carries its word at log probability 0,
    and the completed transcript all of them; without ``include``, no logprobs at all."""
    client = client_for(mock_server)
    for include in (["item.input_audio_transcription.logprobs"], None):
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            rec = Recorder(conn)
            audio = {"input": {"transcription": {"model": "whisper-1"}}}
            session = {"type": "transcription", "audio": audio, "include": include}
            await rec.send({"type": "session.update", "session": session})
            await rec.until("session.updated")
            await append_audio(rec, speech("three words here") + silence(800))
            done = await rec.until("conversation.item.input_audio_transcription.completed")
            deltas = rec.of_type("conversation.item.input_audio_transcription.delta")
            rec.check()
        if include is None:
            assert "logprobs" not in done and all("logprobs" not in d for d in deltas)
            continue
        tokens = [lp["token"] for lp in done["logprobs"]]
        assert "".join(tokens) == done["transcript"] == "".join(d["delta"] for d in deltas)
        assert [d["logprobs"] for d in deltas] == [[lp] for lp in done["logprobs"]]
        assert {lp["logprob"] for lp in done["logprobs"]} == {0.0}


async def test_bad_input_keeps_session(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.until("session.created")
        await conn.send_raw('{"type": "scooby.dooby.doo", "event_id": "e1"}')
        error = await rec.until("error")
        assert error["error"] == {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": error["error"]["message"],
            "param": "type",
            "event_id": "e1",
        }
        await conn.send_raw(
            '{"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "e2"}'
        )
        error = await rec.until("error")
        assert error["error"]["event_id"] == "e2" and error["error"]["param"] == "audio"
        await conn.send_raw(
            '{"type": "session.update", "event_id": "e3", "session": {"type": '
            '"realtime", "audio": {"output": {"speed": 9}}}}'
        )
        error = await rec.until("error")
        assert error["error"]["param"] == "session.audio.output.speed"
        assert error["error"]["code"] == "invalid_value"
        await conn.send_raw("not json at all")
        await rec.until("error")
        await conn.send_raw('{"event_id": "e5"}')
        assert (await rec.until("error"))["error"]["code"] == "invalid_event"
        await user_text(rec, "still alive")
        await rec.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await rec.until("response.done")
        assert done["response"]["output"][0]["content"][0]["text"] == "still alive"
        assert not rec.of_type("session.updated")
        rec.check()


async def test_g711_output(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcmu"}}},
                },
            }
        )
        await rec.until("session.updated")
        await user_text(rec, "say this in mu law")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["audio"]["output"]["format"]["type"] == "audio/pcmu"
        ulaw = decode_audio(rec.events)
        words = len("say this in mu law".split())
        # 8 bytes per ms; the mock speaks at 900 words a minute (about 66 ms a word).
        assert abs(len(ulaw) / 8 - words * 66) < 100
        from models.audio import ulaw_decode

        assert rms(ulaw_decode(ulaw)) > 500
        assert pcm16_to_array(ulaw_decode(ulaw)).size == len(ulaw)
        rec.check()


async def test_large_frame(mock_server: RunningServer) -> None:
    async with client_for(mock_server).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await rec.until("session.updated")
        pcm = speech("a big frame") * 80  # about 11 MiB of PCM, 15 MiB of base64
        await rec.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        )
        await rec.send({"type": "input_audio_buffer.commit"})
        committed = await rec.until("input_audio_buffer.committed", timeout_s=60)
        assert committed["item_id"].startswith("item_")
        rec.check()
