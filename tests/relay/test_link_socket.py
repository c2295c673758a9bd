"""The link over a transceiver's Unix socket (``--link-socket``, transceiver/unix.py): a
relay on the same machine links over it instead of TCP, falls back to TCP when it cannot,
and a session behaves the same either way. Real transceivers (mock backend), the relay in
this process, real clients."""

from __future__ import annotations

import http
import json
import os
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, unix_serve
from websockets.http11 import Request, Response

from relay.cli import _socket_args
from relay.link import Links
from relay.pool import is_loopback
from tests.relay.inprocess import running_relay
from tests.relay.test_link_mux import (
    HEADERS,
    MAX_FRAME,
    SECRET,
    Transceiver,
    next_event,
    still_serves,
    transceiver,
    updated_or_ended,
)
from transceiver import unix
from transceiver.protocol.contract import SessionSpec
from transceiver.settings import TransceiverSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")


def link_paths(server: object) -> list[str]:
    """The request paths of a listener's connections."""
    return sorted(c.request.path for c in server.connections if c.request is not None)  # type: ignore[attr-defined]


async def one_session_over(t: Transceiver, **relay_settings: object) -> tuple[list[str], list[str]]:
    """A session through a relay in front of ``t``: the link's paths on the socket, on TCP."""
    async with running_relay([t], link_secret=SECRET, **relay_settings) as relay:  # type: ignore[list-item]
        async with connect(relay.ws_url) as ws:
            assert (await next_event(ws))["type"] == "session.created"
            await still_serves(ws)
            on_socket = link_paths(t.unix) if t.unix is not None else []
            return on_socket, t.paths()


async def test_a_relay_on_this_machine_links_over_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    async with transceiver(link_socket=path) as t:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert t.server.load()["link_socket"] == path
        assert await one_session_over(t) == (["/v1/link"], [])
        # Turned off on the relay: TCP.
        assert await one_session_over(t, transceiver_socket=False) == ([], ["/v1/link"])


async def test_a_socket_that_does_not_answer_falls_back_to_tcp(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    async with transceiver(link_socket=path) as t:
        assert t.unix is not None
        t.unix.close()  # it stops listening there (the file goes too)
        await t.unix.wait_closed()
        assert await one_session_over(t) == ([], ["/v1/link"])


async def test_a_link_over_the_socket_that_dies_ends_its_sessions_with_1011(
    tmp_path: Path,
) -> None:
    async with transceiver(link_socket=str(tmp_path / "t.sock")) as t:
        assert t.unix is not None
        async with running_relay([t], link_secret=SECRET) as relay:  # type: ignore[list-item]
            async with connect(relay.ws_url) as ws:
                assert (await next_event(ws))["type"] == "session.created"
                for connection in list(t.unix.connections):  # no close frame
                    connection.transport.abort()
                assert await updated_or_ended(ws) == (["transceiver_unavailable"], 1011)
            await relay.idle()


async def test_only_loopback_ws_urls_count_as_this_machine() -> None:
    for url in ("ws://127.0.0.1:8100", "ws://127.0.0.2:1", "ws://[::1]:8100", "ws://localhost"):
        assert is_loopback(url), url
    for url in ("wss://127.0.0.1:8100", "ws://10.0.0.4:8100", "ws://[fd00::4]:1", "ws://a.b:1"):
        assert not is_loopback(url), url


async def test_the_socket_path_is_claimed_only_when_nothing_else_holds_it(tmp_path: Path) -> None:
    free = str(tmp_path / "free.sock")
    assert unix.claim(free) == free
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(unix.SocketPathError, match="not a socket"):
        unix.claim(str(regular))
    live_path = tmp_path / "live.sock"
    live = str(live_path)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(live)
        listener.listen()
        with pytest.raises(unix.SocketPathError, match="in use"):
            unix.claim(live)
    # The listener is gone, its file left behind: taken over.
    assert live_path.exists() and unix.claim(live) == live and not live_path.exists()


async def test_serve_gives_each_transceiver_a_socket_that_fits(tmp_path: Path) -> None:
    assert _socket_args(str(tmp_path), 1) == ["--link-socket", str(tmp_path / "transceiver-1.sock")]
    assert _socket_args(str(tmp_path / ("d" * 100)), 0) == []  # too long: TCP
    assert _socket_args(None, 0) == []  # no directory: TCP


async def test_a_socket_that_answers_but_refuses_the_handshake_falls_back_to_tcp(
    tmp_path: Path,
) -> None:
    """Something else on the path (here a server that answers 403): the link goes over TCP."""
    path = str(tmp_path / "other.sock")

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(http.HTTPStatus.FORBIDDEN, "not a transceiver\n")

    async with (
        transceiver() as t,
        unix_serve(lambda c: c.wait_closed(), path, process_request=refuse),
    ):
        links = Links(HEADERS, MAX_FRAME, ping_s=20)
        session = await links.open(t.url, None, SessionSpec(), timeout_s=10, socket=path)
        assert json.loads(await session.recv())["type"] == "session.created"
        assert t.paths() == ["/v1/link"]
        await session.close()
        await links.aclose()


async def test_a_relative_socket_path_is_offered_absolute() -> None:
    settings = TransceiverSettings(link_socket="t.sock", insecure_no_link_secret=True)
    assert settings.link_socket == str(Path.cwd() / "t.sock")


async def test_shutdown_removes_its_own_socket_file_not_a_successors(tmp_path: Path) -> None:
    path, elsewhere = tmp_path / "t.sock", tmp_path / "old.sock"
    with socket.socket(socket.AF_UNIX) as old, socket.socket(socket.AF_UNIX) as successor:
        old.bind(str(elsewhere))  # stands for the file a predecessor bound at the path
        ours = unix.secure(str(elsewhere))
        successor.bind(str(path))
        theirs = unix.secure(str(path))
        unix.release(str(path), ours)
        assert path.exists()  # not the file it bound: left alone
        unix.release(str(path), theirs)
        assert not path.exists()
