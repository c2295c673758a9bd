"""``python -m loadgen``: the load generator's command line (``realtime-relay load``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import loadgen
from loadgen.report import Timeline, write_report
from relay import loop
from relay.ice import use_host_addresses


def build_parser() -> argparse.ArgumentParser:
    load = argparse.ArgumentParser(
        prog="realtime-relay load",
        description="N concurrent simulated Realtime clients, each streaming audio in real "
        "time (20 ms chunks) or sending text, waiting for each response. Prints live progress "
        "and a p50/p90/p99/max summary; exits 1 when the error rate passes --max-error-rate.",
    )
    load.add_argument("--url", required=True, help="ws://HOST:PORT/v1/realtime")
    load.add_argument("--sessions", type=int, default=1, help="Concurrent clients (default 1).")
    load.add_argument("--ramp", type=float, default=0.0, help="Seconds over which to start them.")
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        help="Run for this many seconds (turns repeat); default: --turns each.",
    )
    load.add_argument("--turns", type=int, default=3, help="Turns per client (default 3).")
    load.add_argument(
        "--transport",
        choices=["ws", "webrtc"],
        default="ws",
        help="ws (WebSocket) or webrtc (POST /v1/realtime/calls, audio tracks).",
    )
    source = load.add_mutually_exclusive_group()
    source.add_argument(
        "--audio",
        help="A mono 16-bit WAV to speak each turn (default: a synthetic speech-like clip).",
    )
    source.add_argument("--text", action="store_true", help="Send text turns instead of audio.")
    load.add_argument(
        "--webrtc-host-addresses",
        default=None,
        help="Local IP addresses the WebRTC clients gather host candidates on "
        "(comma-separated; default every interface's but loopback): 127.0.0.1 to call a "
        "relay on this machine that runs with --webrtc-host-addresses 127.0.0.1.",
    )
    load.add_argument("--json", dest="json_out", help="Write every figure to this file.")
    load.add_argument(
        "--report",
        help="Write a self-contained HTML page of the run to this file: latency histograms "
        "and time series (sessions, events/s, first audio percentiles, problems).",
    )
    load.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or None,
        help="Bearer key [env OPENAI_API_KEY].",
    )
    load.add_argument("--model", default="gpt-realtime", help="Model query parameter.")
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="Exit 1 above this share of failed turns (default 0.01).",
    )
    return load


def run(args: argparse.Namespace) -> int:
    if args.webrtc_host_addresses:
        try:
            use_host_addresses([a for a in args.webrtc_host_addresses.split(",") if a])
        except ValueError as exc:
            sys.stderr.write(f"realtime-relay load: --webrtc-host-addresses: {exc}\n")
            return 2

    audio = (
        b""
        if args.text
        else (loadgen.read_wav(args.audio) if args.audio else loadgen.default_speech())
    )
    options = loadgen.LoadOptions(
        url=args.url,
        sessions=args.sessions,
        ramp_s=args.ramp,
        duration_s=args.duration,
        turns=args.turns,
        text=args.text,
        audio=audio,
        api_key=args.api_key,
        model=args.model,
        transport=args.transport,
    )
    tty = sys.stderr.isatty()
    timeline = Timeline()

    def progress(figures: loadgen.Figures, elapsed_s: float) -> None:
        timeline.sample(figures, elapsed_s)
        line = loadgen.progress_line(figures, elapsed_s)
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()

    figures, elapsed = loop.run(loadgen.run_load(options, progress))
    if tty:
        sys.stderr.write("\n")
    timeline.sample(figures, elapsed)
    summary = loadgen.summarize(options, figures, elapsed)
    sys.stdout.write(loadgen.format_summary(summary) + "\n")
    if args.report:
        write_report(args.report, summary, timeline)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 1 if summary["error_rate"] > args.max_error_rate else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
