"""Signing requests the way each sender does, for real, so the doors verify real signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import stripe

from webhooks.verify import sign_standard


def body_of(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def stripe_headers(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def partner_headers(
    body: bytes, secret: str, message_id: str, *, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(secret, message_id, ts, body),
        "Content-Type": "application/json",
    }


def meta_headers(body: bytes, app_secret: str) -> dict[str, str]:
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def stripe_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    api_version: str | None = None,
) -> dict[str, Any]:
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": api_version or stripe.api_version,
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
