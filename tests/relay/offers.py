"""WebRTC offers for the in-process call tests (tests/relay/test_calls_hardening.py,
tests/relay/test_fuzz_calls.py): real aiortc offers whose candidates are replaced with one on
127.0.0.1 whose socket never answers, so the relay's connectivity checks stay on loopback,
and the checks every refused offer must pass."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
from aiortc import RTCPeerConnection

from tests.relay.inprocess import HOST, RunningRelay

CALLS = "/v1/realtime/calls"


@contextlib.contextmanager
def silent_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


def on_loopback(sdp: str, port: int) -> str:
    """``sdp`` with its candidates replaced by one host candidate on 127.0.0.1:``port``."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        lines.append(line)
        if line.startswith("a=ice-pwd:"):
            lines.append(f"a=candidate:1 1 UDP 2130706431 {HOST} {port} typ host")
    return "\r\n".join(lines) + "\r\n"


async def make_offer(port: int, audio: str | None = "sendrecv", channel: bool = True) -> str:
    """An aiortc offer on loopback: an audio section with direction ``audio`` (none if
    ``None``) and the ``oai-events`` data channel if ``channel``."""
    pc = RTCPeerConnection()
    try:
        if channel:
            pc.createDataChannel("oai-events")
        if audio is not None:
            pc.addTransceiver("audio", direction=audio)
        await pc.setLocalDescription(await pc.createOffer())
        return on_loopback(pc.localDescription.sdp, port)
    finally:
        await pc.close()


def assert_envelope(reply: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    """``reply`` is OpenAI's JSON error envelope with ``status`` and ``code``."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json", reply.headers
    body = reply.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


async def assert_no_call(relay: RunningRelay, http: httpx.AsyncClient, sessions: int = 0) -> None:
    """The relay holds no call: none registered, the WebRTC gauge at 0, and ``/healthz``
    counting only the ``sessions`` others hold (a refused offer was never placed)."""
    assert not relay.edge.calls.calls, list(relay.edge.calls.calls)
    assert relay.metric("active_sessions", transport="webrtc") == 0
    health = (await http.get("/healthz")).json()
    assert health["sessions"] == sessions, health
