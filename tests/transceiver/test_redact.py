"""Credentials in any shape a log line may carry them are redacted (more cases beside the
ones in tests/e2e/test_connection_bounds.py)."""

from __future__ import annotations

import logging
import sys

import pytest

from transceiver.observability import TextFormatter, redact

SECRET = "abc123secret0123"


@pytest.mark.parametrize(
    "line",
    [
        f"authorization: basic {SECRET}==",
        f"Authorization: Token {SECRET}",
        f"Authorization:Bearer {SECRET}",
        f"authorization=Bearer%20{SECRET}",
        f"{{'Authorization': ['Bearer {SECRET}']}}",
        f"(b'authorization', b'bearer {SECRET}')",
        f"api_keys=['{SECRET}']",
        f"RELAY_LINK_SECRET={SECRET}",
        f"x-goog-api-key: {SECRET}",
        f"ocp-apim-subscription-key: {SECRET}",
        f"Cookie: session={SECRET}",
    ],
)
def test_credentials_are_redacted(line: str) -> None:
    assert SECRET not in redact(line)
    assert "[REDACTED]" in redact(line)


@pytest.mark.parametrize(
    "line",
    [
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1 200",
        "turn session_id=sess_1 first_delta_ms=300 token_count=5",
        "the token expired; a basic test; monkey=banana",
    ],
)
def test_ordinary_lines_stay(line: str) -> None:
    assert redact(line) == line


def test_a_logged_value_cannot_forge_a_line() -> None:
    """A client's model name with a newline (``?model=`` on a call) stays on its line."""
    forged = "gpt-realtime\n2026-01-01 00:00:00,000 INFO relay: session.closed conn=FORGED"
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "session.start model=%s", (forged,), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\\n2026-01-01" in line
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "Traceback" in TextFormatter().format(record).splitlines()[1]  # still below it
