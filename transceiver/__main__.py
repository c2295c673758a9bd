"""``python -m transceiver``: run one transceiver process (``realtime-relay transceiver``)."""

from __future__ import annotations

import os

# Before numpy is imported: OpenBLAS's worker threads spin after each small matrix product
# (the end-of-turn model's mel features) and double its CPU per call (README, "End-of-turn
# model"); an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from transceiver.observability import configure_logging  # noqa: E402
from transceiver.settings import (  # noqa: E402
    TransceiverSettings,
    is_switch,
    option_flag,
    settings_error,
    unused_options,
)
from transceiver.startup import run_transceiver  # noqa: E402

log = logging.getLogger("transceiver")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-relay transceiver",
        description="Run one transceiver: holds sessions and runs a backend. Every option "
        "can also be set as an environment variable RELAY_<NAME> (e.g. RELAY_BACKEND=mock).",
    )
    for name, field in TransceiverSettings.model_fields.items():
        flag = option_flag(name)
        env = "RELAY_" + name.upper()
        help_text = f"{field.description} [env {env}; default {field.default!r}]"
        if is_switch(field.annotation):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = TransceiverSettings(**given)
    except ValidationError as exc:  # one line naming the option, not a traceback
        parser.error(settings_error(exc))
    configure_logging(settings.log_level, settings.log_format)
    if unused := unused_options(settings):
        log.warning("%s: not used by the %s backend, ignored", ", ".join(unused), settings.backend)

    async def runner() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_transceiver(settings, stop))
        loop = asyncio.get_running_loop()

        def on_signal() -> None:  # the first drains, a second stops at once
            if stop.is_set():
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(runner())
    else:
        uvloop.run(runner())
    sys.exit(0)


if __name__ == "__main__":
    main()
