"""What the transceiver's process does around its server (transceiver/server.py): check
the link secret, build the backend and the end-of-turn model before it serves, serve until
told to stop, then drain and release what it holds.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from models.errors import ModelError
from models.silero import SileroModel
from models.stt import WhisperStt
from models.turn import TurnError
from transceiver import unix
from transceiver.backends.base import Backend
from transceiver.prompts import PromptLibrary, PromptLibraryError
from transceiver.proxy import ProxyBackend
from transceiver.server import TransceiverServer
from transceiver.settings import TransceiverSettings
from transceiver.turns import TurnModel, load_turn_model

log = logging.getLogger(__name__)


class LinkSecretMissing(Exception):
    """No ``--link-secret`` and no ``--insecure-no-link-secret``: the transceiver does not
    start."""


def check_link_secret(settings: TransceiverSettings) -> None:
    if settings.link_secret:
        return
    if not settings.insecure_no_link_secret:
        raise LinkSecretMissing(
            "no link secret: set RELAY_LINK_SECRET (the same for the relay and its "
            "transceivers, e.g. `openssl rand -hex 32`), or run with "
            "--insecure-no-link-secret to let anyone who reaches this port start sessions"
        )
    log.warning(
        "running WITHOUT a link secret (--insecure-no-link-secret): anyone who reaches "
        "ws://%s:%d gets sessions, bypassing the relay's API keys",
        settings.host,
        settings.port,
    )


def build_backend(settings: TransceiverSettings) -> Backend | ProxyBackend:
    if settings.backend == "openai":
        # The fallback is built once, at start: the local pipeline's models take seconds to
        # load, which a session that lost its upstream cannot wait for.
        fallback = None if settings.fallback == "none" else _engine(settings, settings.fallback)
        vad_model = None
        if settings.vad == "silero" and settings.local_turn_detection:  # the fallback's, if any
            vad_model = getattr(fallback, "vad_model", None) or SileroModel(settings.vad_model)
        return ProxyBackend(settings, fallback, vad_model)
    return _engine(settings, settings.backend)


def _engine(settings: TransceiverSettings, name: str) -> Backend:
    """The mock or the local backend."""
    if name == "mock":
        from transceiver.backends.mock import MockBackend, MockOptions, MockScript

        script = MockScript.load(settings.mock_script) if settings.mock_script else None
        return MockBackend(
            MockOptions(
                script=script,
                first_delta_ms=settings.mock_first_delta_ms,
                words_per_minute=settings.mock_words_per_minute,
                realtime=settings.mock_realtime,
            ),
            vad_model=SileroModel(settings.vad_model) if settings.vad == "silero" else None,
        )
    from transceiver.backends.local import LocalBackend

    return LocalBackend.from_settings(settings)


def build_turn_model(settings: TransceiverSettings) -> TurnModel | None:
    """The end-of-turn model that judges semantic_vad's pauses (transceiver/turns.py), or
    None where this transceiver judges none: the proxy passes semantic_vad upstream (OpenAI
    judges those turns), unless it detects turns itself (--local-turn-detection) or may fall
    back to a backend of its own. ``TurnError`` where ``--turn-model`` is unusable."""
    if not settings.judges_turns:
        return None
    return load_turn_model(
        settings.turn_model,
        settings.turn_threshold,
        text_model=settings.turn_text_model,
        text_threshold=settings.turn_text_threshold,
        min_silence_ms=settings.turn_min_silence_ms,
        stt_loader=(
            partial(WhisperStt, settings.stt_model, **settings.stt_options())
            if settings.pause_stt is not None
            else None
        ),
        build_on_first_use=settings.pause_stt == "first use",
    )


def _prepare(
    settings: TransceiverSettings,
) -> tuple[PromptLibrary | None, Backend | ProxyBackend, TurnModel | None]:
    """What the server needs, built before it serves, the link secret checked first (before
    anything loads); where any of it is missing or unusable (a model file, ``--prompts``,
    ``--turn-model``): one log line, not a traceback, and exit status 2."""
    try:
        check_link_secret(settings)
        prompts = PromptLibrary.load(settings.prompts) if settings.prompts else None
        backend = build_backend(settings)
        return prompts, backend, build_turn_model(settings)
    except (LinkSecretMissing, PromptLibraryError, ModelError, TurnError) as exc:
        log.error("transceiver not started: %s", exc)
        raise SystemExit(2) from None


async def run_transceiver(settings: TransceiverSettings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then drain (``--drain-timeout-s``) and exit.

    Without a link secret (and without ``--insecure-no-link-secret``) it logs why and
    exits with status 2 before loading anything."""
    prompts, backend, turn_model = _prepare(settings)
    # Built now, not at the first user's first pause, where pauses will ask for the words:
    # the local pipeline's speculative transcripts, or --turn-transcribe (by default the
    # mock's and the proxy's are built at their first semantic_vad pause).
    speculates = settings.local_pipeline and settings.speculative_stt
    own_stt = settings.pause_stt == "start"
    if turn_model is not None and (speculates or own_stt):
        await asyncio.to_thread(turn_model.prepare, own_stt)
    server = TransceiverServer(settings, backend, turn_model, prompts)
    try:
        listeners = await server.start()
    except (unix.SocketPathError, OSError) as exc:
        log.error("transceiver not started: %s", exc)
        await backend.aclose()
        raise SystemExit(2) from None
    on_socket = f" and unix:{settings.link_socket}" if settings.link_socket else ""
    log.info(
        "transceiver ready on ws://%s:%d%s backend=%s",
        settings.host,
        settings.port,
        on_socket,
        settings.backend,
    )
    try:
        await stop.wait()
        await server.drain(settings.drain_timeout_s)
        for listener in listeners:
            listener.close()
        if settings.link_socket:  # at once: a successor may bind the path meanwhile
            unix.release(settings.link_socket, server.socket_file)
        for listener in listeners:
            await listener.wait_closed()
    finally:
        if settings.link_socket:
            unix.release(settings.link_socket, server.socket_file)
        server.lag.stop()
        if turn_model is not None:
            turn_model.close()
        await backend.aclose()
