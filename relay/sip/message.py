"""SIP messages (RFC 3261 section 7): parse and serialize requests and responses.

Only what a user agent server needs: the start line, headers (compact forms expanded,
repeated headers kept in order), and a body sized by ``Content-Length``. Anything that is
not a SIP message raises :class:`SipParseError`; the transport drops it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 64 * 1024  # larger than any INVITE with SDP; more is refused
# RFC 3261 section 7.3.3: compact header forms.
_COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "r": "Refer-To",
    "o": "Event",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
        "Refer-To",
        "Referred-By",
        "Event",
        "Allow",
        "Supported",
        "User-Agent",
        "Server",
        "Subject",
        "Subscription-State",
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authorization",
        "Record-Route",
    )
}
_TAG = re.compile(r";\s*tag=([^;>\s]+)", re.IGNORECASE)
_URI = re.compile(r"<([^>]*)>")


class SipParseError(ValueError):
    """Bytes that are not one well-formed SIP message."""


class SipTruncated(SipParseError):
    """A datagram that ends before the body its Content-Length announces (RFC 3261 section
    18.3: a request is answered 400, a response dropped); ``message`` as far as it came."""

    def __init__(self, message: SipMessage) -> None:
        super().__init__("the body is shorter than its Content-Length")
        self.message = message


def header_name(name: str) -> str:
    name = name.strip()
    lower = name.lower()
    if lower in _COMPACT:
        return _COMPACT[lower]
    return _CANONICAL.get(lower, name)


@dataclass
class SipMessage:
    """A request (``method`` and ``uri`` set) or a response (``status`` set)."""

    method: str = ""
    uri: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        wanted = header_name(name).lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        wanted = header_name(name).lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def set(self, name: str, value: str) -> None:
        name = header_name(name)
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = self.get("CSeq").strip().partition(" ")
        return int(number) if is_number(number) else 0, method.strip().upper()

    @property
    def call_id(self) -> str:
        return self.get("Call-ID").strip()

    def to_bytes(self) -> bytes:
        if self.is_request:
            lines = [f"{self.method} {self.uri} SIP/2.0"]
        else:
            lines = [f"SIP/2.0 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes digits such as "²" or "٤", which
    ``int`` refuses or reads as numbers, and SIP and SDP numbers are ASCII (RFC 3261
    section 25.1, RFC 4566 section 9)."""
    return text.isascii() and text.isdigit()


def tag_of(value: str) -> str:
    """The ``tag`` parameter of a From or To header, ``""`` if none."""
    found = _TAG.search(value)
    return found.group(1) if found else ""


def uri_of(value: str) -> str:
    """The URI of a name-addr (``"Bob" <sip:bob@host>;tag=x``) or of a bare addr-spec."""
    found = _URI.search(value)
    if found:
        return found.group(1).strip()
    return value.split(";", 1)[0].strip()


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """The head (start line and headers) and what follows it, ``None`` if incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    return data[:end], data[end + 4 :]


def parse(data: bytes, datagram: bool = False) -> SipMessage:
    """One message: a ``datagram`` (:class:`SipTruncated` when it ends before its body
    does), or a stream's head, whose body the stream reader then takes by
    :func:`content_length`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    parts = split_head(data)
    if parts is None:
        raise SipParseError("no end of headers")
    head, body = parts
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = text.split("\r\n")
    message = _start_line(lines[0])
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and message.headers:  # folded continuation
            name, value = message.headers[-1]
            message.headers[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise SipParseError("bad header line")
        message.headers.append((header_name(name), value.strip()))
    length = content_length(message)
    message.body = body[:length] if length is not None else body
    if datagram and length is not None and len(body) < length:
        raise SipTruncated(message)
    return message


def content_length(message: SipMessage) -> int | None:
    value = message.get("Content-Length").strip()
    if not value:
        return None
    if not is_number(value) or int(value) > MAX_MESSAGE_BYTES:
        raise SipParseError("bad Content-Length")
    return int(value)


def _start_line(line: str) -> SipMessage:
    if line.startswith("SIP/2.0 "):
        _, status, reason = (line.split(" ", 2) + [""])[:3]
        if not is_number(status) or len(status) != 3:
            raise SipParseError("bad status line")
        return SipMessage(status=int(status), reason=reason)
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
        raise SipParseError("bad request line")
    return SipMessage(method=parts[0].upper(), uri=parts[1])


def response_to(request: SipMessage, status: int, reason: str, to_tag: str = "") -> SipMessage:
    """A response copying Via, From, To (adding ``to_tag`` if it has none), Call-ID, CSeq
    (RFC 3261 section 8.2.6.2)."""
    response = SipMessage(status=status, reason=reason)
    for name in ("Via", "Record-Route"):
        for value in request.get_all(name):
            response.headers.append((name, value))
    response.headers.append(("From", request.get("From")))
    to = request.get("To")
    if to_tag and not tag_of(to) and status > 100:
        to = f"{to};tag={to_tag}"
    response.headers.append(("To", to))
    response.headers.append(("Call-ID", request.call_id))
    response.headers.append(("CSeq", request.get("CSeq")))
    return response
