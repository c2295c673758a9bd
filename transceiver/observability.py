"""Logs and metrics, shared by the relay and the transceiver (a leaf: imports no layer).

- :func:`configure_logging` sets text or JSON lines (``--log-format json``), with
  credentials redacted (:func:`redact`) from every line, uvicorn's access lines included.
- :func:`log_event` writes one structured line: ``session.start id=sess_... model=...`` in
  text, or an object with those fields in JSON.
- :class:`Metrics` holds one process's Prometheus metrics in its own registry.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RESERVED = set(vars(logging.makeLogRecord({})))


REDACTED = "[REDACTED]"
# Names whose value is a credential, in a query string (?api_key=...), a header line
# (authorization: ..., api-key: ...) or a key=value field.
_SECRET_NAMES = (
    r"api[-_]?keys?|keys?|token|access[-_]?token|id[-_]?token|refresh[-_]?token|"
    r"client[-_]?secret|secrets?|password|passwd|authorization|proxy-authorization|auth|"
    r"signature|sig|subscription[-_]?key|cookie|set-cookie"
)
# Any prefix ending in - or _ (x-goog-api-key, RELAY_LINK_SECRET, ocp-apim-subscription-key),
# but not a word that merely ends so (monkey=...).
_NAME = rf"(?:[\w-]*[-_])?(?:{_SECRET_NAMES})"
_VALUE = r"[^\s&;,#'\"\]]+"
_REDACTIONS = (
    # A URL's user:password@ part.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@'\"]+@"), rf"\1{REDACTED}@"),
    # An Authorization header's credentials, whatever the scheme (RFC 9110 section 11.6.2).
    # (Bearer always; other schemes after an authorization name, or before something that
    # looks like a credential, so that prose such as "a basic test" stays as it is.)
    (re.compile(rf"(?i)\b(bearer)(\s+|%20){_VALUE}"), rf"\1\2{REDACTED}"),
    (
        re.compile(
            rf"(?i)\b((?:proxy-)?authorization['\"]?\s*[=:,]\s*(?:\[\s*)?(?:b(?=['\"]))?['\"]?"
            rf"[a-z][\w-]*(?:\s+|%20))(?!\[REDACTED\]){_VALUE}"
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(rf"(?i)\b(basic|token|digest|apikey)(\s+|%20)(?=[\w.~+/=-]{{12,}}){_VALUE}"),
        rf"\1\2{REDACTED}",
    ),
    # The browser's WebSocket subprotocol carrying a key.
    (re.compile(r"(?i)(openai-insecure-api-key\.)[^\s,;'\"]+"), rf"\1{REDACTED}"),
    # name=value, name: value, "name": "value", name=['value'] (a scheme's credentials are
    # done above).
    (
        re.compile(
            rf"(?i)(?<![\w-])({_NAME}['\"]?\s*[=:,]\s*(?:\[\s*)?(?:b(?=['\"]))?['\"]?)"
            rf"(?![a-z][\w-]*(?:\s+|%20)\[REDACTED\]|\[REDACTED\]){_VALUE}"
        ),
        rf"\1{REDACTED}",
    ),
    # Keys by their look: OpenAI's sk-..., ephemeral ek_..., restricted rk-... keys.
    (re.compile(r"(?<![\w-])(?:sk|rk|ek)[-_][\w.=-]{3,}"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[REDACTED]``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, credentials redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The line itself (a traceback follows it), one line whatever a client's value in
        it holds: a newline in a model name must not forge a log line."""
        return one_line(super().formatMessage(record))


_CONTROL = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
    if code != 0x09
}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r"})


def one_line(text: str) -> str:
    """``text`` with its control characters (newlines included; not tabs) escaped."""
    return text.translate(_CONTROL) if not text.isprintable() else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in ("fields", "message") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: _redact_value(v) for k, v in line.items()}, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, event: str, **fields: Any) -> None:
    """One structured line, e.g. ``session.end id=sess_1 seconds=12.3``."""
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    logger.info("%s %s", event, text, extra={"fields": {"event": event, **fields}})


TURN_STAGES = ("stt", "llm_first_token", "tts_first_audio", "first_delta")
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Tally:
    """A counter on the frame path: a plain int, where a Prometheus ``Counter`` takes a lock
    for each increment. Incremented on the event loop's thread only; read at each scrape
    (:class:`TallyFamily`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyFamily(Collector):
    """A labelled counter family of :class:`Tally` s: ``NAME_total{LABEL="..."}``."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry):
        self.name, self.documentation, self.label = name, documentation, label
        self.tallies: dict[str, Tally] = {}
        self.created = time.time()  # as a Counter's ``_created`` series
        registry.register(self)

    def labels(self, value: str) -> Tally:
        return self.tallies.setdefault(value, Tally())

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, tally in self.tallies.items():
            family.add_metric([value], tally.value, created=self.created)
        yield family


class Metrics:
    """One process's Prometheus metrics; ``prefix``: realtime_relay or realtime_transceiver."""

    def __init__(self, prefix: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            f"{prefix}_active_sessions", "Sessions open now.", ["transport"], registry=r
        )
        self.sessions_total = Counter(
            f"{prefix}_sessions", "Sessions started.", ["transport"], registry=r
        )
        self.events = TallyFamily(
            f"{prefix}_events",
            "Realtime events passed (in: from clients, out: to clients).",
            "direction",
            registry=r,
        )
        self.errors = Counter(
            f"{prefix}_errors", "Error events sent to clients, by code.", ["code"], registry=r
        )
        self.placement_refusals = Counter(
            f"{prefix}_placement_refusals",
            "Sessions a transceiver refused (full, draining or unreachable), or that no "
            'transceiver took (transceiver="none").',
            ["transceiver"],
            registry=r,
        )
        self.turn_latency = Histogram(
            f"{prefix}_turn_stage_seconds",
            "Per-turn latency from the end of the user's speech (or response.create) to: "
            "stt (transcript ready), llm_first_token, tts_first_audio, first_delta.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.usage_tokens = Counter(
            f"{prefix}_usage_tokens",
            "Tokens the upstream reported in response.done usage (openai backend), by kind.",
            ["kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            f"{prefix}_fallbacks",
            "Sessions the openai backend moved to its fallback backend (--fallback), by "
            "reason: unreachable, capacity (429, 503, 1013) or dropped (mid-session).",
            ["reason"],
            registry=r,
        )
        self.upstream_audio = Counter(
            f"{prefix}_upstream_audio_seconds",
            "Input audio of proxied sessions (openai backend), in seconds: received from "
            "clients, and sent upstream (less with --local-turn-detection: speech only).",
            ["direction"],
            registry=r,
        )
        # Both exist from the start, as a labelled Counter's children would once used.
        self.events_in = self.events.labels("in")
        self.events_out = self.events.labels("out")

    def error(self, code: str | None) -> None:
        self.errors.labels(code or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
