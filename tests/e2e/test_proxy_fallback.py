"""``--backend openai --fallback mock``: sessions the upstream cannot serve go on with a
backend of this server (transceiver/proxy/fallback.py).

The fallback here is the mock, which needs no models; ``--fallback local`` takes the same
code path with the local pipeline as its backend (transceiver/startup.py build_backend)."""

from __future__ import annotations

import contextlib
import http
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.chat_server import chat_server
from tests.e2e.client import Recorder, user_message, user_text
from tests.e2e.conftest import MOCK_ARGS, PREFIX, UPSTREAM_KEY
from tests.e2e.test_proxy import client_for, refused
from tests.servers import RunningServer, free_port, relay_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

LINK_SECRET = "link-secret-of-the-fallback-tests"
FALLBACK_CODE = "upstream_unavailable_fallback"
TEXT = {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}


MOCK_FALLBACK = ("--fallback", "mock", *MOCK_ARGS[2:])


@contextlib.contextmanager
def fallback_proxy(
    url: str, *extra: str, key: str = UPSTREAM_KEY, fallback: tuple[str, ...] = MOCK_FALLBACK
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """A relay, and its transceiver: the openai proxy in front of ``url``, falling back to
    the mock (``MOCK_ARGS``) unless told otherwise."""
    args = ("--backend", "openai", "--upstream-url", url, *fallback, *extra)
    env = {"OPENAI_API_KEY": key, "RELAY_LINK_SECRET": LINK_SECRET}
    with relay_server(*args, command="transceiver", env=env) as member:
        relay_args = ("--transceiver", f"ws://127.0.0.1:{member.port}", "--api-keys", "sk-client")
        with relay_server(*relay_args, command="relay", env=env) as relay:
            yield relay, member


async def fallbacks(member: RunningServer) -> dict[str, float]:
    """The transceiver's ``realtime_transceiver_fallbacks_total``, by reason."""
    async with httpx.AsyncClient(timeout=10) as http_client:
        metrics = await http_client.get(
            f"{member.base_url}/metrics", headers={"Authorization": f"Bearer {LINK_SECRET}"}
        )
    prefix = 'realtime_transceiver_fallbacks_total{reason="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in metrics.text.splitlines()
        if line.startswith(prefix)
    }


