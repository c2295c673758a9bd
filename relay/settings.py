"""Relay configuration: CLI flags and ``RELAY_*`` environment variables."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# The settings that are lists: comma-separated, or a flag given again.
LIST_FIELDS = ("transceiver", "api_keys", "cors_origins", "ice_servers", "webrtc_host_addresses")


class RelaySettings(BaseSettings):
    # An empty variable (`RELAY_X=` in a .env file or compose) means unset, not "".
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address the relay listens on.")
    port: int = Field(8000, description="Port the relay listens on.")
    transceiver: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Transceiver URL(s), ws://HOST:PORT (comma-separated in the env var).",
    )
    link_secret: str | None = Field(
        None,
        description="Secret sent to the transceivers on every request (Authorization: Bearer); "
        "theirs must be the same. Give it as the environment variable, not an option. serve "
        "uses RELAY_LINK_SECRET if set, else a random one per run.",
    )
    transceiver_link: Literal["mux", "websocket"] = Field(
        "mux",
        description="How sessions reach the transceivers: mux (one multiplexed connection "
        "per transceiver that offers it, else one WebSocket per session) or websocket (one "
        "WebSocket per session for all).",
    )
    transceiver_socket: bool = Field(
        True,
        description="Link to a transceiver on this machine (a loopback ws:// URL) over the "
        "Unix socket it offers (its --link-socket; serve gives each one) instead of TCP.",
    )
    link_coalesce_ms: float = Field(
        2.0,
        ge=0,
        le=20,
        description="On a busy link, audio appends wait up to this long (twice it at most) "
        "to leave in one write with the others: one write and one wake-up of the "
        "transceiver a period instead of one per frame read. Other events, and appends on "
        "a quiet link, leave at once. 0: every frame at once.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (comma-separated). Empty: no auth required.",
    )
    key_secret: str | None = Field(
        None,
        description="Secret that signs ephemeral keys; relays sharing it accept each "
        "other's keys (default: random per process).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the REST endpoints from a browser (comma-separated).",
    )
    ice_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="STUN/TURN URLs for WebRTC calls, e.g. stun:stun.example.org:3478 "
        "(comma-separated). Empty: host candidates only.",
    )
    webrtc_public_ip: str | None = Field(
        None,
        description="Address to advertise in WebRTC answers when the relay is behind a "
        "1:1 NAT (its host candidates carry this IP instead of the local one).",
    )
    webrtc_host_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Local IP addresses WebRTC calls gather host candidates on "
        "(comma-separated), e.g. one network of several. Empty: every interface's but "
        "loopback. Only loopback addresses (127.0.0.1): calls from this machine only.",
    )
    webrtc_idle_timeout_s: float = Field(
        20.0,
        gt=0,
        description="End a WebRTC call when no caller audio arrives for this long (from the "
        "call's start: a caller that never connects or never sends audio is ended too).",
    )
    webrtc_max_offer_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest WebRTC offer request body (raw SDP, or the whole multipart form "
        "with its sdp and session parts); a longer one gets 413.",
    )
    webrtc_max_media_sections: int = Field(
        8,
        gt=0,
        description="Most media sections (m= lines) a WebRTC offer may have; a call needs "
        "one audio section (and a data channel for events).",
    )
    webrtc_max_pending_audio_s: float = Field(
        60.0,
        gt=0,
        description="Most reply audio a WebRTC call holds ahead of its playback; a response "
        "whose audio arrives further ahead (an upstream faster than real time) is cut there: "
        "its item is truncated to what the caller hears and the caller gets an error.",
    )
    # Phone calls from Twilio Media Streams (relay/twilio.py).
    twilio_auth_token: str | None = Field(
        None,
        description="The Twilio account's auth token: requests to /v1/twilio/* must carry a "
        "valid X-Twilio-Signature. Give it as the environment variable, not an option.",
    )
    twilio_allow_unsigned: bool = Field(
        False,
        description="Without --twilio-auth-token, accept unsigned requests to /v1/twilio/*: "
        "anyone who can reach them may start calls. Off: they are refused (403).",
    )
    twilio_public_url: str | None = Field(
        None,
        description="https://HOST[:PORT] Twilio reaches the relay at (a proxy or tunnel "
        "in front of it), for the stream URL in the TwiML and for checking signatures; "
        "default the request's Host, with https/wss only when the relay serves TLS.",
    )
    twilio_session: dict[str, Any] | None = Field(
        None,
        description="The session (JSON) of Twilio calls, before the stream's parameters; "
        "its audio is always audio/pcmu.",
    )
    twilio_idle_timeout_s: float = Field(
        20.0, gt=0, description="End a Twilio stream when it sends nothing for this long."
    )
    # Phone calls over SIP (relay/sip/).
    sip_listen: str | None = Field(
        None,
        description="HOST:PORT of the SIP endpoint (UDP and TCP), e.g. 0.0.0.0:5060; "
        "unset: no SIP.",
    )
    sip_allow: str | None = Field(
        None,
        description="Comma-separated addresses or networks (CIDR) allowed to send INVITEs "
        "(your trunk's); others get 403. Unset: any source.",
    )
    sip_webhook_url: str | None = Field(
        None,
        description="POST a realtime.call.incoming webhook here for each INVITE; the app "
        "then accepts or rejects the call. Unset: calls are accepted with --sip-session.",
    )
    sip_webhook_secret: str | None = Field(
        None,
        description="The webhooks' signing secret (whsec_<base64>, as OpenAI's); give it as "
        "the environment variable, not an option.",
    )
    sip_session: dict[str, Any] | None = Field(
        None,
        description="The session (JSON) of SIP calls, before what /accept sends; its audio "
        "is the call's G.711.",
    )
    sip_accept_timeout_s: float = Field(
        30.0, gt=0, description="A call neither accepted nor rejected this long gets 480."
    )
    sip_rtp_timeout_s: float = Field(
        20.0, gt=0, description="End a SIP call when no RTP arrives for this long (BYE)."
    )
    sip_rtp_ports: str | None = Field(
        None,
        description="LOW-HIGH: the UDP ports calls' RTP uses (open them in the firewall); "
        "default any free port.",
    )
    sip_public_address: str | None = Field(
        None,
        description="The address callers reach this host at (behind a 1:1 NAT), for the "
        "SDP answer and Contact; default the local address towards the caller.",
    )
    max_frame_bytes: int = Field(32 * 1024 * 1024, description="Largest WebSocket frame.")
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        gt=0,
        description="Largest request body of the REST endpoints (client_secrets, beta "
        "sessions); a larger one gets 413.",
    )
    # Client connections (relay/server.py): nothing a client opens is held forever.
    client_ping_interval_s: float = Field(
        20.0,
        ge=0,
        description="Ping each WebSocket client this often (0: no pings); one that does not "
        "answer within --client-ping-timeout-s is closed (1011).",
    )
    client_ping_timeout_s: float = Field(
        20.0, gt=0, description="How long a WebSocket client has to answer a ping."
    )
    client_stall_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Drop a connection whose client reads nothing of what is waiting for it "
        "for this long (a WebSocket session then ends as if the client had left).",
    )
    client_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send its request line and headers within this long "
        "(of connecting, or of a keep-alive request's first byte), else 408 and closed.",
    )
    client_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive whole within this long of its headers, "
        "else 408 and closed.",
    )
    client_max_header_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="Largest request line and headers of a request (and of a WebSocket "
        "handshake); past it 431 and closed.",
    )
    max_client_connections: int = Field(
        1000,
        gt=0,
        description="Most open client connections (HTTP and WebSocket); past it a request "
        "or WebSocket handshake gets 503 (too_many_connections) and is closed.",
    )
    ssl_certfile: str | None = Field(
        None, description="TLS certificate (PEM); with --ssl-keyfile the relay serves https/wss."
    )
    ssl_keyfile: str | None = Field(None, description="TLS private key (PEM).")
    resolve_interval_s: float = Field(
        5.0,
        description="How often transceiver host names are re-resolved; a name with many "
        "addresses (compose --scale, a Kubernetes headless service) gives many transceivers.",
    )
    drain_timeout_s: float = Field(
        30.0,
        description="On SIGTERM: stop accepting, let sessions run this long, then close them "
        "with an error (1012, service restart).",
    )
    max_sessions_per_key: int | None = Field(
        None, description="Most concurrent sessions one API key may hold on this relay."
    )
    rate_limit_requests_per_min: int | None = Field(
        None,
        gt=0,
        description="Most responses one API key may start per minute, across all its "
        "sessions on this relay (ephemeral keys count against the key that minted them); "
        "past it response.create gets a rate_limit_exceeded error. Unset: no limit, and "
        "rate_limits.updated reports 2147483647.",
    )
    rate_limit_tokens_per_min: int | None = Field(
        None,
        gt=0,
        description="Most tokens (response.done usage.total_tokens) one API key may use per "
        "minute, across all its sessions on this relay; once used up, response.create gets "
        "a rate_limit_exceeded error until it refills. Unset: no limit, and "
        "rate_limits.updated reports 2147483647.",
    )
    peer_url: str | None = Field(
        None,
        description="URL other relays reach this one at (default http://HOST:PORT); it is "
        "signed into call ids so a sideband ?call_id= reaching another relay is forwarded.",
    )
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log format: text or json.")

    @field_validator("twilio_session", "sip_session", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("sip_listen")
    @classmethod
    def _sip_listen(cls, value: str | None) -> str | None:
        from relay.sip.endpoint import parse_listen  # the one parser; imported late (cycle)

        if value is not None:
            parse_listen(value)
        return value

    @field_validator("sip_rtp_ports")
    @classmethod
    def _sip_rtp_ports(cls, value: str | None) -> str | None:
        from relay.sip.media import parse_ports

        if value is not None:
            try:
                parse_ports(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a port range LOW-HIGH: {exc}") from None
        return value

    @field_validator(*LIST_FIELDS, mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("webrtc_host_addresses")
    @classmethod
    def _host_addresses(cls, value: list[str]) -> list[str]:
        from relay.ice import host_address  # the one check (loadgen's flag uses it too)

        for address in value:
            host_address(address)
        return value
