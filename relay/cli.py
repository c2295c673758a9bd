"""The ``realtime-relay`` command: ``serve``, ``relay`` and ``transceiver``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from relay import loop
from relay.app import create_app
from relay.drain import DrainingServer
from relay.server import raise_fd_limit, server_config
from relay.settings import LIST_FIELDS, RelaySettings
from relay.supervisor import Supervisor, TransceiverProcess, free_port
from transceiver.observability import configure_logging
from transceiver.settings import TransceiverSettings, is_switch, option_flag, settings_error

log = logging.getLogger("relay")


def _add_relay_options(parser: argparse.ArgumentParser, with_transceiver: bool) -> None:
    for name, field in RelaySettings.model_fields.items():
        if name == "transceiver" and not with_transceiver:
            continue
        env = "RELAY_" + name.upper()
        help_text = f"{field.description} [env {env}]"
        flag = option_flag(name)
        if name in LIST_FIELDS:
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=name, default=None, help=f"{help_text} (default {field.default!r})"
            )


# Transceiver options that serve sets itself, or that name a relay option of serve's own.
_SERVE_OWN = {
    "host",
    "port",
    "backend",
    "log_level",
    "log_format",
    "drain_timeout_s",
    "link_socket",  # one per transceiver, in a directory of serve's own
}
_PASSED = "transceiver__"  # the dest prefix of the options serve passes on


def _add_transceiver_options(parser: argparse.ArgumentParser) -> None:
    """The backend options ``serve`` passes on to each transceiver, so ``serve --help``
    lists them."""
    group = parser.add_argument_group(
        "transceiver options", "Passed on to each transceiver (see 'transceiver --help')."
    )
    for name, field in TransceiverSettings.model_fields.items():
        if name in _SERVE_OWN or name in RelaySettings.model_fields:
            continue
        flag = option_flag(name)
        help_text = f"{field.description} [env RELAY_{name.upper()}; default {field.default!r}]"
        action = argparse.BooleanOptionalAction if is_switch(field.annotation) else "store"
        group.add_argument(flag, dest=_PASSED + name, action=action, default=None, help=help_text)


def _transceiver_args(args: argparse.Namespace) -> list[str]:
    """The transceiver options given to ``serve``, as a transceiver's command line."""
    argv: list[str] = []
    for dest, value in vars(args).items():
        if not dest.startswith(_PASSED) or value is None:
            continue
        flag = dest.removeprefix(_PASSED).replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-relay",
        description="A self-hostable server that speaks the OpenAI Realtime API. Every option "
        "can also be set as an environment variable RELAY_<NAME>.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="Start the relay and N transceivers, supervised.",
        description="Start the relay and N transceiver processes and supervise them. The "
        "transceiver options below are passed on to each transceiver.",
    )
    _add_relay_options(serve, with_transceiver=False)
    serve.add_argument(
        "--backend",
        default=os.environ.get("RELAY_BACKEND") or "local",
        choices=["mock", "local", "openai"],
        help="Backend of the transceivers: mock, local or openai (proxy) [env RELAY_BACKEND] "
        "(default 'local').",
    )
    serve.add_argument(
        "--transceivers",
        type=int,
        default=int(os.environ.get("RELAY_TRANSCEIVERS") or "1"),
        help="Number of transceiver processes [env RELAY_TRANSCEIVERS] (default 1).",
    )
    serve.add_argument(
        "--health-timeout",
        type=float,
        default=600.0,
        help="Seconds to wait for transceivers to load their models (default 600).",
    )
    _add_transceiver_options(serve)
    relay = commands.add_parser(
        "relay", help="Run the relay alone, in front of running transceivers."
    )
    _add_relay_options(relay, with_transceiver=True)
    commands.add_parser(
        "transceiver",
        help="Run one transceiver alone ('realtime-relay transceiver --help').",
        add_help=False,
    )
    commands.add_parser(
        "load",
        help="Load test any Realtime server with N simulated clients ('realtime-relay load "
        "--help').",
        add_help=False,
    )
    return parser


