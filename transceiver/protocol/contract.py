"""The relay <-> transceiver session contract: what a session is opened with.

The relay places a client session on a transceiver by opening ``/v1/sessions`` there and
sending one ``session.open`` frame (:meth:`SessionSpec.encode`) before any client frame.
The transceiver reads it with :meth:`SessionSpec.decode`, which validates every field, and
runs the session it describes. Both sides use this one type; a new session parameter is a
new field here, nowhere else.

The spec travels as a frame rather than in the URL: a session configuration from an
ephemeral key (instructions, tools) can be far larger than a request line may be.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, TypeVar

OPEN_TYPE = "session.open"
# The contract's version: a relay and a transceiver of different versions refuse each
# other plainly (1008 naming both) instead of misreading each other's sessions.
VERSION = 1
_E = TypeVar("_E", bound=enum.Enum)


class SessionKind(enum.Enum):
    REALTIME = "realtime"
    TRANSCRIPTION = "transcription"


class Dialect(enum.Enum):
    """The client's event names and shapes: GA, or the beta API (``OpenAI-Beta:
    realtime=v1``), which the core translates at its edge."""

    GA = "ga"
    BETA = "beta"


class Transport(enum.Enum):
    """How the client reaches the relay. Media transports carry output audio on a media
    track that the relay paces, not as events."""

    WEBSOCKET = "ws"
    WEBRTC = "webrtc"
    # A Twilio Media Streams call (relay/twilio.py): the session's own G.711 audio events
    # travel over Twilio's WebSocket, so it is not a media transport (its format is free).
    TWILIO = "twilio"
    # A SIP call (relay/sip/): G.711 over RTP, paced by the relay as a WebRTC call's audio.
    SIP = "sip"

    @property
    def media(self) -> bool:
        return self not in (Transport.WEBSOCKET, Transport.TWILIO)


class SpecError(ValueError):
    """A ``session.open`` frame that is not a valid session spec."""


@dataclass(frozen=True)
class SessionSpec:
    kind: SessionKind = SessionKind.REALTIME
    model: str | None = None
    dialect: Dialect = Dialect.GA
    transport: Transport = Transport.WEBSOCKET
    # A GA session configuration applied at start (an ephemeral key's or a call's
    # ``session``), validated by the core like a ``session.update``.
    overrides: dict[str, Any] | None = None
    conn: str | None = None  # the relay's name for the client connection, for the logs

    @property
    def beta(self) -> bool:
        return self.dialect is Dialect.BETA

    @property
    def media(self) -> bool:
        return self.transport.media

    def encode(self) -> str:
        body: dict[str, Any] = {
            "type": OPEN_TYPE,
            "v": VERSION,
            "kind": self.kind.value,
            "dialect": self.dialect.value,
            "transport": self.transport.value,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.overrides is not None:
            body["session"] = self.overrides
        if self.conn is not None:
            body["conn"] = self.conn
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, frame: str | bytes) -> SessionSpec:
        """The spec in a ``session.open`` frame; :class:`SpecError` for anything else."""
        try:
            body = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            raise SpecError("the session.open frame is not JSON") from exc
        if not isinstance(body, dict) or body.get("type") != OPEN_TYPE:
            raise SpecError("the first frame must be a session.open object")
        if body.get("v") != VERSION:
            raise SpecError(f"session.open version {body.get('v')!r}; this side speaks {VERSION}")
        fields = {"type", "v", "kind", "model", "dialect", "transport", "session", "conn"}
        unknown = set(body) - fields
        if unknown:
            raise SpecError(f"unknown session.open fields: {sorted(unknown)}")
        model, overrides, conn = body.get("model"), body.get("session"), body.get("conn")
        if model is not None and not isinstance(model, str):
            raise SpecError("'model' must be a string")
        if overrides is not None and not isinstance(overrides, dict):
            raise SpecError("'session' must be an object")
        if conn is not None and not isinstance(conn, str):
            raise SpecError("'conn' must be a string")
        return cls(
            kind=_member(SessionKind, body.get("kind", "realtime"), "kind"),
            model=model,
            dialect=_member(Dialect, body.get("dialect", "ga"), "dialect"),
            transport=_member(Transport, body.get("transport", "ws"), "transport"),
            overrides=overrides,
            conn=conn,
        )


def _member(enum_type: type[_E], value: Any, name: str) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise SpecError(f"'{name}' must be one of {allowed}, not {value!r}") from None
