"""The proxy's pure parts: reading client frames, the policy, the mirror, the playback clock."""

from __future__ import annotations

import base64

import pytest

from transceiver.protocol.errors import ClientError
from transceiver.proxy.mirror import Mirror, Playback
from transceiver.proxy.policy import ProxyPolicy, check_media_formats, client_event


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


def delta(response_id: str, item_id: str, ms: int) -> dict[str, str]:
    audio = base64.b64encode(b"\0" * (48 * ms)).decode()
    return {"response_id": response_id, "item_id": item_id, "delta": audio}


def test_playback_cuts_at_what_was_heard_and_ignores_late_audio() -> None:
    now = [0.0]
    playback = Playback(clock=lambda: now[0])
    playback.audio(delta("resp_1", "item_1", 1000))
    now[0] = 0.5
    assert playback.interrupt() == ("item_1", 500)
    # Audio of the cut response still in flight neither restarts nor extends playback.
    playback.audio(delta("resp_1", "item_1", 1000))
    assert playback.interrupt() is None
    now[0] = 1.0
    playback.audio(delta("resp_2", "item_2", 1000))
    now[0] = 1.25
    assert playback.interrupt() == ("item_2", 250)


def test_webrtc_calls_keep_pcm_through_the_proxy() -> None:
    ga = {
        "type": "session.update",
        "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}},
    }
    with pytest.raises(ClientError) as refused:
        check_media_formats(ga)
    assert refused.value.param == "session.audio.output.format"
    beta = {"type": "session.update", "session": {"input_audio_format": "g711_alaw"}}
    with pytest.raises(ClientError):
        check_media_formats(beta)
    check_media_formats({"type": "session.update", "session": {"instructions": "hi"}})
    pcm = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    check_media_formats({"type": "session.update", "session": pcm})
