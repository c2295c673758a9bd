"""The relay <-> transceiver session contract: one encode, one validating decode."""

from __future__ import annotations

import json

import pytest

from transceiver.protocol.contract import (
    VERSION,
    Dialect,
    SessionKind,
    SessionSpec,
    SpecError,
    Transport,
)


def test_a_spec_survives_the_round_trip() -> None:
    spec = SessionSpec(
        kind=SessionKind.TRANSCRIPTION,
        model=None,
        dialect=Dialect.BETA,
        transport=Transport.WEBRTC,
        overrides={"type": "transcription", "audio": {"input": {"turn_detection": None}}},
        conn="conn_1",
    )
    assert SessionSpec.decode(spec.encode()) == spec
    assert SessionSpec.decode(spec.encode().encode()) == spec  # as a binary frame too
    assert spec.beta and spec.media
    plain = SessionSpec(model="gpt-realtime")
    assert SessionSpec.decode(plain.encode()) == plain
    assert not plain.beta and not plain.media
    sip = SessionSpec(model="gpt-realtime", transport=Transport.SIP, conn="rtc_1")
    assert SessionSpec.decode(sip.encode()) == sip and sip.media  # RTP audio, paced by the relay


def frame(**fields: object) -> str:
    return json.dumps({"type": "session.open", "v": VERSION, **fields})


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ('{"type": "session.update"}', "session.open"),
        ("[1]", "session.open"),
        (json.dumps({"type": "session.open"}), "version"),
        (json.dumps({"type": "session.open", "v": 99}), "version"),
        (frame(kind="both"), "'kind'"),
        (frame(dialect="gamma"), "'dialect'"),
        (frame(transport="pstn"), "'transport'"),
        (frame(model=5), "'model'"),
        (frame(session=[1]), "'session'"),
        (frame(conn={}), "'conn'"),
        (frame(extra=1), "unknown"),
    ],
)
def test_anything_else_is_refused_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        SessionSpec.decode(raw)