def _relay_settings(args: argparse.Namespace, **extra: Any) -> RelaySettings:
    given = {k: getattr(args, k) for k in RelaySettings.model_fields if getattr(args, k, None)}
    for name in LIST_FIELDS:
        if name in given:  # repeated flags and comma lists both work
            given[name] = [p for v in given[name] for p in v.split(",") if p]
    given.update(extra)
    return RelaySettings(**given)


async def _run_relay(settings: RelaySettings, banner: bool) -> None:
    app = create_app(settings)
    edge = app.state.edge
    await edge.pool.start()  # resolve names and read every transceiver's load up front
    raise_fd_limit(2 * settings.max_client_connections + 256)
    config = server_config(app, settings)
    server = DrainingServer(config, edge.live, settings.drain_timeout_s)

    async def announce() -> None:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.05)
        if banner:
            scheme = "https" if settings.ssl_certfile else "http"
            url = f"{scheme}://{settings.host}:{settings.port}/v1"
            sys.stdout.write(f"realtime-relay ready: base_url={url}\n")
            sys.stdout.flush()

    sip = app.state.sip  # the SIP endpoint of --sip-listen (relay/sip/), if any
    announcer = asyncio.create_task(announce())
    try:
        if sip is not None:
            await sip.start()  # before the banner: a test's phone may dial at once
        await server.serve()
    finally:
        announcer.cancel()
        if sip is not None:
            await sip.stop()
        await edge.pool.stop()


def _socket_dir() -> str | None:
    """A directory only this user can enter, for the transceivers' sockets; None (TCP
    links) where none can be made."""
    try:
        return tempfile.mkdtemp(prefix="realtime-relay-")
    except OSError as exc:
        log.warning("links over TCP: no socket directory (%s)", exc)
        return None


def _socket_args(directory: str | None, n: int) -> list[str]:
    """Transceiver ``n``'s ``--link-socket`` in ``directory``; none without one, or where
    the path would be too long for a Unix socket (108 bytes on Linux, with its NUL)."""
    if directory is None:
        return []
    path = os.path.join(directory, f"transceiver-{n}.sock")
    if len(os.fsencode(path)) >= 100:
        log.warning("links over TCP: %s is too long for a Unix socket", path)
        return []
    return ["--link-socket", path]


async def _serve(args: argparse.Namespace) -> None:
    host = "127.0.0.1"
    extra = ["--log-level", args.log_level] if args.log_level else []
    if args.log_format:
        extra += ["--log-format", args.log_format]
    # Each transceiver also listens on a Unix socket for the relay's link (cheaper than TCP
    # on one machine), in a directory only this user can enter.
    sockets = _socket_dir()
    processes = [
        TransceiverProcess(
            host,
            free_port(host),
            [
                "--backend",
                args.backend,
                *extra,
                *_transceiver_args(args),
                *_socket_args(sockets, n),
            ],
        )
        for n in range(max(1, args.transceivers))
    ]
    # One link secret for the relay and its transceivers: --link-secret, the environment's,
    # or a new one (given to the transceivers in their environment, never on argv).
    supervisor = Supervisor(processes, secret=args.link_secret)
    try:
        await supervisor.start(args.health_timeout)
        settings = _relay_settings(
            args, transceiver=[p.url for p in processes], link_secret=supervisor.link_secret
        )
        await _run_relay(settings, banner=True)
    finally:
        await supervisor.stop()
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Each runs as its own program: the relay's process imports neither (the load
    # generator is client code, and may use models/).
    if argv and argv[0] in ("transceiver", "load"):
        module = "transceiver" if argv[0] == "transceiver" else "loadgen"
        os.execv(sys.executable, [sys.executable, "-m", module, *argv[1:]])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "relay":
        try:
            settings = _relay_settings(args)
        except ValidationError as exc:  # one line naming the option, not a traceback
            parser.error(settings_error(exc))
        if not settings.transceiver:
            parser.error("relay needs at least one --transceiver URL")
        configure_logging(settings.log_level, settings.log_format)
        loop.run(_run_relay(settings, banner=True))
        return
    configure_logging(
        args.log_level or os.environ.get("RELAY_LOG_LEVEL") or "info",
        args.log_format or os.environ.get("RELAY_LOG_FORMAT") or "text",
    )
    try:
        loop.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except ValidationError as exc:  # the settings, checked before anything starts
        parser.error(settings_error(exc))


if __name__ == "__main__":
    main()
