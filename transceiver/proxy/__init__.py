"""The ``openai`` backend: each session is proxied to an upstream Realtime WebSocket.

Frames pass through unchanged in both directions. The proxy only steps in where the
operator's policy or the transport requires it:

- the model a client asks for is checked against ``--allowed-models`` and renamed by
  ``--model-map``; the upstream key comes from the server's environment, never the client;
- ``--instructions-prefix`` goes before the client's instructions (``session.update`` and
  ``response.create``), and a session configuration carried by an ephemeral key or a WebRTC
  offer is applied before the client sees ``session.created``;
- on WebRTC sessions (``media``) the audio format stays PCM (transceiver/protocol/media.py).
  Playback is the relay's: on barge-in or ``output_audio_buffer.clear`` it truncates the
  item to what the caller heard with a ``conversation.item.truncate`` of its own
  (relay/webrtc.py), which passes upstream like any client event.

The conversation seen in passing (items, transcripts, usage) is mirrored for logs and
metrics after each frame is forwarded, so it adds nothing to the hot path; with
``--fallback`` a session the upstream cannot serve goes on with a local backend from what
the client has seen (transceiver/proxy/fallback.py).
"""

from transceiver.proxy.session import ProxyBackend, ProxySession, UpstreamRefused

__all__ = ["ProxyBackend", "ProxySession", "UpstreamRefused"]
