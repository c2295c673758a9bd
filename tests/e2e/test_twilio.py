"""A Twilio phone call against ``realtime-relay serve --backend mock`` on loopback.

The phone (tests/e2e/twilio_client.py) speaks Twilio's Media Streams protocol message for
message: it fetches the TwiML from the voice webhook, opens the stream URL it names with
a signed handshake, says a question in 8 kHz mu-law paced in 20 ms frames, plays the
assistant's ``media`` in real time and echoes its ``mark``s, then talks over the reply:
the relay sends ``clear`` and truncates the item to what was played.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.twilio_client import CALL_SID, STREAM_SID, TwilioPhone, mulaw_speech, sign
from tests.servers import RunningServer, relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "twilio-auth-token-for-the-tests"
STORY = " ".join(["and then the relay spoke once more to the caller"] * 8)
SCRIPT = f"""
transcripts: ["tell me a long story", "wait stop please"]
turns:
  - match: "long story"
    reply: "{STORY}"
"""
FORM = {"AccountSid": "AC" + "0" * 32, "CallSid": CALL_SID, "From": "+15005550006"}


def mock_args(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    script = tmp_path_factory.mktemp("twilio") / "script.yaml"
    script.write_text(SCRIPT)
    return ("--backend", "mock", "--mock-script", str(script), "--mock-first-delta-ms", "20")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The mock backend, with the Twilio auth token."""
    with relay_server(
        *mock_args(tmp_path_factory), env={"RELAY_TWILIO_AUTH_TOKEN": TOKEN}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The openai backend (a proxy) in front of a mock server, with the Twilio auth token."""
    with relay_server(*mock_args(tmp_path_factory)) as upstream:
        args = ("--backend", "openai", "--upstream-url", f"{upstream.ws_base_url}/realtime")
        env = {"RELAY_TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-upstream"}
        with relay_server(*args, env=env) as running:
            yield running


def root(server: RunningServer) -> str:
    return server.base_url.removesuffix("/v1")


async def post_voice(
    server: RunningServer, query: str = "", signature: str | None = None
) -> httpx.Response:
    url = f"{root(server)}/v1/twilio/voice{query}"
    headers = {"X-Twilio-Signature": signature if signature is not None else sign(TOKEN, url, FORM)}
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, data=FORM, headers=headers)


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Stream>``'s URL and parameters, from a ``<Response><Connect><Stream>``."""
    response = ET.fromstring(twiml)
    assert response.tag == "Response"
    stream = response.find("./Connect/Stream")
    assert stream is not None, twiml
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], parameters


def logged(server: RunningServer, event: str) -> list[dict[str, str]]:
    """The fields of each ``event`` line the relay logged."""
    found = []
    for line in list(server.lines):
        match = re.search(rf"\b{re.escape(event)} (.*)$", line)
        if match:
            found.append(dict(re.findall(r"(\w+)=(\S+)", match.group(1))))
    return found


