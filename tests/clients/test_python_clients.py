"""Stock Python Realtime clients over wss:// (TLS) against the mock server.

- ``openai`` GA (``client.realtime.connect``) and beta (``client.beta.realtime.connect``,
  which always dials wss) with an https ``base_url``: each event is validated against the
  SDK's types and each stream against the event-stream invariants (tests/invariants.py).
- ``openai-agents`` (``agents.realtime``): a RealtimeAgent with a function tool, run by
  RealtimeRunner with the model config's ``url``: a text turn, an audio turn, a function
  call round trip and an interruption. The SDK validates every server event
  with a TypeAdapter over the SDK's union and reports failures (and server ``error``
  events) as session ``error`` events or stored exceptions; either fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agents import function_tool
from agents.realtime import (
    RealtimeAgent,
    RealtimeModelConfig,
    RealtimeRunner,
    RealtimeSessionEvent,
)
from openai import AsyncOpenAI

from tests.e2e.client import Recorder, silence, speech, user_text
from tests.invariants import check_stream
from tests.servers import RunningServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

MODEL = "gpt-realtime"


def client_for(server: RunningServer) -> AsyncOpenAI:
    assert server.base_url.startswith("https://")
    return AsyncOpenAI(api_key="sk-test", base_url=server.base_url)


async def test_openai_ga_text_turn(tls_server: RunningServer, trust_ca: Path) -> None:
    async with client_for(tls_server).realtime.connect(model=MODEL) as conn:
        rec = Recorder(conn)
        created = await rec.until("session.created")
        assert created["session"]["type"] == "realtime"
        await rec.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text"]},
            }
        )
        await rec.until("session.updated")
        await user_text(rec, "hello relay")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        text = "".join(e["delta"] for e in rec.of_type("response.output_text.delta"))
        assert text == "hello relay"
        rec.check()


async def test_openai_beta_text_turn(tls_server: RunningServer, trust_ca: Path) -> None:
    # No websocket_base_url: the beta client maps the https base_url to wss by itself.
    client = client_for(tls_server)
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        rec = Recorder(conn, beta=True)
        created = await rec.until("session.created")
        assert created["session"]["modalities"] == ["audio", "text"]
        await rec.send({"type": "session.update", "session": {"modalities": ["text"]}})
        await rec.until("session.updated")
        await user_text(rec, "hi beta")
        await rec.until("conversation.item.created")
        await rec.send({"type": "response.create"})
        done = await rec.until("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0] == {"type": "text", "text": "hi beta"}
        assert "".join(e["delta"] for e in rec.of_type("response.text.delta")) == "hi beta"
        rec.check()


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}, 21 C"


WEATHER_AGENT = RealtimeAgent(
    name="Assistant", instructions="You are a helpful assistant.", tools=[get_weather]
)


class AgentRun:
    """A RealtimeSession on the relay; its events, and the raw server events for the checks."""

    def __init__(self, server: RunningServer) -> None:
        self.config: RealtimeModelConfig = {
            "url": f"{server.ws_base_url}/realtime?model={MODEL}",
            "api_key": "sk-test",
            # The SDK repeats its model in every session.update and a session's model cannot
            # change, so it must be the URL's (the SDK's default is another model).
            "initial_model_settings": {"model_name": MODEL},
        }
        self.events: list[RealtimeSessionEvent] = []
        self.server_events: list[dict[str, Any]] = []
        self.history: list[Any] = []

    async def __aenter__(self) -> AgentRun:
        self.session = await RealtimeRunner(WEATHER_AGENT).run(model_config=self.config)
        await self.session.__aenter__()
        self._events = aiter(self.session)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.__aexit__(*exc_info)
        await self._events.aclose()

    async def until(
        self, matches: Callable[[RealtimeSessionEvent], bool], timeout_s: float = 10.0
    ) -> RealtimeSessionEvent:
        async with asyncio.timeout(timeout_s):
            while True:
                # An exception the SDK stored (a failure handling an event) raises here.
                event = await anext(self._events, None)
                if event is None:
                    pytest.fail("the agents session ended")
                self.events.append(event)
                if event.type == "error":
                    pytest.fail(f"agents SDK reported an error: {event.error!r}")
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    self.server_events.append(event.data.data)
                if event.type == "history_updated":
                    self.history = event.history
                if matches(event):
                    return event

    def transcripts(self) -> list[str]:
        """The assistant's transcripts in the session history, in order."""
        return [
            "".join(getattr(part, "transcript", None) or "" for part in item.content)
            for item in self.history
            if item.type == "message" and item.role == "assistant"
        ]

    def server_event(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.server_events if e["type"] == event_type]


