"""What the whole suite shares."""

from __future__ import annotations

from relay.ice import use_host_addresses

# Tests send traffic to loopback only. aiortc gathers WebRTC host candidates on every
# interface but loopback, so this process's peers (the test clients, in-process relays)
# use 127.0.0.1 instead, as the relays tests start do (bench/harness.py).
use_host_addresses(["127.0.0.1"])
