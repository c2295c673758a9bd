"""``--local-turn-detection``'s turn detection (transceiver/proxy/turns.py), driven directly:
client audio in, client events and upstream frames out. Audio is fed faster than real
time; every duration is the client's audio time."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from models.silero import SileroModel
from models.synth import speech
from tests.transceiver.test_semantic_vad import ScriptedStt, ScriptedTurns, ScriptedWords
from tests.transceiver.test_speculation import settle
from tests.waiting import eventually
from transceiver.protocol.errors import ClientError
from transceiver.protocol.ids import IdFactory
from transceiver.proxy.local_view import read_turn_detection
from transceiver.proxy.turns import TAIL_MS, LocalTurns
from transceiver.turns import TurnModel

pytestmark = pytest.mark.asyncio(loop_scope="session")

SAID = speech("one two three four five six")  # 1920 ms


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (24 * ms)


def turns(
    turn_model: TurnModel | None = None, vad_model: SileroModel | None = None, **td: Any
) -> tuple[LocalTurns, list[int]]:
    sent: list[int] = []
    local = LocalTurns(
        realtime=True,
        beta=False,
        ids=IdFactory(),
        session_id="sess_test",
        turn_model=turn_model,
        on_sent=sent.append,
        vad_model=vad_model,
    )
    # server_vad with a 500 ms window unless the test names its own turn detection
    update = td if "type" in td else {"type": "server_vad", "silence_duration_ms": 500, **td}
    session = {"type": "realtime", "audio": {"input": {"turn_detection": update}}}
    upstream = local.client_update({"type": "session.update", "session": session})
    assert upstream["session"]["audio"]["input"]["turn_detection"] is None
    return local, sent


def feed(local: LocalTurns, audio: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    for offset in range(0, len(audio), 4800):
        local.append(audio[offset : offset + 4800])
    client, upstream = local.take()
    return client, [json.loads(frame) for frame in upstream]


async def test_a_turn_sends_only_its_speech_then_commits_and_responds() -> None:
    local, sent = turns()
    client, upstream = feed(local, silence(3000) + SAID + silence(3000))
    started, stopped = client
    assert started["type"] == "input_audio_buffer.speech_started"
    assert 2600 <= started["audio_start_ms"] <= 3000  # the client's timeline, padding included
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert stopped["item_id"] == started["item_id"]
    assert 4800 <= stopped["audio_end_ms"] <= 4920
    kinds = [frame["type"] for frame in upstream]
    assert kinds[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert set(kinds[:-2]) == {"input_audio_buffer.append"}
    audio = b"".join(base64.b64decode(f["audio"]) for f in upstream[:-2])
    assert len(audio) == sum(sent)
    # From the padding to TAIL_MS after the speech: nothing of the silence around it.
    expected_ms = stopped["audio_end_ms"] + TAIL_MS - started["audio_start_ms"]
    assert abs(len(audio) / 48 - expected_ms) <= 40


async def test_a_pause_is_held_and_sent_only_if_speech_resumes() -> None:
    local, _ = turns(silence_duration_ms=1500)
    client, upstream = feed(local, silence(500) + SAID + silence(800) + SAID + silence(2000))
    assert [e["type"] for e in client] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
    ]
    audio = b"".join(base64.b64decode(f["audio"]) for f in upstream if "audio" in f)
    span_ms = client[1]["audio_end_ms"] + TAIL_MS - client[0]["audio_start_ms"]
    assert abs(len(audio) / 48 - span_ms) <= 40  # the pause went up, the trailing silence not


async def test_semantic_vad_takes_a_second_look_at_a_pause_it_called_not_finished() -> None:
    model = ScriptedTurns(0.2, 0.9)  # not yet after 100 ms of silence; finished at 200 ms
    local, _ = turns(TurnModel(model, min_silence_ms=0), type="semantic_vad", eagerness="auto")
    client, _ = feed(local, silence(500) + SAID + silence(120))
    assert [e["type"] for e in client] == ["input_audio_buffer.speech_started"]
    await eventually(lambda: model.answered == 1, 5, 0.005, "the first look")
    await settle()
    for _ in range(5):
        local.append(silence(20))
    await eventually(lambda: model.answered == 2, 5, 0.005, "the second look")
    await settle()
    client, upstream = local.take()
    (stopped,) = client
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert 2300 <= stopped["audio_end_ms"] <= 2420  # where the speech paused
    # The second look heard the turn sent so far and the pause held since.
    assert model.asked[1] >= model.asked[0] + 0.075
    assert [f["type"] for f in map(json.loads, upstream)][-2:] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    local.close()


async def test_semantic_vad_ends_a_finished_turn_once_the_pause_lasts_its_shortest() -> None:
    # --turn-min-silence-ms 270: "finished" 120 ms into the pause; the turn ends, and is
    # committed upstream, once the pause has lasted 270 ms, where the speech paused.
    model = ScriptedTurns(0.9)
    local, _ = turns(TurnModel(model, min_silence_ms=270), type="semantic_vad", eagerness="auto")
    client, _ = feed(local, silence(500) + SAID + silence(120))
    assert [e["type"] for e in client] == ["input_audio_buffer.speech_started"]
    await eventually(lambda: model.answered == 1, 5, 0.005, "the model's answer")
    judge = local._judge
    assert judge is not None
    await eventually(lambda: not judge.asking, 5, 0.005, "the answer taken")
    fed_ms, events, frames = 500 + len(SAID) / 48 + 120, [], []
    while not events and fed_ms < 4000:
        local.append(silence(20))
        fed_ms += 20
        client, upstream = local.take()
        events += client
        frames += [json.loads(f)["type"] for f in upstream]
    (stopped,) = events
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert 2300 <= stopped["audio_end_ms"] <= 2420  # where the speech paused
    assert 270 <= fed_ms - stopped["audio_end_ms"] <= 400  # the pause when it ended
    assert frames[-2:] == ["input_audio_buffer.commit", "response.create"]
    local.close()


async def test_turn_transcribe_lets_the_words_keep_a_pause_open() -> None:
    # --turn-transcribe: the audio says finished, the words of the turn so far do not end a
    # message: the turn goes on (the eagerness's wait decides), nothing is committed.
    model, words, stt = ScriptedTurns(0.9), ScriptedWords(-20.0), ScriptedStt("one two three")
    local, _ = turns(
        TurnModel(model, text=words, stt=stt, min_silence_ms=0),
        type="semantic_vad",
        eagerness="auto",
    )
    client, _ = feed(local, silence(500) + SAID + silence(120))
    assert [e["type"] for e in client] == ["input_audio_buffer.speech_started"]
    await eventually(lambda: model.answered == 1 and words.scored, 5, 0.005, "both models")
    await settle()
    assert words.scored == ["one two three"]
    # The words heard the turn so far: its speech, sent upstream, and the pause held back.
    assert len(stt.heard) == 1 and 1.9 < stt.heard[0] < 2.6
    for _ in range(10):
        local.append(silence(20))
    await settle()
    client, upstream = local.take()
    assert client == []
    assert "input_audio_buffer.commit" not in [f["type"] for f in map(json.loads, upstream)]
    assert model.answered == 1  # no second look where the words cannot end a message
    local.close()


async def test_barge_in_cancels_the_response_in_progress() -> None:
    local, _ = turns()
    feed(local, SAID + silence(1000))
    local.upstream_event(
        {"type": "response.created", "response": {"id": "resp_1", "conversation_id": "conv_1"}}
    )
    _, upstream = feed(local, SAID[:9600])
    assert {"type": "response.cancel", "response_id": "resp_1"} in [
        {k: v for k, v in f.items() if k != "event_id"} for f in upstream
    ]
    local.upstream_event({"type": "response.done", "response": {"id": "resp_1"}})
    _, upstream = feed(local, SAID + silence(1000))
    assert [f["type"] for f in upstream][-1] == "response.create"


async def test_the_committed_item_has_the_id_the_client_was_told() -> None:
    local, _ = turns()
    client, _ = feed(local, SAID + silence(1000))
    told = client[0]["item_id"]
    local.upstream_event({"type": "input_audio_buffer.committed", "item_id": "item_up1"})
    shown = local.items.to_client('{"type":"conversation.item.added","item":{"id":"item_up1"}}')
    assert json.loads(shown)["item"]["id"] == told
    back = local.items.to_upstream(
        json.dumps({"type": "conversation.item.delete", "item_id": told})
    )
    assert json.loads(back)["item_id"] == "item_up1"
    # A commit the upstream refused is not waiting for its committed event any more.
    client, upstream = feed(local, SAID + silence(1000))
    commit = next(f for f in upstream if f["type"] == "input_audio_buffer.commit")
    local.upstream_event({"type": "error", "error": {"event_id": commit["event_id"]}})
    local.upstream_event({"type": "input_audio_buffer.committed", "item_id": "item_up3"})
    assert local.items.to_client('"item_up3"') == '"item_up3"'


async def test_turn_detection_this_server_cannot_run_is_refused() -> None:
    td = {"type": "server_vad", "idle_timeout_ms": 6000}
    session = {"audio": {"input": {"turn_detection": td}}}
    with pytest.raises(ClientError) as refused:
        read_turn_detection(session, beta=False)
    assert refused.value.param == "session.audio.input.turn_detection.idle_timeout_ms"
    with pytest.raises(ClientError):
        read_turn_detection({"turn_detection": {"type": "semantic_vad", "eagerness": "x"}}, True)
    assert read_turn_detection({"turn_detection": None}, beta=True) == (True, None)
