# syntax=docker/dockerfile:1
# The relay: the stateless edge (REST, WebSocket, WebRTC) in front of transceivers.
# It needs no models, so the project is installed without the `local` extra.
#
#   docker build -f docker/relay.Dockerfile -t realtime-relay-relay .
#   docker run -p 8000:8000 -e RELAY_TRANSCEIVER=ws://TRANSCEIVER_HOST:8100 \
#       -e RELAY_LINK_SECRET realtime-relay-relay      (the transceivers' secret)
#
# WebRTC media is UDP on ephemeral ports picked per call, which a bridge network does not
# publish. For WebRTC calls from other machines run the relay with host networking
# (`docker run --network host`, `network_mode: host` in compose), and set
# RELAY_WEBRTC_PUBLIC_IP when the host itself sits behind a 1:1 NAT (a cloud VM); or relay
# the media through a TURN server (RELAY_ICE_SERVERS=turn:...). WebSocket sessions need
# only TCP 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Every dependency ships a manylinux wheel: no compiler needed. The README is part of the
# package metadata (pyproject's `readme`).
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY transceiver ./transceiver
COPY models ./models
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . \
    && rm -rf /src

RUN useradd --create-home --home-dir /home/relay --uid 10001 --user-group relay
USER relay
WORKDIR /home/relay

# Listen on every interface of the container (the settings default to 127.0.0.1).
ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8000
EXPOSE 8000

# No curl in slim images: ask /healthz with the standard library. 503 (draining) fails too.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8000'), timeout=4)"]

# Exec form: the relay is PID 1 and gets SIGTERM itself, so it drains (RELAY_DRAIN_TIMEOUT_S).
# RELAY_TRANSCEIVER (ws://HOST:8100, comma-separated) and RELAY_LINK_SECRET must be set.
CMD ["realtime-relay", "relay"]
