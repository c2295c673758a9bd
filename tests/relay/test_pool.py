"""Placement without network: names that resolve to many addresses, load-ordered candidates,
call ids that name their relay, and per-key limits."""

from __future__ import annotations

import httpx
import pytest

from relay.edge import KeyLimits
from relay.ephemeral import KeySigner, call_id_for, call_owner
from relay.pool import Member, TransceiverPool


class FakeDns:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.answers:
            raise OSError("no such host")
        return self.answers[host]


class FakeLoads:
    """The members' ``GET /load`` answers, in memory: no request leaves the process (the
    fake DNS names addresses that must never see traffic)."""

    def __init__(self) -> None:
        self.polled: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.polled.append(str(request.url))
        if request.url.host == "10.0.0.3":
            raise httpx.ConnectError("unreachable", request=request)
        return httpx.Response(200, json={"sessions": 1, "max_sessions": 4, "cpu": 0.5})


@pytest.mark.asyncio(loop_scope="session")
async def test_a_name_with_many_addresses_is_many_transceivers() -> None:
    dns = FakeDns({"transceiver": ["10.0.0.2", "10.0.0.3", "fd00::4"]})
    loads = FakeLoads()
    pool = TransceiverPool(
        ["ws://transceiver:8100", "ws://127.0.0.1:9"],
        1024,
        resolver=dns,
        transport=httpx.MockTransport(loads),
    )
    await pool.refresh()
    assert sorted(loads.polled) == [
        "http://10.0.0.2:8100/load",
        "http://10.0.0.3:8100/load",
        "http://127.0.0.1:9/load",
        "http://[fd00::4]:8100/load",
    ]
    health = {m.url: (m.healthy, m.reported, m.capacity) for m in pool.members}
    assert health["ws://10.0.0.2:8100"] == (True, 1, 4)
    assert health["ws://10.0.0.3:8100"][0] is False  # an unreachable member is marked down
    urls = sorted(m.url for m in pool.members)
    assert urls == [
        "ws://10.0.0.2:8100",
        "ws://10.0.0.3:8100",
        "ws://127.0.0.1:9",
        "ws://[fd00::4]:8100",
    ]
    assert dns.asked == [("transceiver", 8100)]  # literal addresses are not looked up
    # Scaled down: a member that left is dropped, unless it still holds sessions.
    busy = next(m for m in pool.members if m.url == "ws://10.0.0.3:8100")
    busy.sessions = 1
    dns.answers["transceiver"] = ["10.0.0.2"]
    await pool.refresh()
    assert sorted(m.url for m in pool.members) == [
        "ws://10.0.0.2:8100",
        "ws://10.0.0.3:8100",
        "ws://127.0.0.1:9",
    ]
    # A failed lookup keeps what the name had rather than emptying the pool.
    del dns.answers["transceiver"]
    await pool.refresh()
    assert "ws://10.0.0.2:8100" in [m.url for m in pool.members]


def test_candidates_least_loaded_with_room_first() -> None:
    pool = TransceiverPool([], 1024)
    members = {
        "full": Member("ws://a:1", reported=4, capacity=4),
        "busy": Member("ws://b:1", reported=3, capacity=4),
        "idle": Member("ws://c:1", reported=0, capacity=4),
        "draining": Member("ws://d:1", reported=0, capacity=4, draining=True),
        "down": Member("ws://e:1", healthy=False),
        "half": Member("ws://f:1", reported=1, sessions=5, capacity=10),
    }
    pool._members = {m.url: m for m in members.values()}
    order = [m.url for m in pool._candidates()]
    by_url = {m.url: name for name, m in members.items()}
    names = [by_url[url] for url in order]
    assert names[:3] == ["idle", "half", "busy"]  # own count wins over a stale report
    assert set(names[3:]) == {"full", "draining", "down"}  # tried last, in case it is stale


def test_call_ids_name_their_relay_and_cannot_be_forged() -> None:
    signer = KeySigner("secret")
    call_id = call_id_for(signer, "http://relay-2:8000")
    assert call_id.startswith("rtc_")
    assert call_owner(signer, call_id) == "http://relay-2:8000"
    assert call_owner(KeySigner("other"), call_id) is None
    assert call_owner(signer, call_id.replace("rtc_", "rtc_0")) is None
    assert call_owner(signer, "rtc_abc") is None
    assert call_owner(signer, "rtc_a.%%%.b") is None


def test_key_limits() -> None:
    limits = KeyLimits(2)
    a, b = KeyLimits.holder_of("sk-a", None), KeyLimits.holder_of("sk-b", None)
    assert "sk-a" not in a  # an identity, not the key
    first, second = limits.acquire(a), limits.acquire(a)
    assert first is not None and second is not None
    assert limits.acquire(a) is None
    assert limits.acquire(b) is not None
    limits.release(first)
    assert limits.acquire(a) is not None
    assert KeyLimits(None).acquire(a) is not None


def test_ephemeral_keys_count_against_the_key_that_minted_them() -> None:
    signer = KeySigner("s")
    owner = KeyLimits.identity("sk-a")
    minted = signer.verify(signer.mint({"type": "realtime"}, 60, owner=owner))
    assert minted.owner == owner
    assert KeyLimits.holder_of("ek_whatever", minted) == KeyLimits.holder_of("sk-a", None)
    unowned = signer.verify(signer.mint({"type": "realtime"}, 60))
    assert unowned.owner is None
    assert KeyLimits.holder_of("ek_x", unowned) == KeyLimits.identity("ek_x")


def test_empty_environment_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.settings import RelaySettings
    from transceiver.settings import TransceiverSettings, local_max_sessions

    for name in ("RELAY_MAX_SESSIONS_PER_KEY", "RELAY_KEY_SECRET", "RELAY_MAX_SESSIONS"):
        monkeypatch.setenv(name, "")
    relay = RelaySettings()
    assert relay.max_sessions_per_key is None and relay.key_secret is None
    assert TransceiverSettings(backend="mock").max_sessions == 1000
    assert TransceiverSettings(backend="local").max_sessions == local_max_sessions()


def test_tls_members_are_verified_by_their_configured_name() -> None:
    assert Member("wss://10.0.0.7:8100", "wss://transceiver:8100").tls_name == "transceiver"
    assert Member("ws://10.0.0.7:8100", "ws://transceiver:8100").tls_name is None
    assert Member("wss://10.0.0.7:8100", "wss://10.0.0.7:8100").tls_name is None