@contextlib.asynccontextmanager
async def refusing_upstream(how: str) -> AsyncIterator[str]:
    """An upstream URL that takes no session: nothing listening, or HTTP 503 (busy)."""
    if how == "unreachable":
        yield f"ws://127.0.0.1:{free_port()}/v1/realtime"
        return

    def busy(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")

    async def never(connection: ServerConnection) -> None:
        raise AssertionError("the handshake is refused")

    async with serve(never, "127.0.0.1", 0, process_request=busy) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


async def text_turn(rec: Recorder, text: str) -> dict[str, Any]:
    """A user text message and its reply's ``response.done``."""
    await user_text(rec, text)
    await rec.send({"type": "response.create"})
    return await rec.until("response.done")


def reply_text(done: dict[str, Any]) -> str:
    part = done["response"]["output"][0]["content"][0]
    return str(part.get("text") or part.get("transcript"))


@pytest.mark.parametrize("refusal", ["unreachable", "capacity"])
async def test_a_session_the_upstream_cannot_take_starts_on_the_fallback(refusal: str) -> None:
    async with refusing_upstream(refusal) as url:
        with fallback_proxy(url, "--instructions-prefix", PREFIX) as (server, member):
            async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                created = await rec.until("session.created")
                assert rec.events == [created]  # one session.created, the fallback's
                assert created["session"]["instructions"] == PREFIX  # the policy holds
                notice = (await rec.until("error"))["error"]
                assert notice["code"] == FALLBACK_CODE and notice["type"] == "server_error"
                await rec.send(TEXT)
                await rec.until("session.updated")
                done = await text_turn(rec, "hello from the fallback")
                assert done["response"]["status"] == "completed"
                assert reply_text(done) == "hello from the fallback"  # the mock echoes
                rec.check()
            assert await fallbacks(member) == {refusal: 1.0}


async def test_a_dropped_session_goes_on_with_its_conversation() -> None:
    """The upstream drops the session in the middle of its second reply: that reply ends
    (failed), and the fallback goes on with the conversation, ids and all."""
    # Turn one is about 20 upstream events; the drop comes within the long second reply.
    faulty = (*MOCK_ARGS, "--api-keys", UPSTREAM_KEY, "--mock-fault-close-after", "32")
    with relay_server(*faulty) as up, fallback_proxy(f"{up.ws_base_url}/realtime") as proxy:
        server, member = proxy
        async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await rec.until("session.created")
            first = await text_turn(rec, "My name is Ada")
            assert first["response"]["status"] == "completed", "the drop came too early"
            (user_id,) = {e["item"]["id"] for e in rec.of_type("conversation.item.done")} - {
                item["id"] for item in first["response"]["output"]
            }
            answer_id = first["response"]["output"][0]["id"]
            await user_text(rec, "tell me a long story")
            story_id = (await rec.until("conversation.item.done"))["item"]["id"]
            await rec.send({"type": "response.create"})
            notice = await rec.until("error", timeout_s=20)
            assert notice["error"]["code"] == FALLBACK_CODE
            cut = rec.of_type("response.done")[-1]["response"]  # before the notice
            assert cut["status"] == "failed" and cut["id"] != first["response"]["id"]
            assert cut["status_details"]["error"]["code"] == "upstream_unavailable"
            partial = cut["output"][0]["content"][0]["transcript"]
            assert "Once upon a time".startswith(partial) or partial.startswith("Once upon")
            # The fallback has the conversation, with the ids the client knows.
            await rec.send({"type": "conversation.item.retrieve", "item_id": user_id})
            retrieved = (await rec.until("conversation.item.retrieved"))["item"]
            assert retrieved["content"][0]["text"] == "My name is Ada"
            await rec.send({"type": "conversation.item.retrieve", "item_id": answer_id})
            retrieved = (await rec.until("conversation.item.retrieved"))["item"]
            assert retrieved["content"][0]["transcript"] == "My name is Ada"
            note = {**user_message("a note"), "previous_item_id": answer_id}
            await rec.send(note)
            assert (await rec.until("conversation.item.added"))["previous_item_id"] == answer_id
            # Its reply sees the earlier conversation: the mock echoes the last user
            # message in the context, here turn one's once the others are deleted.
            for item_id in (story_id, (rec.of_type("conversation.item.added")[-1]["item"]["id"])):
                await rec.send({"type": "conversation.item.delete", "item_id": item_id})
                await rec.until("conversation.item.deleted")
            await rec.send(TEXT)
            await rec.until("session.updated")
            await rec.send({"type": "response.create"})
            done = await rec.until("response.done")
            assert done["response"]["status"] == "completed"
            assert reply_text(done) == "My name is Ada"
            assert len(rec.of_type("session.created")) == 1
            assert [e["error"]["code"] for e in rec.of_type("error")] == [FALLBACK_CODE]
            rec.check()  # every response.created has its one response.done
        assert await fallbacks(member) == {"dropped": 1.0}


async def test_refused_credentials_do_not_fall_back(upstream: RunningServer) -> None:
    """A configuration error is not hidden behind the fallback."""
    url = f"{upstream.ws_base_url}/realtime"
    with fallback_proxy(url, key="sk-wrong") as (server, member):
        first, closed = await refused(f"{server.ws_base_url}/realtime?model=gpt-realtime")
        assert first["type"] == "error" and first["error"]["code"] == "upstream_auth_failed"
        assert closed == 1008
        assert await fallbacks(member) == {}


async def test_the_local_pipeline_as_the_fallback() -> None:
    """``--fallback local``: the bundled whisper and piper, loaded at start, and an LLM
    behind a URL (scripted, tests/chat_server.py) that shows what the fallback asked it."""
    # Turn one in text is 17 upstream events (created, updated, 2 for the item, 13 for the
    # reply): the upstream drops the session right after it.
    faulty = (*MOCK_ARGS, "--api-keys", UPSTREAM_KEY, "--mock-fault-close-after", "17")
    with chat_server() as llm, relay_server(*faulty) as up:
        local = ("--fallback", "local", "--llm-url", llm.base_url, "--llm-model", "scripted")
        with fallback_proxy(f"{up.ws_base_url}/realtime", fallback=local) as (server, member):
            async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
                rec = Recorder(conn)
                await rec.until("session.created")
                await rec.send(TEXT)
                await rec.until("session.updated")
                first = await text_turn(rec, "My name is Ada")
                assert first["response"]["status"] == "completed"
                notice = await rec.until("error", timeout_s=20)
                assert notice["error"]["code"] == FALLBACK_CODE
                done = await text_turn(rec, "What is my name?")
                assert done["response"]["status"] == "completed"
                assert reply_text(done).startswith("Once upon a time")  # the scripted LLM
                rec.check()
            assert await fallbacks(member) == {"dropped": 1.0}
    # The fallback's LLM saw the conversation the upstream had.
    (request,) = llm.requests
    said = [(m["role"], m["content"]) for m in request["messages"] if m["role"] != "system"]
    assert said == [
        ("user", "My name is Ada"),
        ("assistant", "My name is Ada"),  # the upstream mock's echo
        ("user", "What is my name?"),
    ]
