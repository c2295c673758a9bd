"""Twilio's request signatures, and the URL Twilio requested (which it signs).

Twilio signs each request with ``X-Twilio-Signature``: HMAC-SHA1, keyed with the account's
auth token, of the full URL it requested followed by each POST parameter's name and value
in order of name, in base64 (https://www.twilio.com/docs/usage/security#validating-requests).
A media stream's WebSocket handshake is signed the same way over its ``wss://`` URL, with no
parameters. Used by :mod:`relay.twilio`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import HTTPConnection

from relay.errors import ApiError
from relay.settings import RelaySettings

SIGNATURE_HEADER = "x-twilio-signature"
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def twilio_signature(token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """Twilio's ``X-Twilio-Signature`` for a request to ``url`` with POST ``params``: the
    URL, then each parameter's name and value in order of name, HMAC-SHA1 with ``token``,
    in base64."""
    pairs = sorted(set(params))
    data = url + "".join(name + value for name, value in pairs)
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_forms(url: str) -> list[str]:
    """``url`` as given, without its scheme's default port, and with it: Twilio signs the
    URL as it requested it, and a proxy in between may add or drop the port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a Host header that is no HOST[:PORT]: the URL as it is
        return [url]
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    forms = [url]
    if port is None and default is not None:
        forms.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    elif port == default:
        forms.append(urlunsplit(parts._replace(netloc=host)))
    return forms


def check_signature(
    settings: RelaySettings, url: str, params: list[tuple[str, str]], given: str | None
) -> None:
    """Raise a 403 :class:`ApiError` unless the request may start a call: a valid
    signature when an auth token is set, else ``--twilio-allow-unsigned``."""
    token = settings.twilio_auth_token
    if not token:
        if settings.twilio_allow_unsigned:
            return
        raise ApiError(
            403,
            "Twilio requests are refused: this server has no Twilio auth token "
            "(--twilio-auth-token), and unsigned requests are not allowed "
            "(--twilio-allow-unsigned).",
            "twilio_not_configured",
        )
    if given:
        expected = [twilio_signature(token, form, params) for form in _url_forms(url)]
        matched = False
        for signature in expected:  # every form compared: the time says nothing
            matched |= hmac.compare_digest(signature.encode(), given.encode())
        if matched:
            return
    what = "invalid" if given else "missing"
    raise ApiError(403, f"The X-Twilio-Signature header is {what}.", "invalid_twilio_signature")


def public_base(settings: RelaySettings, connection: HTTPConnection, websocket: bool) -> str:
    """``scheme://host[:port]`` of the relay as Twilio reaches it: ``--twilio-public-url``
    (a proxy or tunnel in front of the relay), else the request's Host with ``https``/``wss``
    when the relay serves TLS and ``http``/``ws`` when it does not."""
    base = (settings.twilio_public_url or "").rstrip("/")
    if base:
        if websocket:
            return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return base
    tls = bool(settings.ssl_certfile)
    scheme = ("wss" if tls else "ws") if websocket else ("https" if tls else "http")
    host = connection.headers.get("host") or f"{settings.host}:{settings.port}"
    return f"{scheme}://{host}"


def public_url(settings: RelaySettings, connection: HTTPConnection, websocket: bool) -> str:
    """The URL Twilio requested, as it signed it: :func:`public_base`, path and query."""
    query = connection.url.query
    base = public_base(settings, connection, websocket)
    return base + connection.url.path + (f"?{query}" if query else "")
