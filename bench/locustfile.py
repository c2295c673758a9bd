"""Distributed load with locust, reusing ``realtime-relay load``'s client code.

    locust -f bench/locustfile.py --host ws://127.0.0.1:8000/v1/realtime \\
        --headless -u 50 -r 5 -t 1m

Each locust user is one Realtime session that speaks a few turns (``REALTIME_TURNS``,
default 3; ``REALTIME_TEXT=1`` for text turns) and then reconnects. The figures of
``realtime-relay load`` are reported as locust request types, so locust's statistics,
web UI and workers (``--master`` / ``--worker``) apply to them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import gevent
from locust import User, between, task

import loadgen

_SPEECH = loadgen.default_speech()
_NAMES = {
    "speech_end_to_first_audio_ms": "speech end -> first audio delta",
    "commit_to_created_ms": "commit -> response.created",
    "first_delta_ms": "request -> first delta",
    "response_ms": "response duration",
    "connect_ms": "connect",
}


def _session(options: loadgen.LoadOptions) -> loadgen.Figures:
    """One simulated session on its own event loop (in a native thread, off gevent's hub)."""
    figures = loadgen.Figures()
    deadline = time.monotonic() + loadgen.RESPONSE_TIMEOUT_S * max(1, options.turns)
    asyncio.run(loadgen.SimulatedClient(options, figures, deadline).run())
    return figures


class RealtimeUser(User):
    wait_time = between(0.5, 2.0)

    @task
    def conversation(self) -> None:
        text = os.environ.get("REALTIME_TEXT") == "1"
        options = loadgen.LoadOptions(
            url=self.host or "ws://127.0.0.1:8000/v1/realtime",
            turns=int(os.environ.get("REALTIME_TURNS", "3")),
            text=text,
            audio=b"" if text else _SPEECH,
            api_key=os.environ.get("OPENAI_API_KEY"),
        )
        figures: loadgen.Figures = gevent.get_hub().threadpool.apply(_session, (options,))
        fire: Any = self.environment.events.request.fire
        for field, name in _NAMES.items():
            for value in getattr(figures, field):
                fire(
                    request_type="realtime",
                    name=name,
                    response_time=value,
                    response_length=0,
                    exception=None,
                    context={},
                )
        failures = figures.failed_turns + figures.error_events + figures.dropped_sessions
        for _ in range(failures):
            fire(
                request_type="realtime",
                name="turn",
                response_time=0,
                response_length=0,
                exception=RuntimeError("failed turn, error event or dropped session"),
                context={},
            )