async def test_the_voice_webhook_answers_twiml_for_the_media_stream(server: RunningServer) -> None:
    query = "?instructions=Be+brief.&voice=marin"
    reply = await post_voice(server, query)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/xml")
    url, parameters = stream_of(reply.text)
    assert url == f"{root(server).replace('http://', 'ws://')}/v1/twilio/media"
    assert parameters == {"instructions": "Be brief.", "voice": "marin"}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?session=%7Bnot+json", "session"),
        ("?speed=fast", "speed"),
        ("?session=" + quote('{"audio": {"output": {"format": {"type": "audio/pcm"}}}}'), None),
        ("?session=" + quote('{"type": "transcription"}'), "type"),
        ("?session=" + quote('{"tools": 3}'), None),
    ],
)
async def test_bad_call_settings_are_refused_before_the_call_connects(
    server: RunningServer, query: str, param: str | None
) -> None:
    reply = await post_voice(server, query)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("signature", ["", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="])
async def test_unsigned_or_badly_signed_requests_are_refused(
    server: RunningServer, signature: str
) -> None:
    reply = await post_voice(server, signature=signature)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "invalid_twilio_signature"
    # A signature for other form values does not pass either.
    url = f"{root(server)}/v1/twilio/voice"
    forged = sign(TOKEN, url, {**FORM, "From": "+15005550009"})
    assert (await post_voice(server, signature=forged)).status_code == 403
    media = f"{root(server).replace('http://', 'ws://')}/v1/twilio/media"
    headers = {"X-Twilio-Signature": signature} if signature else {}
    with pytest.raises(InvalidStatus) as info:
        async with connect(media, additional_headers=headers):
            pass
    assert info.value.response.status_code == 403


async def metric(server: RunningServer, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{root(server)}/metrics")).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("backend", ["mock", "proxy"])
async def test_a_call_holds_a_turn_and_barge_in_clears_and_truncates(
    request: pytest.FixtureRequest, backend: str
) -> None:
    server: RunningServer = request.getfixturevalue(
        "server" if backend == "mock" else "proxy_server"
    )
    reply = await post_voice(server, "?instructions=You+tell+stories.")
    url, parameters = stream_of(reply.text)
    placed = await metric(server, 'realtime_relay_sessions_total{transport="twilio"}')
    ws = await connect(url, additional_headers={"X-Twilio-Signature": sign(TOKEN, url)})
    phone = TwilioPhone(ws)
    try:
        await phone.start(parameters)
        phone.say(mulaw_speech("tell me a long story"))
        # The reply plays: media for this stream, each followed by a mark, echoed as played.
        await eventually(lambda: len(phone.played) > 8 * 1500, timeout_s=30, what="1.5 s heard")
        media = phone.of("media")
        assert all(m["streamSid"] == STREAM_SID and m["media"]["payload"] for m in media)
        assert phone.of("mark") and phone.echoed
        assert audible(bytes(phone.played))
        # The caller talks over it: Twilio is told to clear, the item is cut where it was.
        phone.say(mulaw_speech("wait stop please"))
        await eventually(lambda: phone.of("clear"), timeout_s=10, what="clear")
        assert phone.of("clear")[0] == {"event": "clear", "streamSid": STREAM_SID}
        cut = await eventually(lambda: logged(server, "twilio.truncated"), what="truncated")
        heard_ms = len(phone.played[: phone.played_at_clear[0]]) / 8
        audio_end_ms = int(cut[-1]["audio_end_ms"])
        # Counted to the last mark echoed before the cut: 100 ms deltas, 20 ms frames.
        assert heard_ms - 250 <= audio_end_ms <= heard_ms, (audio_end_ms, heard_ms)
        # The next turn is answered.
        size = len(phone.played)
        await eventually(lambda: len(phone.played) > size + 8 * 300, timeout_s=30, what="reply")
        await phone.dtmf("7")
        pressed = await eventually(lambda: logged(server, "twilio.dtmf"), what="dtmf logged")
        assert set(pressed[-1]) == {"conn"}  # the key itself is not logged
        assert (
            await metric(server, 'realtime_relay_sessions_total{transport="twilio"}') == placed + 1
        )
        await phone.stop()
        await eventually(lambda: ws.close_code is not None, what="the relay closed the stream")
        ended = await eventually(lambda: logged(server, "twilio.stream.end"), what="ended")
        assert ended[-1]["dtmf"] == "1"
    finally:
        await phone.close()


def audible(mulaw: bytes) -> bool:
    """Whether mu-law audio holds sound: bytes far from silence (0xFF and 0x7F)."""
    loud = sum(1 for byte in mulaw if (byte & 0x7F) < 0x60)
    return loud > len(mulaw) // 10


async def test_the_accounts_rate_limit_cancels_its_calls_replies(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    args = (*mock_args(tmp_path_factory), "--rate-limit-requests-per-min", "1")
    with relay_server(*args, env={"RELAY_TWILIO_AUTH_TOKEN": TOKEN}) as server:
        url, parameters = stream_of((await post_voice(server)).text)
        ws = await connect(url, additional_headers={"X-Twilio-Signature": sign(TOKEN, url)})
        phone = TwilioPhone(ws)
        try:
            await phone.start(parameters)
            phone.say(mulaw_speech("tell me a long story"))
            await eventually(lambda: len(phone.played) > 8 * 500, timeout_s=30, what="reply")
            assert not logged(server, "twilio.rate_limited")
            # The second turn's response is past the account's one request a minute.
            phone.say(mulaw_speech("wait stop please"))
            limited = await eventually(
                lambda: logged(server, "twilio.rate_limited"), timeout_s=30, what="limited"
            )
            assert set(limited[0]) == {"conn"}
        finally:
            await phone.close()
