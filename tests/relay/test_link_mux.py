"""The multiplexed relay <-> transceiver link (transceiver/link.py, relay/link.py), over
loopback: real transceivers (mock backend) and the relay in this process, real clients.

Frames of every kind cross the link byte for byte; malformed frames and a wrong secret are
refused without harm to other sessions; a transceiver that dies or vanishes ends the
sessions on its link with an ``error`` and 1011 while sessions elsewhere go on; a refusal
on the link places the session on the next transceiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server
from websockets.exceptions import ConnectionClosed, InvalidStatus

import relay.pool
from bench.link_hop import echo_link
from relay.link import Links
from relay.settings import RelaySettings
from tests.relay.inprocess import HOST, running_relay
from tests.waiting import eventually
from transceiver.link import WINDOW_BYTES
from transceiver.protocol import link as frames
from transceiver.protocol.contract import SessionSpec
from transceiver.runner import SessionRunner
from transceiver.server import TransceiverServer
from transceiver.settings import TransceiverSettings
from transceiver.startup import build_backend

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "the-link-secret-of-the-mux-tests"
HEADERS = {"Authorization": f"Bearer {SECRET}"}
MAX_FRAME = 32 * 1024 * 1024


@dataclass
class Transceiver:
    server: TransceiverServer
    ws: Server
    unix: Server | None = None  # its --link-socket's

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{next(iter(self.ws.sockets)).getsockname()[1]}"

    def paths(self) -> list[str]:
        """The request path of each connection it holds (``/v1/link``, ``/v1/sessions``)."""
        return sorted(c.request.path for c in self.ws.connections if c.request is not None)


@contextlib.asynccontextmanager
async def transceiver(**settings: Any) -> AsyncIterator[Transceiver]:
    config = TransceiverSettings(
        backend="mock", host=HOST, port=0, link_secret=SECRET, mock_first_delta_ms=0, **settings
    )
    server = TransceiverServer(config, build_backend(config))
    ws, *on_socket = await server.start()
    try:
        yield Transceiver(server, ws, on_socket[0] if on_socket else None)
    finally:
        for listener in (ws, *on_socket):
            listener.close()
            await listener.wait_closed()
        server.lag.stop()
        await server.backend.aclose()


async def next_event(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))  # type: ignore[no-any-return]


async def ended_with(ws: ClientConnection) -> tuple[list[str], int | None]:
    """Read until the relay closes: the codes of the error events, and the close code."""
    codes: list[str] = []
    try:
        while True:
            event = await next_event(ws)
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    except ConnectionClosed as exc:
        return codes, exc.rcvd.code if exc.rcvd else None


UPDATE = {"type": "session.update", "session": {"type": "realtime", "instructions": "hi"}}


async def still_serves(ws: ClientConnection) -> None:
    """The session answers a ``session.update``."""
    await ws.send(json.dumps(UPDATE))
    while (await next_event(ws))["type"] != "session.updated":
        pass


async def updated_or_ended(ws: ClientConnection) -> tuple[list[str], int | None]:
    """After a ``session.update``: ``([], None)`` when the session answers it, else the
    error codes and the close code it ended with."""
    with contextlib.suppress(ConnectionClosed):  # ended before the update: read below
        await ws.send(json.dumps(UPDATE))
    codes: list[str] = []
    try:
        while True:
            event = await next_event(ws)
            if event["type"] == "session.updated":
                return codes, None
            if event["type"] == "error":
                codes.append(event["error"]["code"])
    except ConnectionClosed as exc:
        return codes, exc.rcvd.code if exc.rcvd else None


async def test_frames_of_every_kind_cross_the_link_byte_for_byte() -> None:
    big_text = "é" * (MAX_FRAME // 2)  # 32 MiB of UTF-8
    big_bytes = bytes(range(256)) * (MAX_FRAME // 256)
    messages: list[str | bytes] = [
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        '{"type": "not json',  # invalid JSON passes untouched: the transceiver answers it
        "",
        b"",
        b"\x00\xff" * 1000,
        big_text,
        big_bytes,
    ]
    assert len(big_text.encode()) == MAX_FRAME and len(big_bytes) == MAX_FRAME
    links = Links({}, MAX_FRAME, ping_s=20)
    async with echo_link() as url:
        sessions = [
            await links.open(url, None, SessionSpec(conn="echo"), timeout_s=10) for _ in range(2)
        ]
        for session in sessions:  # both sessions share the link and interleave
            for message in messages:
                await session.send(message)
        for session in sessions:
            for message in messages:
                got = await asyncio.wait_for(session.recv(), 30)
                assert type(got) is type(message) and got == message
        await sessions[0].close(1000, "done")
        assert sessions[0].protocol.close_rcvd is not None
        assert sessions[0].protocol.close_rcvd.code == 1000
        await sessions[1].send("after the other closed")
        assert await asyncio.wait_for(sessions[1].recv(), 10) == "after the other closed"
        await links.aclose()


async def test_a_session_that_stops_reading_holds_its_window_not_the_link() -> None:
    links = Links({}, MAX_FRAME, ping_s=20)
    chunk = b"x" * 65536
    sent = 0
    async with echo_link() as url:
        stuck = await links.open(url, None, SessionSpec(conn="echo"), timeout_s=10)
        other = await links.open(url, None, SessionSpec(conn="echo"), timeout_s=10)

        async def flood() -> None:  # sends, never reads
            nonlocal sent
            while True:
                await stuck.send(chunk)
                sent += len(chunk)

        flooding = asyncio.create_task(flood())
        held = lambda: len(stuck._inbox) * len(chunk)  # noqa: E731
        await eventually(lambda: held() >= WINDOW_BYTES and stuck._send_credit <= 0, what="full")
        # Each way one window (and a frame past it), the echo's one frame: then the sender waits.
        assert sent <= 2 * WINDOW_BYTES + 4 * len(chunk), sent
        await other.send("the link still carries the others")
        assert await asyncio.wait_for(other.recv(), 10) == "the link still carries the others"
        for _ in range(3 * WINDOW_BYTES // len(chunk)):  # reading again lets it go on
            assert await asyncio.wait_for(stuck.recv(), 10) == chunk
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        await links.aclose()


@pytest.mark.parametrize(
    ("batch", "said"),
    [
        (b"\x00\x00\x00", "cut short"),
        (frames.header(frames.Kind.TEXT, 1, MAX_FRAME + 1), "at most"),
        (b"\x00\x00\x00\x00\x63\x00\x00\x00\x01", "unknown frame kind 99"),
        (frames.header(frames.Kind.BINARY, 1, 10) + b"short", "runs past"),
        (frames.encode(frames.Kind.ACCEPTED, 7), "unexpected ACCEPTED"),
        (frames.encode(frames.Kind.OPEN, 0, SessionSpec().encode().encode()), "taken"),
        ("a text message", "text message"),
        ([b"\x00\x00", b"\x00\x01"], "fragmented message"),  # websockets sends 2 fragments
    ],
)
async def test_a_malformed_link_frame_closes_that_link_only(
    batch: str | bytes | list[bytes], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="transceiver.link")
    async with transceiver() as t:
        links = Links(HEADERS, MAX_FRAME, ping_s=20)
        good = await links.open(t.url, None, SessionSpec(), timeout_s=10)
        assert json.loads(await good.recv())["type"] == "session.created"
        async with connect(f"{t.url}/v1/link", additional_headers=HEADERS) as bad:
            await bad.send(batch)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(bad.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1002
        assert any(said in r.getMessage() for r in caplog.records), caplog.text
        await good.send('{"type": "not json')  # the other link goes on
        assert json.loads(await asyncio.wait_for(good.recv(), 10))["type"] == "error"
        await good.close()
        await links.aclose()


async def test_a_wrong_or_missing_secret_is_refused_on_the_link() -> None:
    async with transceiver() as t:
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            links = Links(headers, MAX_FRAME, ping_s=20)
            with pytest.raises(InvalidStatus) as info:
                await links.open(t.url, None, SessionSpec(), timeout_s=10)
            assert info.value.response.status_code == 401
        assert t.server.sessions == 0


async def test_sessions_go_over_one_link_and_the_option_restores_websockets() -> None:
    async with transceiver() as t:
        async with running_relay([t], link_secret=SECRET) as relay:  # type: ignore[list-item]
            async with connect(relay.ws_url) as a, connect(relay.ws_url) as b:
                for ws in (a, b):
                    assert (await next_event(ws))["type"] == "session.created"
                assert t.paths() == ["/v1/link"]
                await still_serves(a)
            async with relay.http() as http:
                (member,) = (await http.get("/status")).json()["transceivers"]
                assert member["link"] is True
        async with running_relay(
            [t],  # type: ignore[list-item]
            link_secret=SECRET,
            transceiver_link="websocket",
        ) as relay:
            async with connect(relay.ws_url) as a:
                assert (await next_event(a))["type"] == "session.created"
                assert t.paths() == ["/v1/sessions"]
    with pytest.raises(ValidationError):
        RelaySettings(transceiver_link="tcp")  # type: ignore[arg-type]


async def test_a_dead_link_ends_its_sessions_with_1011_and_others_go_on() -> None:
    async with transceiver() as t1, transceiver() as t2:
        async with running_relay([t1, t2], link_secret=SECRET) as relay:  # type: ignore[list-item]
            clients = [await connect(relay.ws_url) for _ in range(4)]
            for ws in clients:
                assert (await next_event(ws))["type"] == "session.created"
            on_first = t1.server.sessions
            assert on_first and t2.server.sessions, "placement spreads the sessions"
            for connection in list(t1.ws.connections):  # t1 dies: no close frame
                connection.transport.abort()
            ends = [await updated_or_ended(ws) for ws in clients]
            lost = (["transceiver_unavailable"], 1011)
            assert sorted(ends, key=str) == sorted(
                [lost] * on_first + [([], None)] * (4 - on_first), key=str
            )
            for ws in clients:
                await ws.close()
            await relay.idle()


async def test_a_vanished_transceiver_is_noticed_by_the_link_ping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ping_s = 0.5
    monkeypatch.setattr(relay.pool, "PING_S", ping_s)
    async with transceiver() as t:
        async with running_relay([t], link_secret=SECRET) as running:  # type: ignore[list-item]
            async with connect(running.ws_url) as ws:
                assert (await next_event(ws))["type"] == "session.created"
                loop = asyncio.get_running_loop()
                started = loop.time()
                for connection in t.ws.connections:  # reads nothing more: answers no ping
                    connection.transport.pause_reading()
                codes, code = await ended_with(ws)
                assert (codes, code) == (["transceiver_unavailable"], 1011)
                assert loop.time() - started < 2 * ping_s + 1.0
            for connection in t.ws.connections:
                connection.transport.abort()


async def test_a_refusal_on_the_link_places_the_session_on_the_next() -> None:
    async with transceiver(max_sessions=0) as full, transceiver() as roomy:
        async with running_relay(
            [full, roomy],  # type: ignore[list-item]
            link_secret=SECRET,
            resolve_interval_s=3600,
        ) as relay:
            await relay.edge.pool.start()
            first = relay.edge.pool.members[0]
            assert first.url == full.url and first.link
            first.capacity = None  # stale figures: the full one is tried first
            async with connect(relay.ws_url) as ws:
                assert (await next_event(ws))["type"] == "session.created"
                assert (full.server.sessions, roomy.server.sessions) == (0, 1)
            await relay.idle()
            await eventually(lambda: roomy.server.sessions == 0, what="the session ended")


async def test_drain_over_the_link_closes_with_1012() -> None:
    async with transceiver() as t:
        async with running_relay([t], link_secret=SECRET) as relay:  # type: ignore[list-item]
            async with connect(relay.ws_url) as ws:
                assert (await next_event(ws))["type"] == "session.created"
                drain = asyncio.create_task(t.server.drain(0))
                codes, code = await ended_with(ws)
                assert (codes, code) == (["server_shutting_down"], 1012)
                await drain


async def test_frames_taken_on_arrival_and_through_the_loop_stay_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transceiver handles a link session's frames as they arrive while it can
    (transceiver/runner.py ``take_now``) and through its read loop once its outbox is full
    (a client that does not read): every event still answers its frame, in order."""
    taken: list[bool] = []
    take_now = SessionRunner.take_now

    def counted(self: SessionRunner, frame: str | bytes) -> bool:
        taken.append(take_now(self, frame))
        return taken[-1]

    monkeypatch.setattr(SessionRunner, "take_now", counted)
    links = Links(HEADERS, MAX_FRAME, ping_s=20)
    text = "x" * 20_000
    count = 150  # about 6 MB of events: past the link's window and the outbox
    async with transceiver() as t:
        session = await links.open(t.url, None, SessionSpec(), timeout_s=10)
        assert json.loads(await session.recv())["type"] == "session.created"

        async def send_all() -> None:
            for i in range(count):
                item = {
                    "id": f"item_{i:03d}",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                }
                await session.send(json.dumps({"type": "conversation.item.create", "item": item}))

        sending = asyncio.create_task(send_all())
        # Not read: the transceiver's outbox fills, it stops taking frames, the window runs out.
        await eventually(lambda: session._send_credit <= 0, what="the sender held")
        added: list[str] = []
        while len(added) < count:
            event = json.loads(await asyncio.wait_for(session.recv(), 30))
            assert event["type"] != "error", event
            if event["type"] == "conversation.item.added":
                added.append(event["item"]["id"])
        assert added == [f"item_{i:03d}" for i in range(count)]
        await sending
        await links.aclose()
    assert True in taken and False in taken  # both ways were taken
