"""Relay configuration: CLI flags and ``RELAY_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RelaySettings(BaseSettings):
    # An empty variable (`RELAY_X=` in a .env file or compose) means unset, not "".
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="Address the relay listens on.")
    port: int = Field(8000, description="Port the relay listens on.")
    transceiver: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Transceiver URL(s), ws://HOST:PORT (comma-separated in the env var).",
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
    webrtc_idle_timeout_s: float = Field(
        20.0, description="End a WebRTC call when no caller audio arrives for this long."
    )
    max_frame_bytes: int = Field(32 * 1024 * 1024, description="Largest WebSocket frame.")
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
    peer_url: str | None = Field(
        None,
        description="URL other relays reach this one at (default http://HOST:PORT); it is "
        "signed into call ids so a sideband ?call_id= reaching another relay is forwarded.",
    )
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log format: text or json.")

    @field_validator("transceiver", "api_keys", "cors_origins", "ice_servers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)
