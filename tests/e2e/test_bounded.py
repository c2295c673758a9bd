"""A client that stops reading cannot make the transceiver hold more than a fixed bound.

The client creates an item with 20 s of audio, then asks for it 200 times without reading
a single event: unbounded, that is 200 queued copies of 1.3 MB (the transceiver grew by
245 MiB). Bounded (transceiver/outbox.py), the session stops taking client frames while its
outbox is full, the relay stops taking them when the transceiver does, and the
transceiver's memory grows by a few megabytes; once the client reads again, every answer
arrives, in order.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import MOCK_ARGS
from tests.e2e.link import LINK_ENV, LINK_HEADERS, transceiver_urls
from tests.servers import relay_server
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO_S = 20
RETRIEVES = 200
BOUND_BYTES = 32 * 1024 * 1024  # unbounded, it grew by 245 MiB; bounded, by about 8


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_a_client_that_never_reads_cannot_grow_the_transceiver() -> None:
    # The client stops reading for a while: more than the stall bound must not drop it here.
    stall = ("--client-stall-timeout-s", "120")
    with relay_server(*MOCK_ARGS, *stall, env=LINK_ENV) as server:
        async with httpx.AsyncClient(timeout=5, headers=LINK_HEADERS) as http:
            (member,) = await transceiver_urls(server)
            pid = (await http.get(f"{member}/load")).json()["pid"]
            url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
            # max_queue=1: the client's library reads one frame ahead, then leaves the
            # socket unread, like an application that stopped calling recv().
            async with connect(url, max_size=None, max_queue=1) as ws:
                # Noise: the client connection may be compressed (permessage-deflate), and
                # audio that compresses well would fit in the sockets' buffers.
                noise = random.Random(0).randbytes(2 * 24_000 * AUDIO_S)
                audio = base64.b64encode(noise).decode()
                item = {
                    "id": "item_big",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": audio}],
                }
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                before = peak_rss_bytes(pid)
                for n in range(RETRIEVES):
                    retrieve = {"type": "conversation.item.retrieve", "item_id": "item_big"}
                    await ws.send(json.dumps({**retrieve, "event_id": f"r{n}"}))

                sent_out: list[float] = []

                async def settled() -> bool:
                    """The transceiver has stopped sending: the same count twice running."""
                    metrics = (await http.get(f"{member}/metrics")).text
                    line = next(
                        x
                        for x in metrics.splitlines()
                        if x.startswith('realtime_transceiver_events_total{direction="out"}')
                    )
                    sent_out.append(float(line.split()[-1]))
                    return len(sent_out) > 2 and sent_out[-1] == sent_out[-3]

                await eventually(settled, timeout_s=30, interval_s=0.5, what="settled")
                grown = peak_rss_bytes(pid) - before
                assert grown < BOUND_BYTES, f"the transceiver grew by {grown >> 20} MiB"
                assert sent_out[-1] < RETRIEVES, "every answer was made for a stalled client"
                # Reading again: every answer arrives, whole, after the item's creation.
                types: list[str] = []
                while types.count("conversation.item.retrieved") < RETRIEVES:
                    event = json.loads(await ws.recv())
                    types.append(event["type"])
                    assert event["type"] != "error", event
                    if event["type"] == "conversation.item.retrieved":
                        part = event["item"]["content"][0]
                        assert part["audio"] == audio
                assert types.index("conversation.item.added") < types.index(
                    "conversation.item.retrieved"
                )
