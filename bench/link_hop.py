"""``python -m bench.link_hop``: what the relay <-> transceiver hop costs, link against one
WebSocket per session. Prints; writes nothing.

``hop``: 50 sessions in this process each send a 1.3 KB append and wait for its echo, 400
times, over the real link (relay/link.py to transceiver/link.py; over TCP and over a Unix
socket) and over one ``websockets`` connection per session (as ``--transceiver-link
websocket``); CPU time per frame crossing, both ends together. Then one session alone on the
link, where each message carries one frame: what a message costs beyond its frames.

``frames``: bench/frames.py's measurement (``serve --backend mock --no-mock-realtime
--transceivers 1``, real-time audio sessions with server VAD, CPU per frame of the relay,
the transceiver and the load generator), at 50 sessions, twice each for one WebSocket per
session, the link over TCP and the link over the transceiver's Unix socket (``serve``'s
default), alternated, without writing bench/results.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve, unix_serve
from websockets.exceptions import ConnectionClosed

from bench.frames import measure
from bench.harness import relay_server
from bench.stats import load_average, machine
from relay.link import Links
from transceiver.link import Link, LinkServerConnection, LinkSession, carrier_max_size
from transceiver.protocol.contract import SessionSpec

MAX_FRAME = 32 * 1024 * 1024
FRAME = '{"type":"input_audio_buffer.append","audio":"' + "A" * 1280 + '"}'
SESSIONS, ROUNDS = 50, 400

Echoing = Callable[[str | bytes], Awaitable[None]]


async def _timed(sessions: list[tuple[Echoing, Callable[[], Awaitable[str | bytes]]]]) -> float:
    """CPU microseconds per frame crossing (each round trip is two)."""

    async def run(send: Echoing, recv: Callable[[], Awaitable[str | bytes]]) -> None:
        for _ in range(ROUNDS):
            await send(FRAME)
            await recv()

    started = time.process_time()
    await asyncio.gather(*(run(send, recv) for send, recv in sessions))
    return (time.process_time() - started) / (len(sessions) * ROUNDS * 2) * 1e6


@contextlib.asynccontextmanager
async def echo_link(
    max_frame_bytes: int = MAX_FRAME, unix_path: str | None = None
) -> AsyncIterator[str]:
    """The URL of a link server on 127.0.0.1 (the real :class:`Link`) that echoes every
    session's frames after its spec (tests/relay/test_link_mux.py uses it too); with
    ``unix_path``, on that Unix socket as well."""
    tasks: set[asyncio.Task[None]] = set()

    async def echo(session: LinkSession) -> None:
        with contextlib.suppress(ConnectionClosed):  # the other end went: the echo ends
            SessionSpec.decode(await session.recv())
            async for message in session:
                await session.send(message)

    def on_open(session: LinkSession, spec: bytes) -> None:
        session.preload(spec.decode())
        task = asyncio.create_task(echo(session))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def handler(connection: ServerConnection) -> None:
        await Link(connection, max_frame_bytes, on_open).run()

    size = carrier_max_size(max_frame_bytes)
    async with contextlib.AsyncExitStack() as stack:
        options: dict[str, Any] = {"max_size": size, "create_connection": LinkServerConnection}
        server = await stack.enter_async_context(serve(handler, "127.0.0.1", 0, **options))
        if unix_path is not None:
            await stack.enter_async_context(unix_serve(handler, unix_path, **options))
        yield f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
    for task in list(tasks):
        task.cancel()


async def link_hop(over_unix: bool = False, sessions: int = SESSIONS) -> float:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "link.sock") if over_unix else None
        async with echo_link(unix_path=path) as url:
            links = Links({}, MAX_FRAME, 20)
            opened = [
                await links.open(url, None, SessionSpec(), 10, socket=path) for _ in range(sessions)
            ]
            us = await _timed([(s.send, s.recv) for s in opened])
            await links.aclose()
    return us


async def websocket_hop() -> float:
    async def handler(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=4) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
        opened = [await connect(url, compression=None, max_queue=4) for _ in range(SESSIONS)]
        us = await _timed([(c.send, c.recv) for c in opened])
        for connection in opened:
            await connection.close()
    return us


def hop() -> None:
    print(machine(), "; load average", load_average())
    for _ in range(2):
        print(f"one WebSocket per session: {asyncio.run(websocket_hop()):.1f} us per frame")
        print(f"one link:                  {asyncio.run(link_hop()):.1f} us per frame")
        print(f"one link, Unix socket:     {asyncio.run(link_hop(True)):.1f} us per frame")
        # One session: every message carries one frame, so the per-message costs show.
        alone = asyncio.run(link_hop(True, sessions=1))
        print(f"one link, one session:     {alone:.1f} us per frame (a message each)")


def frames() -> None:
    print(machine(), "; load average", load_average())
    modes = {
        "one WebSocket per session": {"RELAY_TRANSCEIVER_LINK": "websocket"},
        "the link over TCP": {"RELAY_TRANSCEIVER_SOCKET": "false"},
        "the link over a Unix socket": {},
    }
    args = ("--backend", "mock", "--no-mock-realtime", "--transceivers", "1")
    runs = {mode: [] for mode in modes}
    for _ in range(2):  # alternated, so a machine that changes speed shows in each
        for mode, env in modes.items():
            with relay_server(*args, env=env) as server:
                measure(server, 5, 3.0)  # warm-up, not counted
                s = measure(server, SESSIONS, 15.0)
            runs[mode].append(
                f"{s.frames / s.wall_s:.0f} frames/s, relay {s.cell(s.relay)} us, transceiver "
                f"{s.cell(s.transceiver)} us (system in brackets), load generator "
                f"{s.per_frame_us(s.loadgen_s):.0f} us a frame; {s.errors} errors"
            )
            print(f"{mode}: {runs[mode][-1]}", flush=True)
    for mode, lines in runs.items():
        print(mode, *lines, sep="\n  ")
    print("load average after", load_average())


if __name__ == "__main__":
    {"hop": hop, "frames": frames}[sys.argv[1] if len(sys.argv) > 1 else "hop"]()
