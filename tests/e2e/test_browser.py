"""The playground page at ``/`` in headless Chromium: a whole call driven through its controls.

Chromium's fake microphone plays a WAV; the test reads and drives the page over the DevTools
protocol. ``PLAYGROUND_SCREENSHOT=docs/playground.png`` saves the screenshot the README shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.client import silence, speech
from tests.servers import RunningServer
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def chromium() -> str:
    """Debian's chromium, which the test bootstrap installs (``make test-deps``)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed: run `make test-deps` as root (apt-get)")
    return path


@dataclass
class Chromium:
    process: subprocess.Popen[bytes]
    profile: Path
    log: Path

    def debugging_port(self) -> int | None:
        """The DevTools port Chromium chose (``--remote-debugging-port=0``), once it has
        written it; fails with Chromium's own output if Chromium has exited."""
        if self.process.poll() is not None:
            said = self.log.read_text(errors="replace").splitlines()[-30:]
            raise AssertionError("chromium exited:\n" + "\n".join(said))
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.profile / "DevToolsActivePort").read_text().splitlines()[0])
        return None


@contextlib.contextmanager
def browser(url: str, wav: Path, profile: Path) -> Iterator[Chromium]:
    log = profile.parent / "chromium.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                chromium(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--allow-loopback-in-peer-connection",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1500,1000",
                "--remote-debugging-port=0",  # Chromium picks one: DevToolsActivePort
                url,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Chromium(process, profile, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The local and remote addresses of the call's selected ICE candidate pair.
SELECTED_PAIR = """call.pc.getStats().then((stats) => {
  const all = [...stats.values()];
  const transport = all.find((s) => s.type === "transport");
  const pair = stats.get(transport.selectedCandidatePairId);
  return [stats.get(pair.localCandidateId).address, stats.get(pair.remoteCandidateId).address];
})"""


class Page:
    """One DevTools connection to the page: evaluate JavaScript, take a screenshot."""

    def __init__(self, cdp: ClientConnection) -> None:
        self._cdp = cdp
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self._cdp.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._cdp.recv())
            if reply.get("id") == request_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]  # type: ignore[no-any-return]

    async def js(self, expression: str, await_promise: bool = False) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def text(self, selector: str) -> list[str]:
        return await self.js(  # type: ignore[no-any-return]
            f"[...document.querySelectorAll({json.dumps(selector)})].map((n) => n.textContent)"
        )


@contextlib.asynccontextmanager
async def open_page(chromium: Chromium, url: str) -> AsyncIterator[Page]:
    """The DevTools connection to the tab showing ``url`` (not a blank tab Chromium may
    open first), once the playground's scripts have run."""

    async def page_target() -> str | None:
        port = chromium.debugging_port()
        if port is None:
            return None
        with contextlib.suppress(httpx.HTTPError, OSError):
            async with httpx.AsyncClient() as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(url)]
            return next((str(t["webSocketDebuggerUrl"]) for t in pages), None)
        return None

    target: str = await eventually(page_target, 30, 0.2, "chromium's page")  # type: ignore[arg-type]
    async with connect(target, max_size=None) as cdp:
        page = Page(cdp)
        ready = "document.readyState === 'complete' && typeof call === 'object'"
        await eventually(lambda: page.js(ready), 30, 0.2, "the playground loaded")
        yield page


def question_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        out.writeframes(silence(500) + speech("hello there how are you today") + silence(1500))
    return path


async def until(page: Page, expression: str, what: str) -> None:
    try:
        await eventually(lambda: page.js(f"Boolean({expression})"), 60, 0.25, what)
    except TimeoutError:
        chat = await page.text("#chat .turn")
        pytest.fail(f"{what}: not seen; chat {chat}, status {await page.text('#status')}")


def set_field(element_id: str, value: str) -> str:
    """JavaScript that sets a form field and fires its input event, as typing would."""
    return (
        f"(() => {{ const n = $({json.dumps(element_id)}); n.value = {json.dumps(value)};"
        " n.dispatchEvent(new Event('input')); })()"
    )


async def test_playground_runs_a_whole_call(mock_server: RunningServer, tmp_path: Path) -> None:
    wav = question_wav(tmp_path / "question.wav")
    url = f"http://127.0.0.1:{mock_server.port}/"
    with browser(url, wav, tmp_path / "profile") as chromium:
        async with open_page(chromium, url) as page:
            await settings_before_the_call(page)
            await a_spoken_turn(page)
            await a_typed_turn_with_a_tool_call(page)
            await settings_during_the_call(page)
            await push_to_talk(page)
            await the_event_log_filters(page)
            await screenshot(page, tmp_path)
            await page.js("$('stop').click()")
            assert await page.text("#status") == ["hung up"]


async def settings_before_the_call(page: Page) -> None:
    await page.js(set_field("instructions", "You are the playground test."))
    await page.js(set_field("voice", "cedar"))
    await page.js(set_field("turn-type", "server_vad"))
    await page.js(set_field("silence-ms", "300"))
    await page.js(set_field("noise", "near_field"))
    await page.js("$('start').click()")
    await until(page, "call.session && $('status').textContent === 'connected: speak'", "connected")
    session = await page.js("call.session")
    assert session["instructions"] == "You are the playground test."
    assert session["audio"]["output"]["voice"] == "cedar"
    detection = session["audio"]["input"]["turn_detection"]
    assert detection["type"] == "server_vad" and detection["silence_duration_ms"] == 300
    assert session["audio"]["input"]["noise_reduction"]["type"] == "near_field"
    assert [tool["name"] for tool in session["tools"]] == ["get_weather"]
    # The media's pair of addresses: loopback both ends (the relay gathers on 127.0.0.1
    # only, bench/harness.py, and drops the browser's candidates elsewhere).
    assert await page.js(SELECTED_PAIR, await_promise=True) == ["127.0.0.1", "127.0.0.1"]


