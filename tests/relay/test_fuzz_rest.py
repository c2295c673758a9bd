"""A bounded fuzz of the REST bodies (Hypothesis): ``POST /v1/realtime/client_secrets`` and
the beta ``/v1/realtime/sessions`` and ``/v1/realtime/transcription_sessions``.

Bodies are valid requests with a few places replaced (by arbitrary JSON: deep, wide,
wrong types, huge numbers, NaN-like strings), removed or given extra keys; arbitrary JSON
alone; and raw bytes (cut-off JSON, NaN, BOMs, UTF-16, nesting past the parser's limit,
noise). Whatever comes in: never a 5xx; an error is OpenAI's JSON envelope
(https://platform.openai.com/docs/guides/error-codes); a 200 carries a key this relay
verifies; and a WebSocket session open on the relay the whole time (the bystander) still
answers after every request. The relay is served in this process on 127.0.0.1 in front of
a fake transceiver (tests/relay/inprocess.py). Bounded: 200 + 100 examples, 10-20 s on two
busy cores.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from relay.ephemeral import KeySigner
from tests.relay.inprocess import RunningRelay, fake_transceiver, running_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY, SECRET = "sk-fuzz", "a-secret-for-the-fuzz"
HEADERS = {"Authorization": f"Bearer {KEY}"}
PATHS = (
    "/v1/realtime/client_secrets",
    "/v1/realtime/sessions",
    "/v1/realtime/transcription_sessions",
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the shared tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Served:
    relay: RunningRelay
    http: httpx.AsyncClient
    bystander: ClientConnection
    signer: KeySigner


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    async with (
        fake_transceiver() as fake,
        running_relay([fake], api_keys=[KEY], key_secret=SECRET) as relay,
    ):
        url = f"{relay.ws_url}?model=gpt-realtime"
        async with relay.http() as http, connect(url, additional_headers=HEADERS) as bystander:
            created = json.loads(await asyncio.wait_for(bystander.recv(), 10))
            assert created["type"] == "session.created"
            yield Served(relay, http, bystander, KeySigner(SECRET))


# -- strategies ----------------------------------------------------------------------

NAN_LIKE = ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "-0", "0x10", "", " ", "null"]
FIELDS = [
    # GA client_secrets
    "session", "expires_after", "anchor", "seconds", "type", "model", "instructions", "audio",
    "input", "output", "format", "rate", "transcription", "noise_reduction", "turn_detection",
    "voice", "speed", "tools", "tool_choice", "output_modalities", "max_output_tokens",
    "tracing", "truncation", "prompt", "include", "reasoning", "parallel_tool_calls",
    "threshold", "silence_duration_ms", "prefix_padding_ms", "idle_timeout_ms",
    "create_response", "interrupt_response", "eagerness", "name", "parameters", "id",
    # beta
    "client_secret", "modalities", "temperature", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "input_audio_noise_reduction", "max_response_output_tokens",
    "object", "expires_at",
]  # fmt: skip
WORDS = [
    "realtime", "transcription", "server_vad", "semantic_vad", "audio/pcm", "audio/pcmu",
    "audio/pcma", "pcm16", "g711_ulaw", "function", "mcp", "created_at", "audio", "text",
    "auto", "inf", "alloy", "gpt-realtime", "whisper-1", "near_field",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.integers(-(10**300), 10**300),  # huge: past every bound, still JSON
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
    st.sampled_from(NAN_LIKE + WORDS),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=24,
)


def _nest(depth: int, leaf: Any, as_object: bool) -> Any:
    for level in range(depth):
        leaf = {"a": leaf} if as_object or level % 2 else [leaf]
    return leaf


# Deeper than the depth bound (100), and than the recursion limit lets copy.deepcopy go;
# json.dumps itself recurses, so 700 at most.
depths = st.one_of(st.sampled_from([100, 101, 400, 700]), st.integers(90, 700))
deep = st.builds(_nest, depths, scalars, st.booleans())
wide = st.one_of(
    st.integers(0, 20_000).map(lambda n: list(range(n))),
    st.integers(0, 5_000).map(lambda n: {f"k{i}": i for i in range(n)}),
    st.integers(0, 300_000).map(lambda n: "x" * n),
)
anything = st.one_of(values, deep, wide)


TURN_DETECTION = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": 6000,
    "create_response": True,
    "interrupt_response": False,
}
TOOL = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
AUDIO_INPUT = {
    "format": {"type": "audio/pcm", "rate": 24000},
    "turn_detection": TURN_DETECTION,
    "transcription": {"model": "whisper-1", "language": "en", "prompt": "p"},
    "noise_reduction": {"type": "near_field"},
}
# Valid bodies of each endpoint: every example is one of them with a few places changed.
TEMPLATES: dict[str, list[dict[str, Any]]] = {
    PATHS[0]: [
        {
            "expires_after": {"anchor": "created_at", "seconds": 600},
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "Hi.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": AUDIO_INPUT,
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.0},
                },
                "tools": [TOOL],
                "tool_choice": "auto",
                "max_output_tokens": 100,
                "tracing": "auto",
                "truncation": "auto",
            },
        },
        {
            "session": {
                "type": "transcription",
                "audio": {"input": AUDIO_INPUT},
                "include": ["item.input_audio_transcription.logprobs"],
            }
        },
    ],
    PATHS[1]: [
        {
            "client_secret": {"expires_after": {"anchor": "created_at", "seconds": 60}},
            "model": "gpt-realtime",
            "modalities": ["audio", "text"],
            "instructions": "Hi.",
            "voice": "alloy",
            "speed": 1.0,
            "temperature": 0.8,
            "input_audio_format": "pcm16",
            "output_audio_format": "g711_ulaw",
            "turn_detection": TURN_DETECTION,
            "input_audio_transcription": {"model": "whisper-1"},
            "input_audio_noise_reduction": {"type": "far_field"},
            "tools": [TOOL],
            "tool_choice": "auto",
            "max_response_output_tokens": "inf",
        }
    ],
    PATHS[2]: [
        {
            "client_secret": {"expires_after": {"anchor": "created_at", "seconds": 60}},
            "input_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": TURN_DETECTION,
            "input_audio_noise_reduction": {"type": "near_field"},
            "include": ["item.input_audio_transcription.logprobs"],
        }
    ],
}


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> Any:
    """``template`` with one to three places replaced, removed, or given an extra key; a
    place is found by a random walk down from the root (shallow places are likelier)."""
    body: Any = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        parent: Any = None
        key: Any = None
        node = body
        while isinstance(node, dict | list) and node and draw(st.integers(0, 4)) > 0:
            parent, key = (
                node,
                draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node)))),
            )
            node = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "remove", "extra"]))
        if parent is None:
            body = draw(anything) if action == "replace" else body
        elif action == "replace":
            parent[key] = draw(anything)
        elif action == "remove":
            del parent[key]
        elif isinstance(node, dict):
            node[draw(keys)] = draw(anything)
    return body


requests = st.one_of(
    *[
        st.tuples(st.just(path), mutated(template))
        for path, templates in TEMPLATES.items()
        for template in templates
    ],
    st.tuples(st.sampled_from(PATHS), anything),
)

RAW = [
    b"", b"{", b"}", b"NaN", b"Infinity", b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}',
    b'{"seconds": ' + b"9" * 5000 + b"}",  # past Python's int digits limit
    b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM
    '{"session": {}}'.encode("utf-16"), '{"a": 1}'.encode("utf-32"),
    b'{"a": "\xff\xfe"}', b'{"a": "\\ud800"}', b'{"a": 1, "a": 2}', b"\x00" * 64,
]  # fmt: skip
raw_bodies = st.one_of(
    st.sampled_from(RAW),
    st.binary(max_size=256),
    requests.map(lambda r: json.dumps(r[1]).encode()).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda cut: b[:cut])  # truncated JSON
    ),
)


DEEP_TOOL = json.dumps(
    {"session": {"tools": [{**TOOL, "parameters": _nest(400, 1, True)}]}}
).encode()


# -- checks ----------------------------------------------------------------------------


async def check(served: Served, path: str, content: bytes) -> None:
    reply = await served.http.post(
        path, headers={**HEADERS, "Content-Type": "application/json"}, content=content
    )
    assert reply.status_code < 500, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    if reply.status_code == 200:
        secret = body["value"] if path == PATHS[0] else body["client_secret"]["value"]
        served.signer.verify(secret)
    else:
        assert reply.status_code in (400, 413), reply.text
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None or isinstance(error["param"], str)
    # The bystander still answers: its frame comes back through the relay.
    ping = json.dumps({"type": "test.ping", "n": reply.status_code})
    await served.bystander.send(ping)
    assert await asyncio.wait_for(served.bystander.recv(), 10) == ping


@FUZZ
@given(request=requests)
# A case an attacker-style run found (tests/relay/test_rest_hardening.py has each).
@example(request=(PATHS[0], {"session": {"model": ["x"]}}))
async def test_any_json_body(served: Served, request: tuple[str, Any]) -> None:
    path, body = request
    await check(served, path, json.dumps(body).encode())


@settings(FUZZ, max_examples=100)
@given(path=st.sampled_from(PATHS), content=raw_bodies)
# The cases an attacker-style run found, as bytes (Hypothesis prints examples recursively).
@example(path=PATHS[2], content=b"[" * 3000 + b"]" * 3000)
@example(path=PATHS[0], content=DEEP_TOOL)
@example(path=PATHS[1], content=json.dumps({"instructions": _nest(700, None, False)}).encode())
async def test_any_bytes(served: Served, path: str, content: bytes) -> None:
    await check(served, path, content)


async def test_the_templates_are_valid(served: Served) -> None:
    """Every template mints a key, so the changes the fuzz makes are all it refuses; and the
    relay holds the bystander's session only."""
    for path, templates in TEMPLATES.items():
        for template in templates:
            reply = await served.http.post(path, headers=HEADERS, json=template)
            assert reply.status_code == 200, reply.text
    assert len(served.relay.edge.live) == 1
