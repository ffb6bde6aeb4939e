"""Signature checks for the three doors, always on the raw request bytes.

Nothing here can be switched off: there is no setting, test mode or empty secret
that makes a check pass. A door with no secret configured refuses everything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import stripe
from standardwebhooks import Webhook, WebhookVerificationError

log = logging.getLogger(__name__)

#: How far a signature's timestamp may be from our clock, in either direction.
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The request is not from who it claims to be, or not from now. Never says which
    secret came close, and never echoes the signature."""


def verify_stripe(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> int:
    """Check `Stripe-Signature` with the SDK against each active secret; returns its timestamp.

    The SDK refuses timestamps that are too old; one too far in the future is refused
    here, so a captured request cannot be replayed later by pre-dating it.
    """
    if not secrets:
        raise SignatureError("no Stripe webhook secret is configured")
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp = _stripe_timestamp(header)
    current = time.time() if now is None else now
    if timestamp > current + tolerance:
        raise SignatureError("signature timestamp is in the future")
    if timestamp < current - tolerance:
        raise SignatureError("signature timestamp is too old")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("body is not UTF-8") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        return timestamp
    raise SignatureError("no valid signature for this body")


def _stripe_timestamp(header: str) -> int:
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            return int(value)
    raise SignatureError("Stripe-Signature has no timestamp")


def verify_standard(
    payload: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> tuple[str, int]:
    """Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature) against each
    secret, with the `standardwebhooks` library; returns (webhook id, timestamp)."""
    if not secrets:
        raise SignatureError("no signing secret is configured for this sender")
    message_id = headers.get("webhook-id")
    raw_timestamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not (message_id and raw_timestamp and signature):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise SignatureError("webhook-timestamp is not a number of seconds")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(timestamp - current) > tolerance:
        raise SignatureError("webhook-timestamp is outside the tolerance")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("body is not UTF-8") from None
    for secret in secrets:
        try:
            expected = Webhook(secret).sign(
                message_id, datetime.fromtimestamp(timestamp, UTC), text
            )
        except Exception:  # a malformed stored secret must not let anything through
            log.warning("a signing secret could not be used; it was skipped")
            continue
        if _standard_signature_matches(signature, expected):
            return message_id, timestamp
    raise SignatureError("no valid signature for this body")


def _standard_signature_matches(header: str, expected: str) -> bool:
    """`expected` is `v1,<base64>`; the header holds space-separated `v1,<base64>` entries."""
    want = expected.encode()
    return any(
        hmac.compare_digest(entry.encode(), want)
        for entry in header.split(" ")
        if entry.startswith("v1,")
    )


def sign_standard(secret: str, message_id: str, timestamp: int, payload: bytes) -> str:
    """The `webhook-signature` value for a message: for outbound deliveries and tests."""
    return Webhook(secret).sign(
        message_id, datetime.fromtimestamp(timestamp, UTC), payload.decode("utf-8")
    )


def verify_meta(payload: bytes, header: str | None, app_secret: str | None) -> None:
    """Meta's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body with the app secret>`."""
    if not app_secret:
        raise SignatureError("no chat app secret is configured")
    if not header or not header.startswith("sha256="):
        raise SignatureError("missing X-Hub-Signature-256 header")
    expected = hmac.new(app_secret.encode(), payload, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(header[len("sha256=") :].lower().encode(), expected.encode()):
        raise SignatureError("no valid signature for this body")


__all__ = [
    "TOLERANCE_SECONDS",
    "SignatureError",
    "WebhookVerificationError",
    "sign_standard",
    "verify_meta",
    "verify_standard",
    "verify_stripe",
]
