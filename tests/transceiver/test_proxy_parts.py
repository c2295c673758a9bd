"""The proxy's pure parts: reading client frames, the policy, the mirror, the media check,
the initial update in either dialect."""

from __future__ import annotations

from typing import Any

import pytest

from transceiver.protocol.contract import Dialect, SessionKind, SessionSpec, Transport
from transceiver.protocol.errors import ClientError
from transceiver.protocol.media import check_media_formats
from transceiver.proxy.mirror import Mirror
from transceiver.proxy.policy import ProxyPolicy, client_event
from transceiver.proxy.session import ProxyBackend, ProxySession
from transceiver.settings import TransceiverSettings


def test_only_plain_audio_appends_skip_parsing() -> None:
    append = '{"type":"input_audio_buffer.append","audio":"AAAA"}'
    assert client_event(append) is None
    doubled = '{"type":"input_audio_buffer.append","type":"session.update","session":{}}'
    assert client_event(doubled) == {"type": "session.update", "session": {}}
    reordered = '{"session":{"type":"realtime"},"type":"session.update"}'
    assert client_event(reordered) == {"session": {"type": "realtime"}, "type": "session.update"}
    for odd in ("[1, 2]", "not json", '"text"'):
        assert client_event(odd) is None  # forwarded; the upstream answers with an error


def test_policy_maps_models_and_prefixes_instructions() -> None:
    policy = ProxyPolicy(frozenset({"a", "b"}), {"a": "b"}, "PREFIX")
    event = {"type": "session.update", "session": {"model": "a", "instructions": "mine"}}
    assert policy.rewrite_client_event(event) == {
        "type": "session.update",
        "session": {"model": "b", "instructions": "PREFIX\n\nmine"},
    }
    with pytest.raises(ClientError):
        policy.rewrite_client_event({"type": "session.update", "session": {"model": "c"}})
    assert policy.rewrite_client_event({"type": "response.create"}) is None


def test_mirror_times_each_turn_once_and_sums_usage() -> None:
    mirror = Mirror()
    assert mirror.first_output(1.0) is None  # no turn yet
    mirror.observe({"type": "input_audio_buffer.speech_stopped"}, 10.0)
    mirror.observe({"type": "response.created"}, 10.1)  # the turn began at speech_stopped
    assert mirror.first_output(10.5) == pytest.approx(0.5)
    assert mirror.first_output(10.6) is None  # later deltas are not the turn's first
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    reported = mirror.observe({"type": "response.done", "response": {"usage": usage}}, 11.0)
    assert reported == usage
    mirror.observe({"type": "response.done", "response": {"usage": usage}}, 12.0)
    assert mirror.summary()["output_tokens"] == 10 and mirror.summary()["turns"] == 1


PCM = {"type": "audio/pcm", "rate": 24000}
PCMU = {"type": "audio/pcmu"}


def test_webrtc_calls_keep_pcm() -> None:
    ga = {"audio": {"output": {"format": PCMU}}}
    with pytest.raises(ClientError) as refused:
        check_media_formats(ga)
    assert refused.value.param == "session.audio.output.format"
    with pytest.raises(ClientError) as refused:
        check_media_formats({"input_audio_format": "g711_alaw"})  # the beta shape
    assert refused.value.param == "session.input_audio_format"
    check_media_formats({"instructions": "hi"})
    check_media_formats({"audio": {"input": {"format": PCM}}})
    check_media_formats({"audio": {"input": {"format": {"rate": 24000}}}})  # PCM by default
    whole = {"type": "realtime", "audio": {"input": {"format": PCM}, "output": {"format": PCM}}}
    check_media_formats(whole)  # the core checks whole configurations
    check_media_formats("not an object")  # names no format: the validation answers it


def key_session(**fields: Any) -> dict[str, Any]:
    """A key's or an offer's session as the relay validated it (GA, whole)."""
    audio = {
        "input": {"format": PCM, "turn_detection": {"type": "server_vad"}, "transcription": None},
        "output": {"format": PCM, "voice": "alloy", "speed": 1.0},
    }
    session = {"type": "realtime", "model": "gpt-realtime", "instructions": "Hi.", "audio": audio}
    return session | fields


def proxied(overrides: dict[str, Any] | None, **spec: Any) -> ProxySession:
    settings = {"backend": "openai", "instructions_prefix": "PREFIX"}
    backend = ProxyBackend(TransceiverSettings.model_validate(settings))
    return ProxySession(backend, client=None, spec=SessionSpec(overrides=overrides, **spec))


def test_the_initial_update_of_a_webrtc_call_keeps_pcm() -> None:
    """An offer's or a key's G.711 would reach the upstream, whose audio the relay plays as
    PCM: the proxy sends PCM instead, as the core keeps it."""
    key = key_session(
        audio={"input": {"format": PCMU}, "output": {"format": PCMU, "voice": "alloy"}}
    )
    update = proxied(key, transport=Transport.WEBRTC)._initial_update()
    assert update is not None and update["type"] == "session.update"
    audio = update["session"]["audio"]
    assert audio["input"]["format"] == audio["output"]["format"] == PCM
    assert audio["output"]["voice"] == "alloy"
    assert update["session"]["instructions"] == "PREFIX\n\nHi."
    assert "model" not in update["session"]
    over_websocket = proxied(key)._initial_update()
    assert over_websocket is not None
    assert over_websocket["session"]["audio"]["input"]["format"] == PCMU


def test_a_beta_upstream_gets_the_flat_shape() -> None:
    key = key_session(
        instructions="Be brief.",
        output_modalities=["text"],
        max_output_tokens=200,
        tracing=None,  # no place in the beta shape: left out
        audio={
            "input": {"format": PCMU, "turn_detection": None},
            "output": {"format": PCM, "voice": {"id": "voice_1"}, "speed": 1.2},
        },
    )
    update = proxied(key, dialect=Dialect.BETA)._initial_update()
    assert update is not None and update["type"] == "session.update"
    flat = update["session"]
    assert flat["instructions"] == "PREFIX\n\nBe brief."
    assert flat["modalities"] == ["text"]
    assert flat["max_response_output_tokens"] == 200
    assert flat["input_audio_format"] == "g711_ulaw" and flat["output_audio_format"] == "pcm16"
    assert flat["turn_detection"] is None
    assert flat["voice"] == "voice_1" and flat["speed"] == 1.2
    for ga_only in ("audio", "type", "model", "tracing", "output_modalities"):
        assert ga_only not in flat
    # Without a key, only the prefix; a beta transcription session has its own event.
    only_prefix = proxied(None, dialect=Dialect.BETA)._initial_update()
    assert only_prefix == {"type": "session.update", "session": {"instructions": "PREFIX"}}
    transcription = proxied(
        {"type": "transcription", "audio": {"input": {"format": PCM}}},
        dialect=Dialect.BETA,
        kind=SessionKind.TRANSCRIPTION,
    )._initial_update()
    assert transcription == {
        "type": "transcription_session.update",
        "session": {"input_audio_format": "pcm16"},
    }
