"""The relay's link coalesces audio appends on a busy link (transceiver/link.py
``Link.write``, ``--link-coalesce-ms``): an append written less than ``coalesce_s`` after
the link's last write waits, and leaves with the next frame that is not an append, with
the first append written after that time, or by a timer ``2 * coalesce_s`` after the last
write; an append on a quiet link leaves at once; frames keep their order. Over a real link
on loopback (bench/link_hop.py's echo server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.link_hop import echo_link
from relay.link import Links
from tests.relay.inprocess import running_relay
from tests.relay.test_link_mux import SECRET, next_event, transceiver
from tests.waiting import eventually
from transceiver.link import Link, LinkSession
from transceiver.protocol import link as frames
from transceiver.protocol.contract import SessionSpec

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_FRAME = 1 << 20
WINDOW_S = 1.0  # long against a loop iteration: "still waiting" is not a race


def append(n: int) -> bytes:
    return b'{"type":"input_audio_buffer.append","audio":"%d"}' % n


UPDATE = b'{"type":"session.update","session":{}}'


async def spied(links: Links, url: str) -> tuple[LinkSession, Link, list[list[bytes]]]:
    """A session on the link to ``url``, its link, and the payloads of each write on it."""
    session = await links.open(url, None, SessionSpec(conn="echo"), timeout_s=10)
    link = links._links[url]
    writes: list[list[bytes]] = []
    send = link._send

    def spy(pieces: list[bytes], size: int) -> None:
        message = b"".join(pieces)
        writes.append([frame.payload for frame in frames.parse(message, MAX_FRAME)])
        send(pieces, size)

    link._send = spy  # type: ignore[method-assign]
    return session, link, writes


async def turns(n: int = 3) -> None:
    """A few loop iterations: a frame that leaves at once has left after them."""
    for _ in range(n):
        await asyncio.sleep(0)


def quiet(link: Link) -> Callable[[], bool]:
    return lambda: asyncio.get_running_loop().time() >= link._flushed_at + WINDOW_S


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    async with echo_link(MAX_FRAME) as url:
        yield url


async def test_appends_wait_on_a_busy_link_and_leave_in_order(echo: str) -> None:
    links = Links({}, MAX_FRAME, ping_s=20, coalesce_s=WINDOW_S)
    session, link, writes = await spied(links, echo)
    loop = asyncio.get_running_loop()
    try:
        await eventually(quiet(link), what="a quiet link")
        assert session.offer(append(1), True, later=True)  # quiet: at once
        await turns()
        assert writes == [[append(1)]]

        assert session.offer(append(2), True, later=True)  # just written: it waits
        await turns()
        assert writes == [[append(1)]] and len(link._out) == 1
        assert session.offer(UPDATE, True)  # not an append: leaves, the append before it
        await turns()
        assert writes[1:] == [[append(2), UPDATE]]

        flushed = link._flushed_at
        assert session.offer(append(3), True, later=True)  # nothing follows: the timer
        await eventually(lambda: len(writes) == 3, what="the timer's write")
        assert writes[2] == [append(3)]
        assert loop.time() - flushed >= 2 * WINDOW_S - 0.01  # uvloop's timers: ms

        assert session.offer(append(4), True, later=True)  # waits ...
        await turns()
        assert len(writes) == 3
        await eventually(lambda: loop.time() >= link._flushed_at + WINDOW_S, what="due")
        assert session.offer(append(5), True, later=True)  # ... for the first one past due
        await turns()
        assert writes[3] == [append(4), append(5)]

        echoed = [await asyncio.wait_for(session.recv(), 10) for _ in range(6)]
        expected = [append(1), append(2), UPDATE, append(3), append(4), append(5)]
        assert [e.encode() if isinstance(e, str) else e for e in echoed] == expected
    finally:
        await links.aclose()


async def test_without_a_window_every_frame_leaves_in_its_loop_iteration(echo: str) -> None:
    links = Links({}, MAX_FRAME, ping_s=20, coalesce_s=0.0)
    session, link, writes = await spied(links, echo)
    try:
        for n in range(3):
            assert session.offer(append(n), True, later=True)
            await turns()
            assert writes[-1] == [append(n)]
        assert link._backstop is None
    finally:
        await links.aclose()


async def test_a_link_that_dies_with_appends_waiting_ends_its_sessions(echo: str) -> None:
    """The frames that waited are dropped with the link; the timer writes nothing after."""
    links = Links({}, MAX_FRAME, ping_s=20, coalesce_s=WINDOW_S)
    session, link, writes = await spied(links, echo)
    try:
        assert session.offer(append(1), True, later=True)
        await turns()
        assert link._backstop is not None
        link.carrier.transport.abort()
        await eventually(lambda: link.closed, what="the link closed")
        assert link._backstop is None or link._backstop.cancelled()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(session.recv(), 10)
        assert all(append(1) not in batch for batch in writes)
    finally:
        await links.aclose()


async def test_the_relay_option_sets_its_links_window() -> None:
    async with transceiver() as t:
        async with running_relay(
            [t],  # type: ignore[list-item]
            link_secret=SECRET,
            link_coalesce_ms=20,
        ) as relay:
            async with connect(relay.ws_url) as ws:
                assert (await next_event(ws))["type"] == "session.created"
                await ws.send('{"type":"input_audio_buffer.append","audio":"AAAA"}')
                await ws.send(json.dumps({"type": "session.update", "session": {}}))
                # the update takes the append that waited with it, and both are answered
                kinds = []
                while (event := await next_event(ws))["type"] != "session.updated":
                    kinds.append(event["type"])
                assert "error" not in kinds
                (link,) = relay.edge.pool._links._links.values()
                assert link.coalesce_s == 0.02
