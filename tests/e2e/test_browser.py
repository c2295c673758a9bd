"""The relay's page in headless Chromium: it speaks a WAV, and shows transcripts and audio."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.client import silence, speech
from tests.servers import RunningServer, free_port
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def chromium() -> str:
    """Debian's chromium, which the test bootstrap installs (``make test-deps``)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed: run `make test-deps` as root (apt-get)")
    return path


@contextlib.contextmanager
def browser(url: str, wav: Path, profile: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required",
            f"--remote-debugging-port={port}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def page_state(port: int) -> dict[str, str]:
    async with httpx.AsyncClient() as http:
        targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
    page = next(t for t in targets if t["type"] == "page")
    expression = (
        "JSON.stringify(Object.fromEntries(['status', 'transcript', 'audio-level']"
        ".map((id) => [id, document.getElementById(id).textContent])))"
    )
    async with connect(page["webSocketDebuggerUrl"], max_size=None) as cdp:
        await cdp.send(
            json.dumps(
                {"id": 1, "method": "Runtime.evaluate", "params": {"expression": expression}}
            )
        )
        while True:
            reply = json.loads(await cdp.recv())
            if reply.get("id") == 1:
                return json.loads(reply["result"]["result"]["value"])  # type: ignore[no-any-return]


async def test_browser_page_talks_over_webrtc(mock_server: RunningServer, tmp_path: Path) -> None:
    wav = tmp_path / "question.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        out.writeframes(silence(500) + speech("hello there how are you today") + silence(1500))
    url = f"http://127.0.0.1:{mock_server.port}/?autostart=1"
    with browser(url, wav, tmp_path / "profile") as port:
        state: dict[str, str] = {}

        async def conversed() -> bool:
            nonlocal state
            with contextlib.suppress(httpx.HTTPError, OSError, StopIteration, KeyError):
                state = await page_state(port)
                return "Assistant:" in state["transcript"] and int(state["audio-level"] or 0) > 0
            return False

        try:
            await eventually(conversed, 60, 0.5, "a conversation on the page")
        except TimeoutError:
            pytest.fail(f"the page did not converse: {state}")
    assert state["status"] == "connected: speak"
    assert "You:" in state["transcript"] and "seconds of audio" in state["transcript"]
