"""The session side of ``--local-turn-detection`` (transceiver/proxy/turns.py): a mixin of
``ProxySession``, kept apart so each file stays readable. Client frames go through the
turn detection; what it decides goes to the client and the upstream in order; upstream
events are shown to the client as its own turn detection would have made them
(transceiver/proxy/local_view.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from transceiver.protocol.errors import ClientError
from transceiver.proxy.local_view import AudioMeter, is_session_event
from transceiver.proxy.policy import APPEND_PREFIX, client_event
from transceiver.proxy.turns import LocalTurns


class LocalTurnsBridge:
    meter: AudioMeter
    _turns_lock: asyncio.Lock

    async def _deliver(self, event: dict[str, Any], text: str) -> None:
        raise NotImplementedError

    async def _send_error(self, message: str, code: str, **error: Any) -> None:
        raise NotImplementedError

    def _local_view(
        self, turns: LocalTurns, event: dict[str, Any], text: str
    ) -> tuple[dict[str, Any], str]:
        """An upstream event as the client of ``--local-turn-detection`` sees it: its own
        turn detection, its items' ids (transceiver/proxy/local_view.py)."""
        changed = turns.upstream_event(event)
        if is_session_event(event.get("type")):
            turns.client_view(event)
            changed = True
        if changed:
            text = json.dumps(event)
        swapped = turns.items.to_client(text)
        return (event, text) if swapped is text else (json.loads(swapped), swapped)

    async def _local_client_frame(
        self, upstream: ClientConnection, turns: LocalTurns, text: str
    ) -> None:
        """A client frame under ``--local-turn-detection`` (transceiver/proxy/turns.py):
        its audio goes to the turn detection; a commit or a clear there first; a session
        update shows the upstream no turn detection. Audio that is not whole base64
        samples goes upstream as it is, for the upstream to answer."""
        event = client_event(text) if not text.startswith(APPEND_PREFIX) else None
        event = event if event is not None else _json_object(text)
        etype = event.get("type") if event is not None else None
        then: str | None = turns.items.to_upstream(text)
        if event is not None and etype == "input_audio_buffer.append":
            audio = _audio(event.get("audio"), self.meter.fmt.sample_bytes)
            if audio is not None:
                self.meter.received(len(audio))
                turns.append(audio)
                then = None
        elif event is not None and etype == "input_audio_buffer.commit":
            turns.commit(event.get("event_id"))
        elif etype == "input_audio_buffer.clear":
            turns.clear()
        elif event is not None and str(etype).endswith("session.update"):
            try:
                then = turns.items.to_upstream(json.dumps(turns.client_update(event)))
            except ClientError as exc:
                await self._send_error(
                    exc.message,
                    exc.code or "invalid_value",
                    type="invalid_request_error",
                    param=exc.param,
                    event_id=event.get("event_id"),
                )
                return
        await self._flush(upstream, turns, then)

    async def _flush(
        self, upstream: ClientConnection, turns: LocalTurns, then: str | None = None
    ) -> None:
        """Send what the turn detection has for the client, then for the upstream, then
        ``then`` (a client frame), in this order whichever task calls."""
        async with self._turns_lock:
            events, frames = turns.take()
            with contextlib.suppress(ConnectionClosed):  # the client's reader sees it end
                for event in events:
                    await self._deliver(event, json.dumps(event))
            for frame in [*frames, *([then] if then is not None else [])]:
                await upstream.send(frame)

    async def _turns_ended(self, upstream: ClientConnection, turns: LocalTurns) -> None:
        """Send what a turn that ended later brings (semantic_vad's model decided)."""
        while True:
            await turns.wake.wait()
            turns.wake.clear()
            await self._flush(upstream, turns)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _audio(text: Any, sample_bytes: int) -> bytes | None:
    """An append's audio, or ``None`` if it is not base64 of whole samples."""
    if not isinstance(text, str):
        return None
    try:
        audio = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return audio if len(audio) % sample_bytes == 0 else None
