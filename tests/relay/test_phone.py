"""The parts of a phone call that need no server: Twilio's signature, the session a call
opens (relay/phone.py), and the playout ledger that says what the caller heard."""

from __future__ import annotations

import pytest

from relay.phone import MAX_CHECKPOINTS, Playout, phone_session
from relay.twilio import twiml
from relay.twilio_signature import _url_forms, twilio_signature
from transceiver.protocol.contract import SessionSpec, Transport
from transceiver.protocol.errors import ClientError

PCMU = {"type": "audio/pcmu"}


def test_the_signature_matches_twilios_published_example() -> None:
    # The example of Twilio's security guide and its helper libraries' tests.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params.items()) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature("12346", url, params.items()) != "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_a_signed_url_may_carry_or_drop_its_default_port() -> None:
    assert _url_forms("wss://a.example/x") == ["wss://a.example/x", "wss://a.example:443/x"]
    assert _url_forms("https://a.example:443/x?q=1") == [
        "https://a.example:443/x?q=1",
        "https://a.example/x?q=1",
    ]
    assert _url_forms("http://127.0.0.1:8000/x") == ["http://127.0.0.1:8000/x"]
    # A Host header that is no HOST[:PORT] (the URL is built from it): only as it is.
    for bad in ("http://a.example:abc/x", "http://a.example:99999/x", "http://[::1/x"):
        assert _url_forms(bad) == [bad]


def test_twiml_escapes_what_it_carries() -> None:
    text = twiml("wss://h/v1/twilio/media", {"instructions": 'Say "hi" & <bye>'})
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>')
    assert 'value="Say &quot;hi&quot; &amp; &lt;bye&gt;"' in text


def test_a_phone_session_is_pcmu_both_ways_and_merges_in_order() -> None:
    default = {"instructions": "A", "audio": {"output": {"voice": "cedar"}}}
    session = phone_session(default, {"instructions": "B"}, voice="marin", model="gpt-realtime")
    assert session["instructions"] == "B"
    assert session["audio"]["input"]["format"] == PCMU
    assert session["audio"]["output"]["format"] == PCMU
    assert session["audio"]["output"]["voice"] == "marin"
    assert phone_session(None, None, instructions="C")["instructions"] == "C"


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"audio": {"output": {"format": {"type": "audio/pcma"}}}}, "audio.output.format.type"),
        ({"type": "transcription"}, "type"),
        ({"instructions": 3}, None),
    ],
)
def test_a_phone_session_refuses_what_a_phone_cannot_do(
    session: dict[str, object], param: str | None
) -> None:
    with pytest.raises(ClientError) as info:
        phone_session(None, session)
    if param is not None:
        assert info.value.param == param


def test_playout_counts_what_the_phone_confirmed() -> None:
    playout = Playout()
    assert not playout.unplayed and playout.checkpoint() is None
    playout.sent("resp_1", "item_1", 800)  # 100 ms of mu-law
    first = playout.checkpoint()
    playout.sent("resp_1", "item_1", 800)
    second = playout.checkpoint()
    assert first and second and first != second
    assert playout.checkpoint() is None  # nothing sent since the last one
    assert playout.played(first)
    assert playout.heard_ms("item_1") == 100 and playout.unplayed
    assert not playout.played("no-such-mark")
    # Barge-in: the item was heard for 100 ms; the rest of that response is not played.
    assert playout.cut() == [("item_1", 100)]
    assert not playout.accepts("resp_1") and playout.accepts("resp_2")
    assert not playout.played(second)  # dropped by the cut (Twilio echoes it on clear)
    assert not playout.unplayed


def test_playout_after_everything_played_cuts_nothing() -> None:
    playout = Playout()
    playout.sent("resp_1", "item_1", 160)
    mark = playout.checkpoint()
    assert mark is not None and playout.played(mark)
    playout.response_done("resp_1")
    assert not playout.unplayed
    # A response still making audio is cut even when all that came so far was played.
    playout.sent("resp_2", "item_2", 160)
    mark = playout.checkpoint()
    assert mark is not None and playout.played(mark)
    assert playout.unplayed
    assert playout.cut() == [("item_2", 20)]


def test_playout_sets_a_bounded_number_of_checkpoints() -> None:
    playout = Playout()
    for _ in range(MAX_CHECKPOINTS + 10):
        playout.sent("resp_1", "item_1", 8)
        playout.checkpoint()
    assert playout.dropped_checkpoints == 10
    assert playout.cut() == [("item_1", 0)]


def test_a_twilio_spec_travels_and_keeps_its_g711_format() -> None:
    # Not a media transport: the session's own pcmu events go to Twilio (no Opus track).
    spec = SessionSpec(transport=Transport.TWILIO, overrides=phone_session(None))
    decoded = SessionSpec.decode(spec.encode())
    assert decoded.transport is Transport.TWILIO and not decoded.media
    assert Transport.WEBRTC.media and not Transport.WEBSOCKET.media


def test_playout_forgets_items_heard_whole() -> None:
    playout = Playout()
    playout.sent("resp_1", "item_1", 80)
    mark = playout.checkpoint()
    assert mark is not None
    playout.sent("resp_2", "item_2", 80)
    assert playout.played(mark)
    assert playout.heard_ms("item_1") == 0  # heard whole and let go: never cut
    assert playout.cut() == [("item_2", 0)]
