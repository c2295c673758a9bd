"""A SIP call joined to its Realtime session: a WebRTC :class:`~relay.webrtc.Call` whose
media is G.711 over RTP instead of Opus over SRTP.

Everything between the relay and the session is the WebRTC call's: the session is a media
session (PCM16 24 kHz, transceiver/protocol/media.py), the reply's audio is paced in 20 ms
frames by :class:`~relay.playback.OutboundAudio`, and barge-in or
``output_audio_buffer.clear`` stops it at once and truncates each cut item to what the
caller heard. Server events go to the sidebands (``?call_id=``): a phone has no data
channel. Here the caller's RTP is decoded to PCM16 24 kHz and appended; the track's frames
are encoded to G.711 and sent as RTP, one packet each 20 ms (silence when idle, which also
keeps a NAT's mapping open). RFC 4733 key presses become
``input_audio_buffer.dtmf_event_received`` ("SIP only: returned when a DTMF event is
received", OpenAI API reference), with the key in ``event`` and the Unix time in
``received_at``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import cast

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from relay.link import Upstream
from relay.ratelimit import SessionRates
from relay.sip.media import RtpStream
from relay.sip.rtp import G711, DtmfReceiver, RtpPacket
from relay.sip.sdp import Offer
from relay.webrtc import Call

log = logging.getLogger(__name__)

MAX_INBOUND_PACKETS = 50  # 1 s of caller audio waiting for the session; more is dropped
MAX_PAYLOAD_BYTES = 1600  # 200 ms of G.711; an empty or longer payload is dropped
MAX_PENDING_KEYS = 64  # key presses waiting for the sidebands; more are dropped
_RATE_HZ = 8000


class SipCall(Call):
    def __init__(
        self,
        call_id: str,
        dialog_id: str,
        upstream: Upstream,
        on_close: Callable[[Call], None],
        offer: Offer,
        rtp_timeout_s: float,
        max_pending_audio_s: float,
        rates: SessionRates | None = None,
        first: str | bytes | None = None,
    ) -> None:
        # No peer connection: the media methods that use one are overridden below.
        super().__init__(
            call_id,
            cast(RTCPeerConnection, None),
            upstream,
            on_close,
            rtp_timeout_s,
            max_pending_audio_s,
            rates,
            first,
        )
        self.dialog_id = dialog_id  # the SIP Call-ID
        self.offer = offer
        self.codec = G711(offer.codec)
        self.rtp = RtpStream(
            (offer.address, offer.port), offer.payload_type, self.on_packet, offer.dtmf_payload_type
        )
        self.dtmf = DtmfReceiver()
        self.dtmf_count = 0
        self.dropped_packets = 0
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue(MAX_INBOUND_PACKETS)
        self._keys: asyncio.Queue[str] = asyncio.Queue(MAX_PENDING_KEYS)

    def start(self) -> None:
        self._heard = time.monotonic()
        self._spawn(self._pump_upstream())
        self._spawn(self._end_when_idle())
        self._spawn(self._send_audio())
        self._spawn(self._receive_audio())
        self._spawn(self._send_keys())

    def _sends_audio(self) -> bool:
        return self.offer.direction in ("sendrecv", "recvonly")

    # -- RTP in ------------------------------------------------------------------------

    def on_packet(self, packet: RtpPacket) -> None:
        if self.closed.is_set():
            return
        if packet.payload_type == self.offer.dtmf_payload_type:
            self._heard = time.monotonic()
            key = self.dtmf.receive(packet)
            if key is not None:
                self.dtmf_count += 1
                # Exactly the documented fields: no event_id (API reference).
                event = {
                    "type": "input_audio_buffer.dtmf_event_received",
                    "event": key,
                    "received_at": int(time.time()),
                }
                try:
                    self._keys.put_nowait(json.dumps(event))
                except asyncio.QueueFull:  # the sidebands are that far behind
                    self.dropped_packets += 1
            return
        if packet.payload_type != self.offer.payload_type:
            return
        if not 0 < len(packet.payload) <= MAX_PAYLOAD_BYTES:
            self.dropped_packets += 1
            return
        self._heard = time.monotonic()
        try:
            self._inbound.put_nowait(packet.payload)
        except asyncio.QueueFull:
            self.dropped_packets += 1

    async def _receive_audio(self) -> None:
        """Caller G.711 -> PCM16 24 kHz -> ``input_audio_buffer.append``."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        pts = 0
        while True:
            payload = await self._inbound.get()
            samples = np.frombuffer(self.codec.decode(payload), dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = _RATE_HZ
            frame.pts = pts
            pts += samples.shape[1]
            pcm = b"".join(
                bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame)
            )
            if pcm:
                audio = base64.b64encode(pcm).decode("ascii")
                await self._to_session(
                    json.dumps({"type": "input_audio_buffer.append", "audio": audio})
                )

    async def _send_keys(self) -> None:
        """Key presses to the sidebands, one at a time and in order."""
        while True:
            await self.broadcast(await self._keys.get())

    # -- RTP out -----------------------------------------------------------------------

    async def _send_audio(self) -> None:
        """The paced track's 20 ms frames -> G.711 at 8 kHz -> one RTP packet each."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=_RATE_HZ)
        pending = b""
        frame_bytes = 2 * _RATE_HZ // 50
        while True:
            try:
                frame = await self.outbound.recv()
            except MediaStreamError:
                return
            pending += b"".join(
                bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame)
            )
            while len(pending) >= frame_bytes:
                chunk, pending = pending[:frame_bytes], pending[frame_bytes:]
                if self._sends_audio():
                    self.rtp.send(self.codec.encode(chunk))

    # -- events and the end ------------------------------------------------------------

    async def broadcast(self, text: str) -> None:
        """Server events go to the sidebands: a phone call has no data channel."""
        for send in list(self.sidebands):
            try:
                await send(text)
            except Exception:  # a sideband that went away
                self.sidebands.discard(send)

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._on_close(self)
        self.outbound.stop()
        self.rtp.close()
        with contextlib.suppress(Exception):
            await self.upstream.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        log.info(
            "sip call %s ended (dtmf %d, dropped packets %d, from elsewhere %d)",
            self.id,
            self.dtmf_count,
            self.dropped_packets,
            self.rtp.strangers,
        )
