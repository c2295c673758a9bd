"""Stock Node Realtime clients over wss:// (TLS) against the mock server.

Each (client, scenario) runs ``node tests/clients/node/SCRIPT.mjs SCENARIO``; the script
prints one JSON result line and writes every server event it saw, which is then checked
here against the GA SDK's types and the event-stream invariants (tests/invariants.py).

- ``openai`` (npm): ``OpenAIRealtimeWS`` from ``openai/realtime/ws`` (on ``ws``).
- ``@openai/agents-realtime``: ``RealtimeSession`` on ``OpenAIRealtimeWebSocket`` with a
  ``url``; the script also fails on any event the SDK's own zod schemas reject.

Scenarios: a text turn; an audio turn ended by server VAD; a function call round trip
(get_weather -> function_call_output -> spoken reply with the output); an interruption
(response.cancel or ``session.interrupt()`` during a long reply, then a next turn).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.clients.tls import Tls
from tests.e2e.client import silence, speech
from tests.invariants import check_stream
from tests.servers import RunningServer
from tests.waiting import run_process

pytestmark = pytest.mark.timeout(60)

SCRIPTS = {"openai-node": "openai_ws.mjs", "agents-realtime": "agents_realtime.mjs"}
SCENARIOS = ("text", "audio", "function_call", "interrupt")


@pytest.fixture(scope="session")
def speech_pcm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.pcm"
    # 4.5 s of trailing silence: the Agents SDK asks for semantic_vad, whose turn ends after
    # eagerness auto's 4 s of silence when the end-of-turn model judges the mock's synthetic
    # speech unfinished.
    path.write_bytes(silence(400) + speech("hello there how are you today") + silence(4500))
    return path


def run_node(
    node_dir: Path, script: str, scenario: str, env: dict[str, str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    proc = run_process(["node", script, scenario], 45, cwd=node_dir, env={**os.environ, **env})
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1, output
    result: dict[str, Any] = results[0]
    assert result["ok"], f"{result.get('error')}\n{output}"
    assert proc.returncode == 0, output
    lines = Path(result["events_file"]).read_text().splitlines()
    return result, [json.loads(line) for line in lines if line]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("client", list(SCRIPTS))
def test_node_client(
    client: str,
    scenario: str,
    node_clients: Path,
    tls_server: RunningServer,
    tls: Tls,
    speech_pcm: Path,
    tmp_path: Path,
) -> None:
    env = {
        "RELAY_BASE_URL": tls_server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "NODE_EXTRA_CA_CERTS": str(tls.ca_file),
        "SPEECH_PCM": str(speech_pcm),
        "EVENTS_DIR": str(tmp_path),
    }
    result, events = run_node(node_clients, SCRIPTS[client], scenario, env)
    assert (result["client"], result["scenario"]) == (client, scenario)
    check_stream(events)  # every event validates against the GA SDK's types
    assert not [e for e in events if e["type"] == "error"]
    statuses = [e["response"]["status"] for e in events if e["type"] == "response.done"]
    if scenario == "text":
        assert result["reply"] == "hello relay"
        assert statuses == ["completed"]
    elif scenario == "audio":
        assert result["transcript"].startswith("I heard ")
        assert result["input_transcript"].endswith("seconds of audio")
        types = [e["type"] for e in events]
        started = types.index("input_audio_buffer.speech_started")
        assert started < types.index("input_audio_buffer.committed") < types.index("response.done")
        assert "response.output_audio.delta" in types
        assert statuses == ["completed"]
    elif scenario == "function_call":
        assert result["reply"] == "The weather tool said: " + (
            "sunny in Paris, 21 C" if client == "agents-realtime" else "sunny, 21 C"
        )
        assert result["call_id"].startswith("call_")
        assert statuses == ["completed", "completed"]
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    else:
        assert statuses == ["cancelled", "completed"]
        cancelled = next(e for e in events if e["type"] == "response.done")
        assert cancelled["response"]["id"] == result["cancelled"]
        assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
        assert any(e["type"] == "conversation.item.truncated" for e in events)
