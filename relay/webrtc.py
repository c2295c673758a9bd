"""WebRTC calls: aiortc media and the ``oai-events`` data channel.

Each call is one transceiver session with the WebRTC transport (a media session, see
transceiver/protocol/contract.py). The relay decodes the caller's Opus to PCM16 24 kHz and
appends it to the session; the session's audio deltas go back as Opus on the outgoing
track, in 20 ms frames paced on a monotonic clock (silence when idle). Every other server
event goes on the data channel and to any sideband WebSocket (``?call_id=``).

Playback is the relay's alone, so the ``output_audio_buffer.*`` events come from here, and
so do cuts: on barge-in (``input_audio_buffer.speech_started`` while a reply plays, when
the session's turn detection interrupts responses) or the client's
``output_audio_buffer.clear``, the relay stops the track at once, drops the rest of that
response's audio, and truncates each cut item to what the caller heard (counted in the
frames the track sent) with a ``conversation.item.truncate`` of its own, for every
backend: the truncate "will synchronize the server's understanding of the audio with the
client's playback" (OpenAI API reference, ``conversation.item.truncate``), and here the
relay is the client that plays it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from websockets.exceptions import ConnectionClosed

from relay.errors import ApiError
from relay.link import Upstream
from relay.playback import BYTES_PER_MS, OutboundAudio
from relay.ratelimit import PASS, SessionRates
from transceiver.protocol.errors import ClientError, server_error_event
from transceiver.protocol.ids import IdFactory

log = logging.getLogger(__name__)

_CLEAR = "output_audio_buffer.clear"
_CUT_EVENT_PREFIX = "relay_cut_"  # the event ids of the relay's own truncates
# Events kept for a data channel not open yet (an audio-only call never opens one): the
# newest, past these the oldest go (session.created stays) and the caller is told.
MAX_BACKLOG_EVENTS = 256
MAX_BACKLOG_BYTES = 1024 * 1024
# Most bytes waiting in aiortc's SCTP send queue for an open data channel (its
# ``bufferedAmount``, which aiortc does not bound): past it events are dropped, counted,
# and the caller is told once the queue has room again.
MAX_CHANNEL_BUFFERED_BYTES = 1024 * 1024
Send = Callable[[str], Awaitable[None]]


@dataclass
class _Truncation:
    """A truncate the relay sent; ``cleared`` is announced when the transceiver answers."""

    event_id: str
    cleared: str | None  # the response id for output_audio_buffer.cleared, if still due


# For a session's first event, before a call is answered (:func:`first_event`).
FIRST_EVENT_TIMEOUT_S = 10.0


class Call:
    """One WebRTC call: peer connection, data channel, sidebands and the upstream session."""

    def __init__(
        self,
        call_id: str,
        pc: RTCPeerConnection,
        upstream: Upstream,
        on_close: Callable[[Call], None],
        idle_timeout_s: float = 20.0,
        max_pending_audio_s: float = 60.0,
        rates: SessionRates | None = None,
        first: str | bytes | None = None,
    ) -> None:
        self.id = call_id
        self._first = first  # the session's first event, read before the call was answered
        self.rates = rates  # the key's rate limits (relay/ratelimit.py)
        self.idle_timeout_s = idle_timeout_s
        self.max_pending_audio_s = max_pending_audio_s
        self._max_pending_bytes = int(max_pending_audio_s * 1000) * BYTES_PER_MS
        self.pc = pc
        self.upstream = upstream
        self.ids = IdFactory()
        self.outbound = OutboundAudio(self._drained)
        self.sidebands: set[Send] = set()
        self._channel: RTCDataChannel | None = None
        self._backlog: deque[str] = deque()  # events before the channel opened
        self._backlog_bytes = 0
        self._backlog_dropped = 0  # events dropped from the backlog
        self._channel_dropped = 0  # events dropped while the channel's queue was full
        self._response_id: str | None = None  # whose audio is playing or played last
        self._item_id = ""  # the item of that audio
        self._response_open = False  # no response.done for it yet: more audio may come
        self._cut_response_id: str | None = None  # its playback was cut: drop the rest
        self._barge_in = True  # the session's turn detection interrupts responses
        self._truncations: dict[str, _Truncation] = {}  # by item id, until answered
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_close = on_close
        self.closed = asyncio.Event()
        self._heard = time.monotonic()  # when caller audio last arrived (or the call began)

    # -- wiring ------------------------------------------------------------------------

    def start(self) -> None:
        self._heard = time.monotonic()
        self._spawn(self._pump_upstream())
        self._spawn(self._end_when_idle())

        # The offer's tracks exist once the remote description is set; drain them all. A
        # section the caller only receives on (``recvonly``) has none.
        for receiver in self.pc.getReceivers():
            track = receiver.track
            if track is not None:
                self._spawn(self._drain(track) if track.kind == "audio" else _discard(track))

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == "oai-events":
                self._open_channel(channel)

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    def _open_channel(self, channel: RTCDataChannel) -> None:
        """Take the caller's ``oai-events`` channel: its messages go to the session, and
        the events kept for it go out once it is open."""
        self._channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._spawn(self.from_client(message))

        def flush() -> None:
            backlog, self._backlog, self._backlog_bytes = self._backlog, deque(), 0
            for event in backlog:
                self._send_on_channel(channel, event)
            if self._backlog_dropped:  # told after the events kept (session.created first)
                message = (
                    f"{self._backlog_dropped} server events sent before the data channel "
                    f"opened were dropped: at most {MAX_BACKLOG_EVENTS} events "
                    f"({MAX_BACKLOG_BYTES} bytes) are kept for it."
                )
                error = server_error_event(self.ids.event_id(), message, "events_dropped")
                self._backlog_dropped = 0
                self._send_on_channel(channel, json.dumps(error))

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def from_client(self, message: str | bytes) -> None:
        """A client event (data channel or sideband) for the session; playback's own,
        ``output_audio_buffer.clear``, is answered here."""
        if isinstance(message, bytes):
            text = message.decode("utf-8", "replace") if _CLEAR.encode() in message else ""
        else:
            text = message
        if _CLEAR in text:
            event = json_object(text)
            if event is not None and event.get("type") == _CLEAR:
                await self._clear(event)
                return
        refusal = self.rates.refuse(message) if self.rates is not None else None
        if refusal is not None:  # past the key's rate limits: not passed on
            await self.broadcast(refusal)
            return
        await self._to_session(message)

    async def _to_session(self, message: str | bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.upstream.send(message)

    async def _end_when_idle(self) -> None:
        """End the call once no caller audio has arrived for ``idle_timeout_s``, counted from
        the call's start: whatever its offer held, and whether or not ICE and DTLS ever
        completed, every call ends (or is hung up, drained, or closed by its session)."""
        while True:
            left = self._heard + self.idle_timeout_s - time.monotonic()
            if left <= 0:
                log.info("call %s: no caller audio for %.1f s", self.id, self.idle_timeout_s)
                await self.close()
                return
            try:
                await asyncio.wait_for(self.closed.wait(), left)
                return  # ended some other way
            except TimeoutError:
                continue

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Caller audio -> PCM16 24 kHz -> ``input_audio_buffer.append``."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # the caller hung up: the call ends
                log.info("call %s: caller audio stopped", self.id)
                await self.close()
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            self._heard = time.monotonic()
            pcm = b"".join(
                bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame)
            )
            if pcm:
                audio = base64.b64encode(pcm).decode("ascii")
                await self._to_session(
                    json.dumps({"type": "input_audio_buffer.append", "audio": audio})
                )

    # -- playback cuts -----------------------------------------------------------------

    def _stop_playback(self) -> list[tuple[str, int]] | None:
        """Stop the reply's audio at once. ``None`` if no response's audio is playing or
        still to come; else each cut item with the milliseconds of it the caller heard."""
        items = self.outbound.clear()
        if not items and not self._response_open:
            return None
        if self._response_open and self._item_id not in items:
            items.append(self._item_id)  # the track ran dry, but more of it was coming
        self._cut_response_id = self._response_id
        self._response_open = False
        return [(item, self.outbound.played_ms(item)) for item in items if item]

    async def _truncate(self, item_id: str, audio_end_ms: int, cleared: str | None) -> None:
        """Truncate the item in the session to what the caller heard."""
        event_id = _CUT_EVENT_PREFIX + self.ids.event_id()
        self._truncations[item_id] = _Truncation(event_id, cleared)
        await self._to_session(
            json.dumps(
                {
                    "type": "conversation.item.truncate",
                    "event_id": event_id,
                    "item_id": item_id,
                    "content_index": 0,
                    "audio_end_ms": audio_end_ms,
                }
            )
        )

    async def _clear(self, event: dict[str, Any]) -> None:
        """The client's ``output_audio_buffer.clear``."""
        response_id = self._response_id
        if response_id is None:
            client_event_id = event.get("event_id")
            error = ClientError("There is no output audio to clear.", code="invalid_value")
            shown = client_event_id if isinstance(client_event_id, str) else None
            await self.broadcast(self._event("error", error=error.to_error(shown)))
            return
        cut = self._stop_playback()
        if not cut:  # nothing left to play: the buffer is clear already
            await self.broadcast(self._cleared(response_id))
            return
        # Announced when the session has answered the truncate, so the client sees it
        # after the answers to everything it sent before (a response.cancel, say).
        for index, (item_id, audio_end_ms) in enumerate(cut):
            await self._truncate(item_id, audio_end_ms, response_id if index == 0 else None)

    def _answered(self, event: dict[str, Any]) -> tuple[_Truncation | None, bool]:
        """The relay's truncation an event answers, if any; and whether to hide the event
        (an error answering the relay's own truncate is the relay's, not the client's)."""
        if event.get("type") == "conversation.item.truncated":
            return self._truncations.pop(str(event.get("item_id")), None), False
        if event.get("type") == "error":
            event_id = (event.get("error") or {}).get("event_id")
            if isinstance(event_id, str) and event_id.startswith(_CUT_EVENT_PREFIX):
                for item_id, truncation in list(self._truncations.items()):
                    if truncation.event_id == event_id:
                        del self._truncations[item_id]
                        return truncation, True
                return None, True
        return None, False

    def _cleared(self, response_id: str | None) -> str:
        return self._event("output_audio_buffer.cleared", response_id=response_id)

    # -- server events ----------------------------------------------------------------

    def _event(self, type: str, **fields: Any) -> str:
        return json.dumps({"type": type, "event_id": self.ids.event_id(), **fields})

    async def _pump_upstream(self) -> None:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                await self._upstream_frame(first)
            async for frame in self.upstream:
                await self._upstream_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            await self.close()

    async def _upstream_frame(self, frame: str | bytes) -> None:
        text = frame if isinstance(frame, str) else frame.decode()
        action = self.rates.on_server(text) if self.rates is not None else PASS
        if not action.drop:
            await self._server_event(text)
        for event in action.to_client:
            await self.broadcast(event)
        for event in action.to_upstream:
            await self._to_session(event)

    async def _server_event(self, text: str) -> None:
        event = json.loads(text)
        kind = event.get("type")
        if kind == "response.output_audio.delta":  # audio goes on the media track
            await self._play(event)
            return
        if kind == "input_audio_buffer.speech_started" and self._barge_in:
            cut = self._stop_playback()
            if cut is not None:  # barge-in: the reply stops at once
                for item_id, audio_end_ms in cut:
                    await self._truncate(item_id, audio_end_ms, None)
                await self.broadcast(text)
                await self.broadcast(self._cleared(self._response_id))
                return
        if kind in ("session.created", "session.updated"):
            self._barge_in = _interrupts(event.get("session"))
        elif kind == "response.done":
            if (event.get("response") or {}).get("id") == self._response_id:
                self._response_open = False
        else:
            truncation, hidden = self._answered(event)
            if truncation is not None and truncation.cleared is not None:
                await self.broadcast(self._cleared(truncation.cleared))
            if hidden:
                log.warning("call %s: the session refused a truncate: %s", self.id, text)
                return
        await self.broadcast(text)

    async def _play(self, event: dict[str, Any]) -> None:
        """A reply's audio delta onto the track, within ``max_pending_audio_s`` of playback.

        The bound is kept without ever pausing the read from the session: the events behind
        the audio must arrive at once. ``input_audio_buffer.speech_started`` cuts playback
        (barge-in) only when it reaches the relay, and an upstream faster than real time
        (the OpenAI proxy) queues it behind all the audio it has made; a paused read would
        also stall the session's reading of the caller's audio (transceiver/outbox.py), so
        its VAD would not even hear the caller. Instead a response whose audio runs more
        than the bound ahead of playback is cut where the bound falls, as a cut by the
        caller would be: the rest of its audio is dropped, its item is truncated to what
        the track will have played by then (``conversation.item.truncate``, which also ends
        the response in the session), and the caller gets an ``error`` saying so. What the
        caller heard stays exact: the truncate counts frames sent plus frames pending, and
        a barge-in before they are played truncates again, to the frames sent.
        """
        response_id = event.get("response_id")
        if response_id == self._cut_response_id:
            return  # still in flight when its playback was cut: never played
        if not self._sends_audio():
            return  # the caller's offer does not receive audio: nobody would hear it
        item_id = str(event.get("item_id") or "")
        pcm = base64.b64decode(event.get("delta", ""))
        if self.outbound.pending_bytes + len(pcm) > self._max_pending_bytes:
            await self._overflow(response_id, item_id)
            return
        if response_id != self._response_id:
            self._response_id, self._response_open = response_id, True
        self._item_id = item_id
        if not self.outbound.playing:
            await self.broadcast(
                self._event("output_audio_buffer.started", response_id=response_id)
            )
        self.outbound.push(pcm, item_id)

    async def _overflow(self, response_id: Any, item_id: str) -> None:
        """Cut a response whose audio would run more than the bound ahead of playback."""
        if response_id == self._response_id:
            self._response_open = False
        self._cut_response_id = response_id
        heard_ms = self.outbound.queued_ms(item_id)
        log.warning(
            "call %s: response %s is cut at %d ms: its audio ran more than %.0f s ahead "
            "of playback",
            self.id,
            response_id,
            heard_ms,
            self.max_pending_audio_s,
        )
        if item_id:
            await self._truncate(item_id, heard_ms, None)
        message = (
            f"The response's audio arrived more than {self.max_pending_audio_s:g} s ahead of "
            f"its playback; it was cut after {heard_ms} ms (--webrtc-max-pending-audio-s)."
        )
        error = server_error_event(self.ids.event_id(), message, "output_audio_overflow")
        await self.broadcast(json.dumps(error))

    def _sends_audio(self) -> bool:
        """Whether the answer sends the track to the caller: not when the caller's audio
        section was ``sendonly`` (the track is never pulled, so audio would only pile up)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is self.outbound:
                direction = transceiver.currentDirection
                return direction is None or direction in ("sendrecv", "sendonly")
        return True

    def _drained(self) -> None:
        """The outgoing track played its last buffered frame."""
        self._spawn(
            self.broadcast(
                self._event("output_audio_buffer.stopped", response_id=self._response_id)
            )
        )

    async def broadcast(self, text: str) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            self._send_on_channel(channel, text)
        elif channel is None or channel.readyState == "connecting":
            self._keep(text)
        for send in list(self.sidebands):
            try:
                await send(text)
            except Exception:  # a sideband that went away
                self.sidebands.discard(send)

    def _keep(self, text: str) -> None:
        """Keep an event for the data channel, dropping the oldest past the bounds (but
        ``session.created``, the first, which clients wait for)."""
        self._backlog.append(text)
        self._backlog_bytes += len(text)
        while len(self._backlog) > 1 and (
            len(self._backlog) > MAX_BACKLOG_EVENTS or self._backlog_bytes > MAX_BACKLOG_BYTES
        ):
            index = 1 if '"session.created"' in self._backlog[0][:64] else 0
            self._backlog_bytes -= len(self._backlog[index])
            del self._backlog[index]
            if not self._backlog_dropped:
                log.warning("call %s: events for its data channel are being dropped", self.id)
            self._backlog_dropped += 1

    def _send_on_channel(self, channel: RTCDataChannel, text: str) -> None:
        if channel.bufferedAmount + len(text) > MAX_CHANNEL_BUFFERED_BYTES:
            if not self._channel_dropped:
                log.warning("call %s: its data channel is full: events are dropped", self.id)
            self._channel_dropped += 1
            return
        if self._channel_dropped and channel.bufferedAmount <= MAX_CHANNEL_BUFFERED_BYTES // 2:
            message = (
                f"{self._channel_dropped} server events were dropped: the data channel had "
                f"more than {MAX_CHANNEL_BUFFERED_BYTES} bytes waiting to be sent."
            )
            self._channel_dropped = 0
            channel.send(
                json.dumps(server_error_event(self.ids.event_id(), message, "events_dropped"))
            )
        try:
            channel.send(text)
        except ValueError as exc:
            # Larger than the caller's data channel takes (its SDP's max-message-size; a
            # long item's audio in conversation.item.retrieved, say). The call goes on; a
            # sideband connection, whose frames may be far larger, receives the event.
            log.warning("call %s: an event was not sent on the data channel: %s", self.id, exc)
            message = (
                f"A server event of {len(text.encode())} bytes is larger than this data "
                "channel takes; a sideband connection (?call_id=) receives it."
            )
            error = server_error_event(self.ids.event_id(), message, "event_too_large")
            channel.send(json.dumps(error))

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._on_close(self)
        self.outbound.stop()
        with contextlib.suppress(Exception):
            await self.upstream.close()
        try:
            await self.pc.close()
        except Exception as exc:  # aiortc's close can raise on a half-negotiated connection
            log.warning("call %s: closing its peer connection failed: %r", self.id, exc)
        # Nothing of the call outlives it: a track whose media never started (no ICE or
        # DTLS) is not ended by closing the connection, so its drain is cancelled here.
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        log.info("call %s ended", self.id)


async def first_event(upstream: Upstream) -> str | bytes | None:
    """The session's first event, read before a call is answered (WebRTC or SIP):
    ``session.created``, which goes to the call first (``Call(first=...)``); or an
    ``error`` (the transceiver refused the session's configuration, say a prompt it does
    not have), raised as an ``ApiError`` 400: once answered, a WebRTC caller's data channel
    is not open yet, and a phone has none, so the error would be lost with the call.
    ``None`` if nothing came within ``FIRST_EVENT_TIMEOUT_S`` (the call goes on)."""
    try:
        async with asyncio.timeout(FIRST_EVENT_TIMEOUT_S):
            frame = await upstream.recv()
    except TimeoutError:
        return None
    except ConnectionClosed:
        raise ApiError(
            502, "The session ended before the call could start.", "session_failed"
        ) from None
    event = json_object(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))
    if event is not None and event.get("type") == "error":
        given = event.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        kind = str(error.get("type") or "invalid_request_error")
        raise ApiError(
            400 if kind == "invalid_request_error" else 503,  # a draining transceiver, say
            str(error.get("message") or "The session was refused."),
            str(error.get("code") or "invalid_value"),
            type=kind,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
        )
    return frame


def json_object(text: str) -> dict[str, Any] | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _interrupts(session: Any) -> bool:
    """Whether the session's turn detection cuts a reply when the user starts speaking
    (``interrupt_response``, true by default); GA or beta session shape."""
    if not isinstance(session, dict):
        return True
    audio = session.get("audio")
    if isinstance(audio, dict):
        turn_detection = (audio.get("input") or {}).get("turn_detection")
    else:
        turn_detection = session.get("turn_detection")
    if not isinstance(turn_detection, dict):
        return True
    return turn_detection.get("interrupt_response", True) is not False


async def _discard(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
