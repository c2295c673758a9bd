"""The ``realtime.call.incoming`` webhook, signed the Standard Webhooks way.

OpenAI's SIP interface POSTs this event to the project's webhook URL when a call arrives
(https://platform.openai.com/docs/guides/realtime-sip); the app then accepts, rejects or
refers the call by its ``call_id``. The signature is what the official SDK's
``client.webhooks.unwrap(body, headers, secret=...)`` verifies: ``webhook-signature`` is
``v1,`` + base64 HMAC-SHA256, keyed with the base64 part of the ``whsec_`` secret, over
``{webhook-id}.{webhook-timestamp}.{body}`` (https://www.standardwebhooks.com/).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx

WEBHOOK_TIMEOUT_S = 10.0
# RFC 3261 headers a webhook never carries: OpenAI's webhook excludes "SIP authorization
# headers" (openai-python, types/webhooks/realtime_call_incoming_webhook_event.py).
_PRIVATE = {"authorization", "proxy-authorization"}


class WebhookError(Exception):
    """The webhook could not be delivered, or its endpoint did not answer 2xx."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (a plain string is used as it is, as
    the SDK does); ``ValueError`` for an empty or malformed one."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the webhook secret's whsec_ part is not base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    signed = f"{webhook_id}.{timestamp}.{body}".encode()
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{digest}",
    }


def incoming_event(call_id: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """The ``realtime.call.incoming`` event (the SDK's ``RealtimeCallIncomingWebhookEvent``)."""
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "created_at": int(time.time()),
        "type": "realtime.call.incoming",
        "data": {
            "call_id": call_id,
            "sip_headers": [
                {"name": name, "value": value}
                for name, value in headers
                if name.lower() not in _PRIVATE
            ],
            "sip_media_security": "rtp",
        },
    }


async def post_event(url: str, secret: str | None, event: dict[str, Any]) -> None:
    """POST ``event`` to ``url``, signed when a secret is configured; ``WebhookError``."""
    body = json.dumps(event, separators=(",", ":"))
    headers = {"content-type": "application/json", "user-agent": "realtime-relay"}
    if secret:
        headers |= sign(secret_key(secret), str(event["id"]), int(time.time()), body)
    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            reply = await client.post(url, content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        raise WebhookError(f"the webhook could not be delivered: {exc!r}") from None
    if not 200 <= reply.status_code < 300:
        raise WebhookError(f"the webhook endpoint answered {reply.status_code}")
