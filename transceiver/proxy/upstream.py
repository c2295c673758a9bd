"""The upstream of the ``openai`` backend: one WebSocket connection per session."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from models.silero import SileroModel
from transceiver.backends.base import Backend
from transceiver.proxy.fallback import CAPACITY, UNREACHABLE
from transceiver.proxy.policy import ProxyPolicy
from transceiver.settings import TransceiverSettings

log = logging.getLogger(__name__)


class UpstreamRefused(Exception):
    """``fallback``: the reason a fallback may take the session (transceiver/proxy/fallback.py),
    or ``None`` for a configuration error (credentials, a bad request or URL)."""

    def __init__(
        self, message: str, code: str, close_code: int, fallback: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.close_code = message, code, close_code
        self.fallback = fallback


class ProxyBackend:
    """The ``openai`` backend: opens one upstream connection per session."""

    name = "openai"

    def __init__(
        self,
        settings: TransceiverSettings,
        fallback: Backend | None = None,
        vad_model: SileroModel | None = None,
    ) -> None:
        self.settings = settings
        self.fallback = fallback  # --fallback: where a session goes on without the upstream
        # --vad silero: --local-turn-detection's speech detector classifies frames with it
        self.vad_model = vad_model
        self.policy = ProxyPolicy.from_settings(settings)
        self.api_key = settings.upstream_api_key or os.environ.get("OPENAI_API_KEY")
        self.headers: list[tuple[str, str]] = []
        for entry in settings.upstream_header:
            name, sep, value = entry.partition(":")
            if not sep:
                raise ValueError(f"--upstream-header entries are NAME:VALUE, not {entry!r}")
            self.headers.append((name.strip(), value.strip()))

    def model_ids(self) -> list[str]:
        return self.policy.model_ids()

    async def aclose(self) -> None:
        if self.fallback is not None:
            await self.fallback.aclose()

    async def open(self, model: str | None, transcription: bool, beta: bool) -> ClientConnection:
        query = {"intent": "transcription"} if transcription else {}
        if not transcription:
            query["model"] = self.policy.upstream_model(model or "gpt-realtime")
        url = self.settings.upstream_url
        url += ("&" if "?" in url else "?") + urlencode(query) if query else ""
        headers = list(self.headers)
        if self.api_key:
            headers.append(("Authorization", f"Bearer {self.api_key}"))
        if beta:
            headers.append(("OpenAI-Beta", "realtime=v1"))
        try:
            return await connect(
                url,
                additional_headers=headers,
                open_timeout=self.settings.upstream_open_timeout_s,
                max_size=self.settings.max_frame_bytes,
                compression=None,
                ping_interval=20,
                ping_timeout=20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise UpstreamRefused(
                    f"The upstream Realtime server refused the server's credentials ({status}).",
                    "upstream_auth_failed",
                    1008,
                ) from exc
            retry_later = status in (429, 503)
            raise UpstreamRefused(
                f"The upstream Realtime server refused the session ({status}).",
                "upstream_unavailable",
                1013 if retry_later else 1011,
                # A server error or a busy server, not a request the upstream will never take.
                CAPACITY if retry_later else UNREACHABLE if status >= 500 else None,
            ) from exc
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            # The details (host, address, handshake) go to the log, not to the client.
            log.warning("upstream unreachable: %s", exc or type(exc).__name__)
            raise UpstreamRefused(
                "The upstream Realtime server could not be reached.",
                "upstream_unavailable",
                1011,
                None if isinstance(exc, InvalidURI) else UNREACHABLE,
            ) from exc
