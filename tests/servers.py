"""Real servers on loopback for the tests (shared with the benchmarks)."""

from bench.harness import READY, RunningServer, free_port, relay_server

__all__ = ["READY", "RunningServer", "free_port", "relay_server"]
