"""Hypothesis properties of the core.

* Any chunking of appended audio commits the same bytes.
* No sequence of client events, VAD calls, backend output and ticks raises, and every
  stream keeps the section 12 invariants and validates against the official SDK.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transceiver.protocol import SessionKind
from transceiver.protocol.audio import AudioFormatType
from transceiver.protocol.effects import FeedVad, StartResponse, Transcribe

MINUTE_MS = 60_000
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- chunking ------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    fmt=st.sampled_from(["audio/pcm", "audio/pcmu"]),
    with_vad=st.booleans(),
    beta=st.booleans(),
)
def test_any_chunking_commits_the_same_bytes(kit, data, fmt, with_vad, beta) -> None:
    bytes_per_ms = AudioFormatType(fmt).bytes_per_ms
    length = data.draw(st.integers(100 * bytes_per_ms, 2000 * bytes_per_ms), label="length")
    audio = random.Random(data.draw(st.integers(0, 2**32))).randbytes(length)
    cuts = sorted(data.draw(st.lists(st.integers(0, length), max_size=40), label="cuts"))
    chunks = [audio[a:b] for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
    turn_detection = {"type": "server_vad", "create_response": False} if with_vad else None
    h = kit.Harness(
        beta=beta,
        session_overrides={
            "audio": {"input": {"format": {"type": fmt}, "turn_detection": turn_detection}}
        },
    )
    h.drain()
    for chunk in chunks:
        assert h.send({"type": "input_audio_buffer.append", "audio": kit.b64(chunk)}) == []
    committed = h.send({"type": "input_audio_buffer.commit"})[0]
    assert committed["type"] == "input_audio_buffer.committed"
    item = h.retrieve(committed["item_id"])
    assert base64.b64decode(item["content"][0]["audio"]) == audio
    feeds = [e for e in h.effects() if isinstance(e, FeedVad)]
    if with_vad:
        assert b"".join(f.audio for f in feeds) == audio
        offsets = [sum(map(len, chunks[:n])) / bytes_per_ms for n in range(len(chunks))]
        assert [f.start_ms for f in feeds] == pytest.approx(offsets)
    else:
        assert feeds == []
    kit.check_invariants(h.stream, beta=beta)


# -- no sequence raises -------------------------------------------------------------
#
# Strategies are built once (building them per step is what makes Hypothesis slow).
# Ids are drawn as ``Ref``s and bound to what the session has emitted when applied.


class Ref(NamedTuple):
    pool: str  # "item" | "call" | "response"
    n: int


@dataclass
class World:
    """What the test driver knows about the session, to aim its next input."""

    h: Any
    now_ms: float = 0.0
    pools: dict[str, list[str]] = field(
        default_factory=lambda: {"item": [], "assistant": [], "call": [], "response": []}
    )
    started: list[str] = field(default_factory=list)  # from StartResponse effects
    transcribing: list[str] = field(default_factory=list)  # from Transcribe effects
    function_open: dict[str, bool] = field(default_factory=dict)

    def observe(self) -> None:
        for event in self.h.drain():
            for key in ("item_id", "previous_item_id"):
                if isinstance(event.get(key), str):
                    self.pools["item"].append(event[key])
            item = event.get("item")
            if isinstance(item, dict):
                self.pools["item"].append(item["id"])
                if isinstance(item.get("call_id"), str):
                    self.pools["call"].append(item["call_id"])
            if event["type"] == "response.created":
                self.pools["response"].append(event["response"]["id"])
            elif event["type"] == "response.output_item.added":
                self.pools["assistant"].append(event["item"]["id"])
        for effect in self.h.effects():
            if isinstance(effect, StartResponse):
                self.started.append(effect.request.response_id)
            elif isinstance(effect, Transcribe):
                self.transcribing.append(effect.item_id)

    def bind(self, value: Any) -> Any:
        if isinstance(value, Ref):
            pool = self.pools[value.pool]
            return pool[value.n % len(pool)] if pool else f"{value.pool}_unknown"
        if isinstance(value, dict):
            return {key: self.bind(v) for key, v in value.items()}
        if isinstance(value, list):
            return [self.bind(v) for v in value]
        return value


def ref(pool: str) -> st.SearchStrategy[Ref]:
    return st.builds(Ref, st.just(pool), st.integers(0, 1000))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "id", "audio", "item", "session", "x"]) | st.text(max_size=6),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)
WORDS = st.text(max_size=12)
AUDIO = st.integers(0, 4800).map(lambda n: base64.b64encode(bytes(n)).decode("ascii"))
FORMAT = st.sampled_from(
    [{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}, {"type": "audio/pcma"}]
)
TURN = st.none() | st.fixed_dictionaries(
    {"type": st.sampled_from(["server_vad", "semantic_vad"])},
    optional={"create_response": st.booleans(), "interrupt_response": st.booleans()},
).map(lambda td: td if td["type"] == "semantic_vad" else {**td, "idle_timeout_ms": 5000})
TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
ITEM_ID = ref("item") | st.sampled_from(["root", "item_unknown"]) | st.none() | JSON
CALL_ID = ref("call") | st.just("call_x")


def ga_session(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    audio_in = st.fixed_dictionaries(
        {},
        optional={
            "format": FORMAT,
            "turn_detection": TURN,
            "transcription": st.none() | st.just({"model": "whisper-1"}),
            "noise_reduction": st.none() | st.just({"type": "near_field"}),
        },
    )
    realtime = {
        "instructions": WORDS,
        "output_modalities": st.sampled_from([["audio"], ["text"]]),
        "tools": st.sampled_from([[], [TOOL]]),
        "max_output_tokens": st.sampled_from([5, "inf"]),
        "audio": st.fixed_dictionaries(
            {"input": audio_in},
            optional={
                "output": st.fixed_dictionaries(
                    {}, optional={"voice": st.sampled_from(["alloy", "marin"]), "format": FORMAT}
                )
            },
        ),
    }
    optional = (
        realtime if kind == "realtime" else {"audio": st.fixed_dictionaries({"input": audio_in})}
    )
    return st.fixed_dictionaries({}, optional={"type": st.just(kind), **optional})


BETA_SESSION = st.fixed_dictionaries(
    {},
    optional={
        "modalities": st.sampled_from([["text"], ["audio", "text"]]),
        "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw", "mp3"]),
        "output_audio_format": st.sampled_from(["pcm16", "g711_ulaw"]),
        "turn_detection": TURN,
        "temperature": st.sampled_from([0.7, 0.8, 2.0]),
        "input_audio_transcription": st.none() | st.just({"model": "whisper-1"}),
        "voice": st.sampled_from(["alloy", "verse"]),
        "instructions": WORDS,
    },
)
ITEM = st.one_of(
    st.builds(
        lambda role, part: {"type": "message", "role": role, "content": [part]},
        st.sampled_from(["user", "system", "assistant"]),
        st.sampled_from(
            [
                {"type": "input_text", "text": "hi"},
                {"type": "output_text", "text": "o"},
                {"type": "text", "text": "beta"},
            ]
        )
        | AUDIO.map(lambda a: {"type": "input_audio", "audio": a}),
    ),
    st.builds(
        lambda c: {"type": "function_call", "name": "lookup", "call_id": c, "arguments": "{}"},
        CALL_ID,
    ),
    st.builds(lambda c: {"type": "function_call_output", "call_id": c, "output": "ok"}, CALL_ID),
)
RESPONSE = st.fixed_dictionaries(
    {},
    optional={
        "conversation": st.sampled_from(["auto", "none"]),
        "output_modalities": st.sampled_from([["text"], ["audio"]]),
        "modalities": st.sampled_from([["text"], ["audio", "text"]]),
        "instructions": WORDS,
        "metadata": st.just({"k": "v"}),
        "tools": st.just([TOOL]),
        "input": st.lists(ITEM_ID.map(lambda i: {"type": "item_reference", "id": i}), max_size=2),
    },
)


def valid_events(session_update: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    truncate = st.builds(
        lambda i, c, ms: {
            "type": "conversation.item.truncate",
            "item_id": i,
            "content_index": c,
            "audio_end_ms": ms,
        },
        ref("assistant") | ITEM_ID,
        st.sampled_from([0, 0, 0, 1]),
        st.integers(0, 600) | st.integers(-5, 3000),
    )
    create = st.builds(lambda r: {"type": "response.create", "response": r}, RESPONSE)
    return st.sampled_from(
        [
            truncate,
            truncate,
            create,
            create,
            st.builds(lambda s: {"type": "session.update", "session": s}, session_update),
            st.builds(
                lambda s: {"type": "transcription_session.update", "session": s}, BETA_SESSION
            ),
            st.builds(lambda a: {"type": "input_audio_buffer.append", "audio": a}, AUDIO),
            st.sampled_from(
                [
                    {"type": "input_audio_buffer.commit"},
                    {"type": "input_audio_buffer.clear"},
                    {"type": "output_audio_buffer.clear"},
                    {"type": "response.create"},
                    {"type": "response.cancel"},
                ]
            ),
            st.builds(
                lambda i, p: {"type": "conversation.item.create", "item": i, **p},
                ITEM,
                st.fixed_dictionaries({}, optional={"previous_item_id": ITEM_ID}),
            ),
            st.builds(
                lambda t, i: {"type": t, "item_id": i},
                st.sampled_from(["conversation.item.retrieve", "conversation.item.delete"]),
                ITEM_ID,
            ),
            st.builds(
                lambda r: {"type": "response.cancel", "response_id": r}, ref("response") | JSON
            ),
        ]
    ).flatmap(lambda strategy: strategy)


def mutate(event: dict[str, Any], n: int, value: Any, remove: bool) -> dict[str, Any]:
    """The event with one field (maybe nested) replaced by ``value`` or removed."""
    paths: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append((*path, key))
                walk(child, (*path, key))

    walk(event, ())
    copied = copy.deepcopy(event)
    path = paths[n % len(paths)]
    node = copied
    for key in path[:-1]:
        node = node[key]
    if remove:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copied


def client_inputs(session_update: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    valid = valid_events(session_update)
    with_id = st.builds(
        lambda e, i: {**e, **i},
        valid,
        st.fixed_dictionaries({}, optional={"event_id": st.text(max_size=8)}),
    )
    # The shell hands over text, bytes or an already parsed object.
    mutated = st.builds(mutate, valid, st.integers(0, 100), JSON, st.booleans())
    junk = st.one_of(
        st.dictionaries(st.sampled_from(["type", "event_id", "x"]), JSON, max_size=3),
        JSON.map(json.dumps),
        st.text(max_size=20),
        st.binary(max_size=12),
    )
    return st.sampled_from([with_id] * 6 + [mutated] * 2 + [junk]).flatmap(lambda s: s)


CLIENT_INPUTS = {
    (kind, beta): client_inputs(BETA_SESSION if beta else ga_session(kind.value))
    for kind in SessionKind
    for beta in (False, True)
}
ACTIONS = st.sampled_from(
    ["client"] * 8 + ["vad_start", "vad_stop", "tick", "stt"] + ["backend"] * 5
)
TICKS = st.sampled_from([0, 10, 1000, 5000, 20_000] * 4 + [61 * MINUTE_MS])
OVERRIDES = st.sampled_from(
    [
        None,
        {"audio": {"input": {"turn_detection": None}}},
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}},
        {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        {
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "semantic_vad",
                        "interrupt_response": False,
                        "create_response": False,
                    }
                }
            }
        },
    ]
)
INDEX = st.integers(0, 1000)
OUTPUTS = st.sampled_from(
    [
        "text",
        "transcript",
        "audio",
        "audio",
        "spoken",
        "spoken",
        "call",
        "finish",
        "finish",
        "fail",
    ]
)
STT = st.sampled_from(["delta", "completed", "failed"])


def act(w: World, data: st.DataObject) -> None:
    session = w.h.session
    action = data.draw(ACTIONS, label="action")
    if action == "client":
        raw = data.draw(CLIENT_INPUTS[(session.kind, w.h.beta)], label="input")
        session.receive_client_event(w.bind(raw), w.now_ms)
    elif action == "vad_start":
        session.vad_speech_started(data.draw(st.integers(0, 30_000)), w.now_ms)
    elif action == "vad_stop":
        session.vad_speech_stopped(data.draw(st.integers(0, 30_000)), w.now_ms)
    elif action == "tick":
        w.now_ms += data.draw(TICKS)
        session.tick(w.now_ms)
    elif action == "stt" and w.transcribing:
        item_id = w.transcribing[data.draw(INDEX) % len(w.transcribing)]
        op = data.draw(STT)
        if op == "delta":
            session.transcription_delta(item_id, data.draw(WORDS))
        elif op == "completed":
            usage = {"type": "duration", "seconds": 1.5}
            session.transcription_completed(
                item_id, data.draw(WORDS), usage, data.draw(st.sampled_from([None, "en"]))
            )
        else:
            session.transcription_failed(item_id, "The audio could not be transcribed.")
    elif action == "backend" and w.started:
        backend_output(w, data, w.started[data.draw(INDEX) % len(w.started)])
    w.observe()


def backend_output(w: World, data: st.DataObject, rid: str) -> None:
    session = w.h.session
    op = data.draw(OUTPUTS, label="output")
    if w.function_open.get(rid) and data.draw(st.booleans()):
        op = "arguments"  # only while a function call is open: anything else is misuse
    if op in ("text", "transcript", "audio", "spoken"):
        w.function_open[rid] = False
    if op == "spoken":  # a clause and its audio, as a TTS backend sends them
        session.response_transcript_delta(rid, data.draw(WORDS))
        op = "audio"
    if op == "text":
        session.response_text_delta(rid, data.draw(WORDS))
    elif op == "transcript":
        session.response_transcript_delta(rid, data.draw(WORDS))
    elif op == "audio":
        session.response_audio_delta(rid, bytes(2 * data.draw(st.integers(0, 2400))))
    elif op == "call":
        args = data.draw(st.sampled_from(["", '{"q":', "{}"]))
        call_id = session.response_function_call(rid, "lookup", args)
        w.function_open[rid] = call_id is not None
    elif op == "arguments":
        session.response_arguments_delta(rid, data.draw(WORDS))
    elif op == "finish":
        session.response_finished(
            rid, w.now_ms, data.draw(st.sampled_from([None, "max_output_tokens"]))
        )
    elif op == "fail":
        session.response_failed(rid, "The model failed.", w.now_ms)


@SETTINGS
@given(
    data=st.data(),
    kind=st.sampled_from(list(SessionKind)),
    beta=st.booleans(),
    media=st.booleans(),
    seed=st.integers(0, 1000),
    overrides=OVERRIDES,
)
def test_no_sequence_of_inputs_raises(kit, data, kind, beta, media, seed, overrides) -> None:
    h = kit.Harness(kind=kind, beta=beta, media=media, seed=seed, session_overrides=overrides)
    world = World(h)
    world.observe()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        act(world, data)
    if h.session.closed:
        last = h.stream[-1]
        assert last["type"] == "error" and last["error"]["code"] == "session_expired"
    h.check()  # finishes what runs, then the section 12 invariants on the whole stream
    if kind is SessionKind.TRANSCRIPTION:
        assert not any(e["type"].startswith("response.") for e in h.stream)