async def a_spoken_turn(page: Page) -> None:
    """The WAV's question: the user's transcript, the reply's words and audio, the latency."""
    await until(
        page,
        "[...document.querySelectorAll('#chat .turn.assistant .latency')]"
        ".some((n) => n.textContent.startsWith('first audio'))",
        "a spoken turn with its latency",
    )
    users = await page.text("#chat .turn.user .text")
    assert any("seconds of audio" in text for text in users), users
    assistants = await page.text("#chat .turn.assistant .text")
    assert any(text.startswith("I heard") for text in assistants), assistants
    latency = (await page.text("#chat .turn.assistant .latency"))[0]
    assert "ms after end of speech" in latency and "response" in latency, latency
    assert int((await page.text("#audio-level"))[0]) > 0
    assert int(await page.js("$('in-level').dataset.sounds || 0")) > 0
    # Chromium's fake microphone plays the WAV in a loop: mute it, or it keeps talking.
    await page.js("$('mute').click()")
    assert await page.js("call.mic.enabled") is False
    await until(page, "!call.responding", "the spoken turns' replies done")


async def a_typed_turn_with_a_tool_call(page: Page) -> None:
    """The mock's script calls get_weather for "weather"; the page answers with the canned
    result and asks for the next response, as an app with that tool would."""
    await page.js(set_field("tool-result", '{"forecast": "foggy"}'))
    await page.js(set_field("text", "what is the weather in Paris"))
    await page.js("$('text-form').requestSubmit()")
    await until(
        page,
        "[...document.querySelectorAll('#chat .turn.assistant .text')]"
        ".some((n) => n.textContent.includes('foggy'))",
        "the reply after the tool result",
    )
    tools = await page.text("#chat .turn.tool .text")
    assert 'get_weather({"city":"Paris"})' in tools[0].replace(" ", ""), tools
    assert '{"forecast": "foggy"}' in tools
    assert "what is the weather in Paris" in await page.text("#chat .turn.user .text")


async def settings_during_the_call(page: Page) -> None:
    await page.js(set_field("turn-type", "semantic_vad"))
    await page.js(set_field("eagerness", "high"))
    await page.js(set_field("instructions", "Changed during the call."))
    await page.js("$('apply').click()")
    await until(page, "call.session.instructions === 'Changed during the call.'", "the update")
    detection = await page.js("call.session.audio.input.turn_detection")
    assert detection["type"] == "semantic_vad" and detection["eagerness"] == "high"
    await page.js(set_field("tools", "[not json"))  # refused in the page, nothing sent
    await page.js("$('apply').click()")
    assert "JSON" in (await page.text("#settings-error"))[0]
    await page.js(set_field("tools", "[]"))
    await page.js("$('mute').click()")  # unmuted: the microphone is on again
    assert await page.js("call.mic.enabled") is True
    await page.js("$('mute').click()")
    assert await page.js("call.mic.enabled") is False


async def push_to_talk(page: Page) -> None:
    """Turn detection none: the microphone is open only while the button is held."""
    await page.js(set_field("turn-type", "none"))
    await page.js("$('apply').click()")
    await until(page, "call.session.audio.input.turn_detection === null", "push to talk")
    assert await page.js("call.mic.enabled") is False and await page.js("!$('ptt').disabled")
    replies = len(await page.text("#chat .turn.assistant"))
    sounds = int(await page.js("$('in-level').dataset.sounds"))
    await page.js("$('ptt').dispatchEvent(new PointerEvent('pointerdown'))")
    await until(page, f"Number($('in-level').dataset.sounds) > {sounds + 20}", "a second of sound")
    await page.js("$('ptt').dispatchEvent(new PointerEvent('pointerup'))")
    await until(
        page, f"document.querySelectorAll('#chat .turn.assistant').length > {replies}", "a reply"
    )
    await until(
        page,
        "[...document.querySelectorAll('#chat .turn.assistant .latency')]"
        ".some((n) => n.textContent.includes('after release'))",
        "the push-to-talk turn's latency",
    )


async def the_event_log_filters(page: Page) -> None:
    total = int(await page.js("$('log').children.length"))
    await page.js(set_field("log-filter", "response.done"))
    shown = await page.text("#log li:not(.hidden) summary")
    assert shown and all(text.endswith("response.done") for text in shown), shown
    assert total > len(shown)
    await page.js("$('log-server').click()")  # received events off: response.done is one
    assert await page.text("#log li:not(.hidden)") == []
    await page.js("$('log-server').click()")
    await page.js(set_field("log-filter", ""))


async def screenshot(page: Page, tmp_path: Path) -> None:
    shot = await page.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    target = Path(os.environ.get("PLAYGROUND_SCREENSHOT", tmp_path / "playground.png"))
    await asyncio.to_thread(target.write_bytes, png)