def is_server_event(event_type: str) -> Callable[[RealtimeSessionEvent], bool]:
    def matches(event: RealtimeSessionEvent) -> bool:
        return (
            event.type == "raw_model_event"
            and event.data.type == "raw_server_event"
            and event.data.data["type"] == event_type
        )

    return matches


async def test_agents_text_turn(tls_server: RunningServer, trust_ca: Path) -> None:
    async with AgentRun(tls_server) as run:
        await run.until(is_server_event("session.updated"))  # the SDK's config was accepted
        await run.session.send_message("hello relay")
        await run.until(lambda e: e.type == "agent_end")  # after response.done
        done = run.server_event("response.done")[-1]
        assert done["response"]["status"] == "completed"
        assert run.transcripts() == ["hello relay"]
        assert any(e.type == "audio" for e in run.events)
        check_stream(run.server_events)


async def test_agents_function_call(tls_server: RunningServer, trust_ca: Path) -> None:
    reply = "The weather tool said: sunny in Paris, 21 C"
    async with AgentRun(tls_server) as run:
        await run.until(is_server_event("session.updated"))
        tools = run.server_event("session.updated")[-1]["session"]["tools"]
        assert [tool["name"] for tool in tools] == ["get_weather"]
        await run.session.send_message("what is the weather in Paris?")
        end = await run.until(lambda e: e.type == "tool_end")
        assert end.type == "tool_end"
        assert end.tool.name == "get_weather" and end.output == "sunny in Paris, 21 C"
        assert end.arguments == '{"city": "Paris"}'
        # The SDK sends function_call_output and asks for the next response by itself.
        await run.until(lambda e: e.type == "history_updated" and reply in run.transcripts())
        await run.until(lambda e: e.type == "agent_end")
        dones = run.server_event("response.done")
        assert [d["response"]["status"] for d in dones] == ["completed", "completed"]
        call = dones[0]["response"]["output"][-1]
        assert call["type"] == "function_call" and call["name"] == "get_weather"
        outputs = [
            e["item"]
            for e in run.server_event("conversation.item.done")
            if e["item"]["type"] == "function_call_output"
        ]
        assert [(o["call_id"], o["output"]) for o in outputs] == [
            (call["call_id"], "sunny in Paris, 21 C")
        ]
        check_stream(run.server_events)


async def test_agents_audio_turn(tls_server: RunningServer, trust_ca: Path) -> None:
    # The Agents SDK asks for semantic_vad: the end-of-turn model may judge the mock's
    # synthetic speech unfinished, and the turn then ends after eagerness auto's 4 s of
    # silence (audio time: the chunks go as fast as the SDK takes them).
    pcm16 = silence(400) + speech("hello there how are you today") + silence(4500)
    async with AgentRun(tls_server) as run:
        await run.until(is_server_event("session.updated"))
        for start in range(0, len(pcm16), 48 * 40):  # 40 ms chunks, as a microphone sends
            await run.session.send_audio(pcm16[start : start + 48 * 40])
        # The SDK's default turn detection (semantic_vad) ends the turn in the silence.
        await run.until(is_server_event("input_audio_buffer.committed"))
        await run.until(lambda e: e.type == "agent_end")
        done = run.server_event("response.done")[-1]
        assert done["response"]["status"] == "completed"
        assert any(e.type == "audio" for e in run.events)
        assert run.transcripts()[-1].startswith("I heard ")
        # The input transcript comes before the reply's output (the mock transcribes first).
        (heard,) = run.server_event("conversation.item.input_audio_transcription.completed")
        committed = run.server_event("input_audio_buffer.committed")[-1]
        assert heard["item_id"] == committed["item_id"]
        assert heard["transcript"].endswith("seconds of audio")
        check_stream(run.server_events)


async def test_agents_interruption(tls_server: RunningServer, trust_ca: Path) -> None:
    async with AgentRun(tls_server) as run:
        await run.until(is_server_event("session.updated"))
        await run.session.send_message("tell me a long story")
        await run.until(lambda e: e.type == "audio")
        await run.session.interrupt()  # response.cancel, then truncate what was played
        await run.until(lambda e: e.type == "audio_interrupted")
        await run.until(is_server_event("response.done"))
        cancelled = run.server_event("response.done")[-1]["response"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["status_details"]["reason"] == "client_cancelled"
        # The session goes on: the next turn completes.
        await run.session.send_message("hello again")
        await run.until(
            lambda e: (
                e.type == "raw_model_event"
                and e.data.type == "raw_server_event"
                and e.data.data["type"] == "response.done"
                and e.data.data["response"]["id"] != cancelled["id"]
            )
        )
        statuses = [d["response"]["status"] for d in run.server_event("response.done")]
        assert statuses == ["cancelled", "completed"]
        check_stream(run.server_events)
