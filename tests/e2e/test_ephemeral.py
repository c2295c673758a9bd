"""Ephemeral keys: minted with the SDK, accepted wherever an API key is, carrying a session."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import MOCK_ARGS
from tests.servers import RunningServer, relay_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEY = "sk-ephemeral-test"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    with relay_server(*MOCK_ARGS, "--api-keys", KEY) as server:
        yield server


async def test_minted_key_starts_sessions_with_its_config(keyed_server: RunningServer) -> None:
    async with AsyncOpenAI(api_key=KEY, base_url=keyed_server.base_url) as client:
        secret = await client.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 120},
            session={
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "Be a pirate.",
                "audio": {"output": {"voice": "marin"}},
            },
        )
    assert secret.value.startswith("ek_")
    assert secret.session.type == "realtime"
    async with AsyncOpenAI(api_key=secret.value, base_url=keyed_server.base_url) as browser:
        for _ in range(2):  # a key may start several sessions until it expires
            async with browser.realtime.connect(model="gpt-realtime") as conn:
                created = json.loads(await conn.recv_bytes())
                assert created["session"]["instructions"] == "Be a pirate."
                assert created["session"]["audio"]["output"]["voice"] == "marin"


async def test_transcription_key(keyed_server: RunningServer) -> None:
    async with AsyncOpenAI(api_key=KEY, base_url=keyed_server.base_url) as client:
        secret = await client.realtime.client_secrets.create(
            session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        )
    url = f"{keyed_server.ws_base_url}/realtime"
    async with connect(url, additional_headers={"Authorization": f"Bearer {secret.value}"}) as ws:
        created = json.loads(await ws.recv())
        assert created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"


async def test_bad_keys_and_requests_are_refused(keyed_server: RunningServer) -> None:
    async with AsyncOpenAI(api_key="sk-wrong", base_url=keyed_server.base_url) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.realtime.client_secrets.create()
    async with AsyncOpenAI(api_key=KEY, base_url=keyed_server.base_url) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": 5}
            )
        assert bad.value.body["param"] == "expires_after.seconds"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            await client.realtime.client_secrets.create(
                session={"type": "realtime", "audio": {"output": {"speed": 9}}}
            )
        secret = await client.realtime.client_secrets.create()
    forged = secret.value[:-2] + ("AA" if not secret.value.endswith("AA") else "BB")
    url = f"{keyed_server.ws_base_url}/realtime?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={"Authorization": f"Bearer {forged}"}):
            pass
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body or b"{}")
    assert body["error"]["code"] == "invalid_api_key"
    # An ephemeral key cannot mint more keys.
    async with AsyncOpenAI(api_key=secret.value, base_url=keyed_server.base_url) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.realtime.client_secrets.create()


async def test_beta_sessions_and_transcription_sessions(keyed_server: RunningServer) -> None:
    async with AsyncOpenAI(api_key=KEY, base_url=keyed_server.base_url) as client:
        session = await client.beta.realtime.sessions.create(
            model="gpt-4o-realtime-preview",
            instructions="Speak like a robot.",
            input_audio_format="g711_ulaw",
        )
        trx = await client.beta.realtime.transcription_sessions.create(
            input_audio_transcription={"model": "whisper-1"},
        )
    assert session.client_secret.value.startswith("ek_")
    assert (
        session.instructions == "Speak like a robot." and session.input_audio_format == "g711_ulaw"
    )
    assert trx.client_secret.value.startswith("ek_")
    beta = AsyncOpenAI(
        api_key=session.client_secret.value,
        base_url=keyed_server.base_url,
        websocket_base_url=keyed_server.ws_base_url,
    )
    async with beta.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        created = json.loads(await conn.recv_bytes())
        assert created["session"]["instructions"] == "Speak like a robot."
        assert created["session"]["input_audio_format"] == "g711_ulaw"
    await beta.close()
    url = f"{keyed_server.ws_base_url}/realtime"
    headers = {"Authorization": f"Bearer {trx.client_secret.value}", "OpenAI-Beta": "realtime=v1"}
    async with connect(url, additional_headers=headers) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "transcription_session.created"
        assert created["session"]["input_audio_transcription"]["model"] == "whisper-1"


async def test_cors_preflight(keyed_server: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.options(
            f"{keyed_server.base_url}/realtime/client_secrets",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] in ("*", "https://app.example")
