"""Transceiver configuration: CLI flags and ``RELAY_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TransceiverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the transceiver listens on.")
    port: int = Field(8100, description="Port the transceiver listens on.")
    backend: Literal["mock", "local", "openai"] = Field("local", description="Backend to run.")
    max_sessions: int = Field(1000, description="Sessions this transceiver accepts at once.")
    max_frame_bytes: int = Field(32 * 1024 * 1024, description="Largest WebSocket frame.")
    log_level: str = Field("info", description="Log level.")

    # Mock backend
    mock_script: str | None = Field(None, description="Mock reply script (YAML or JSON).")
    mock_first_delta_ms: int = Field(150, description="Mock: delay before the first output.")
    mock_words_per_minute: int = Field(170, description="Mock: speaking rate of output audio.")
    mock_realtime: bool = Field(True, description="Mock: pace output audio in real time.")
    mock_fault_error_after: int | None = Field(
        None, description="Mock fault: send a server_error event after N events."
    )
    mock_fault_close_after: int | None = Field(
        None, description="Mock fault: close the connection (1011) after N events."
    )
    mock_fault_stall_after: int | None = Field(
        None, description="Mock fault: stop sending (stall) after N events."
    )
