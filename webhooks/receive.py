"""The three doors: raw body -> verify -> parse -> scrub -> store in the inbox -> 2xx.

Order matters and is the same at every door:
1. the signature is checked on the raw bytes, before anything is parsed;
2. the body is parsed strictly and checked for the fields the door needs;
3. card numbers are hashed (a partner's card field) or masked (anywhere else), and
   card secrets are dropped, before anything is stored, logged or queued;
4. the event is stored once per (source, event id) and committed before the 2xx. No task
   is sent from the request: the relays (webhooks/relay.py) find the committed row and
   send its processing task.

A refusal stores nothing (an unverified request is never trusted with a row), except
where the rules ask for a refusal to be on record: a Stripe event of another API
version, and a partner event outside its agreement (kept without its payload).
If PostgreSQL is unreachable the door answers 503 and the sender retries.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from typing import Any

import stripe
from flask import Blueprint, Response, current_app, json, request
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from commerce import runtime
from commerce.cards.scrub import CardHasher, paths, scrub
from commerce.chat.models import CHANNELS
from commerce.consent.services import consent_in_force
from commerce.db import transaction
from commerce.partners.services import active_secrets, agreement_in_force, flag_pan
from commerce.strictjson import BodyError, loads_strict
from webhooks import inbox
from webhooks.handlers.partners import SCOPE_OF
from webhooks.verify import SignatureError, verify_meta, verify_standard, verify_stripe

log = logging.getLogger(__name__)

blp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

#: The Stripe API version chatledger reads events in: the one the SDK is generated for.
STRIPE_API_VERSION = stripe.api_version
PROBLEM_JSON = "application/problem+json"


class Refused(Exception):
    """A verified request the door will not accept; answered as a problem document."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail


def _problem(status: int, slug: str, detail: str) -> Response:
    body = {
        "type": f"/problems/{slug}",
        "title": slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _accepted(stored: inbox.Stored) -> Response:
    body = {"received": True, "id": stored.id, "duplicate": not stored.created}
    return Response(json.dumps(body), status=200, mimetype="application/json")


@blp.errorhandler(Refused)
def _on_refused(exc: Refused) -> Response:
    return _problem(exc.status, exc.slug, exc.detail)


@blp.errorhandler(SignatureError)
def _on_signature(exc: SignatureError) -> Response:
    log.info("webhook refused at %s: %s", request.path, exc)
    return _problem(400, "invalid-signature", f"The signature does not verify: {exc}.")


@blp.errorhandler(BodyError)
def _on_body(exc: BodyError) -> Response:
    return _problem(400, "malformed-body", exc.detail)


#: Identifiers a partner assigns by its own rules (SPEC section 6): kept as sent when they have
#: an identifier's shape, though one numeric id in ten passes the Luhn check. Card tokens are
#: not among them: a network token is a card-like number and is treated as one.
PARTNER_IDENTIFIERS = paths(
    "data.transaction_id",
    "data.original_transaction_id",
    "data.customer_ref",
    "data.account_ref",
    "data.merchant.mid",
    "data.chat.user_id",
)
#: Ids the chat platform assigns (page-scoped user ids, page ids) and its millisecond clock.
#: Ids the chat platform assigns: kept as sent, even where their digits pass the Luhn check,
#: since a message id is what makes two messages two events.
CHAT_IDENTIFIERS = paths(
    "sender.id",
    "recipient.id",
    "timestamp",
    "message.mid",
    "message.reply_to.mid",
    "postback.mid",
    "reaction.mid",
    "read.mid",
    "delivery.mid",
)


def _settings() -> Any:
    return current_app.config["CHATLEDGER"]


def _hasher() -> CardHasher | None:
    keys = _settings().card_keys
    return CardHasher(keys) if keys else None


def _object(document: Any, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise Refused(400, "malformed-body", f"The {what} must be a JSON object.")
    return document


def _text(document: dict[str, Any], field: str, *, limit: int = 255) -> str:
    value = document.get(field)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Refused(400, "malformed-body", f"The field {field!r} must be a string.")
    return value


# -- Stripe ------------------------------------------------------------------------------


@blp.post("/stripe")
def stripe_door() -> Response:
    raw = request.get_data(cache=False)
    timestamp = verify_stripe(
        raw, request.headers.get("Stripe-Signature"), _settings().stripe_webhook_secrets
    )
    event = _object(loads_strict(raw), "event")
    if event.get("object") != "event" or not isinstance(event.get("data"), dict):
        # Thin events (v2 notifications) carry no snapshot to keep.
        raise Refused(
            400,
            "unsupported-event",
            "Only snapshot events are accepted: send thin events to another destination.",
        )
    _text(event, "id")
    event_type = _text(event, "type", limit=64)
    if not isinstance(event["data"].get("object"), dict):
        raise Refused(400, "malformed-body", "The event has no data.object.")
    # A Core transaction, not an ORM session: this is the hottest path of the service.
    with runtime.connection() as connection:
        stored = accept_stripe_event(
            connection, event, event_type, headers={"signature_timestamp": timestamp}, raw=raw
        )
    # Nothing is sent from here: a relay finds the committed row and sends its task.
    if stored.status == "refused":
        raise Refused(
            400,
            "unsupported-api-version",
            f"Events must use Stripe API version {STRIPE_API_VERSION}; "
            f"this endpoint received {event.get('api_version')!r}.",
        )
    return _accepted(stored)


def accept_stripe_event(
    connection: Connection,
    event: dict[str, Any],
    event_type: str,
    *,
    headers: dict[str, Any],
    raw: bytes | None = None,
) -> inbox.Stored:
    """Store a Stripe event (from the door, or fetched by the backfill) once, scrubbed; a
    relay sends a new pending event once the caller's transaction commits.

    An event of another API version is kept as `refused`, so the operator sees it and can
    replay it after an upgrade; its shape is not one the handlers were written for.
    """
    created = event.get("created")
    occurred_at = (
        datetime.fromtimestamp(created, UTC)
        if isinstance(created, int) and not isinstance(created, bool)
        else None
    )
    scrubbed = scrub(event, hasher=None)
    document = scrubbed.document
    # The body the event was parsed from (`raw`) is stored as it came when the scrubber found
    # nothing to mask, hash or drop in it: the same JSON, without serializing it again.
    payload_json = None
    if raw is not None and not (
        scrubbed.pans_found or scrubbed.pan_fields_hashed or scrubbed.dropped_fields
    ):
        try:
            payload_json = raw.decode("utf-8")
        except UnicodeDecodeError:
            payload_json = None
    headers = {**headers, "api_version": event.get("api_version")}
    if event.get("api_version") != STRIPE_API_VERSION:
        return inbox.insert_event(
            connection,
            source="stripe",
            event_id=event["id"],
            event_type=event_type,
            payload=document,
            headers=headers,
            occurred_at=occurred_at,
            status="refused",
            error=f"API version {event.get('api_version')!r}; expected {STRIPE_API_VERSION}",
        )
    return inbox.insert_event(
        connection,
        source="stripe",
        event_id=event["id"],
        event_type=event_type,
        payload=document,
        headers=headers,
        occurred_at=occurred_at,
        payload_json=payload_json,
    )


# -- Partners ----------------------------------------------------------------------------


@blp.post("/partners/<partner_id>")
def partner_door(partner_id: str) -> Response:
    raw = request.get_data(cache=False)
    with transaction(runtime.sessions()) as session:
        secrets = active_secrets(session, partner_id) if len(partner_id) <= 32 else []
    message_id, _ = verify_standard(raw, request.headers, secrets)
    body = _object(loads_strict(raw), "notification")
    if _text(body, "id") != message_id:
        raise Refused(400, "malformed-body", "The body's id must equal the webhook-id header.")
    event_type = _text(body, "type", limit=64)
    if event_type not in SCOPE_OF:
        raise Refused(400, "unsupported-event", f"Unknown partner event type {event_type!r}.")
    _object(body.get("data"), "data")
    # A card number in a card field becomes a keyed hash; anywhere else it is masked.
    result = scrub(body, hasher=_hasher(), identifiers=PARTNER_IDENTIFIERS)
    scope = SCOPE_OF[event_type]
    source = f"partner:{partner_id}"
    with transaction(runtime.sessions()) as session:
        if result.pans_found:
            flag_pan(session, partner_id, result.pans_found)
        refusal = _partner_refusal(session, partner_id, scope, body["data"])
        if refusal is not None:
            # The refusal is on record, without the data it refused.
            inbox.store(
                session,
                source=source,
                event_id=message_id,
                event_type=event_type,
                payload={},
                status="refused",
                error=refusal.detail,
            )
        else:
            stored = inbox.store(
                session,
                source=source,
                event_id=message_id,
                event_type=event_type,
                payload=result.document,
                headers={"webhook_id": message_id},
            )
    if refusal is not None:
        raise refusal
    return _accepted(stored)


def _partner_refusal(
    session: Session, partner_id: str, scope: str | None, data: dict[str, Any]
) -> Refused | None:
    """Why this partner may not send this now: no agreement in force for the scope, or, for
    data about a cardholder, no consent of theirs covering it. None when it may."""
    if agreement_in_force(session, partner_id, scope=scope) is None:
        return Refused(
            403,
            "outside-agreement",
            f"No data-sharing agreement in force covers {scope or 'events'} from this partner; "
            "nothing was stored.",
        )
    if scope is None:
        return None
    customer_ref = data.get("customer_ref")
    if not isinstance(customer_ref, str) or not consent_in_force(
        session, partner_id=partner_id, customer_ref=customer_ref, scope=scope
    ):
        return Refused(
            403,
            "no-consent",
            f"The cardholder has no consent in force covering {scope} with this partner; "
            "nothing was stored.",
        )
    return None


# -- Chat platform -----------------------------------------------------------------------


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise Refused(404, "not-found", f"No chat channel {channel!r}.")


@blp.get("/chat/<channel>")
def chat_handshake(channel: str) -> Response:
    """Meta's subscription check: echo `hub.challenge` when the verify token matches."""
    _check_channel(channel)
    token = _settings().chat_verify_token
    given = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    if (
        request.args.get("hub.mode") != "subscribe"
        or not token
        or not hmac.compare_digest(given.encode(), token.encode())
    ):
        raise Refused(403, "forbidden", "The verify token does not match.")
    if not challenge or len(challenge) > 255 or not challenge.isprintable():
        raise Refused(400, "malformed-body", "hub.challenge is missing.")
    return Response(challenge, status=200, mimetype="text/plain")


def _chat_event_id(item: dict[str, Any]) -> str:
    for key in ("message", "postback", "read", "delivery", "reaction"):
        part = item.get(key)
        if isinstance(part, dict) and isinstance(part.get("mid"), str):
            return part["mid"][:255]
    # No message id (a read receipt, a referral): the sender, the time and the kind name it.
    sender = (item.get("sender") or {}).get("id")
    return f"{sender}:{item.get('timestamp')}:{_chat_event_type(item)}"[:255]


def _chat_event_type(item: dict[str, Any]) -> str:
    if "postback" in item:
        return "postback"
    message = item.get("message")
    if isinstance(message, dict):
        return "quick_reply" if "quick_reply" in message else "message"
    return next((k for k in ("read", "delivery", "reaction", "referral") if k in item), "other")


@blp.post("/chat/<channel>")
def chat_door(channel: str) -> Response:
    _check_channel(channel)
    raw = request.get_data(cache=False)
    verify_meta(raw, request.headers.get("X-Hub-Signature-256"), _settings().chat_app_secret)
    body = _object(loads_strict(raw), "event")
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise Refused(400, "malformed-body", "The event has no entry list.")
    items: list[dict[str, Any]] = []
    for entry in entries:
        for item in _object(entry, "entry").get("messaging") or []:
            items.append(_object(item, "messaging item"))
    with runtime.connection() as connection:
        stored = [_store_chat_item(connection, channel, item) for item in items]
    stored_ids = [event.id for event in stored]
    body_out = {"received": True, "ids": stored_ids}
    return Response(json.dumps(body_out), status=200, mimetype="application/json")


def _store_chat_item(connection: Connection, channel: str, item: dict[str, Any]) -> inbox.Stored:
    # Message text is kept only with card numbers masked; card secrets are dropped.
    result = scrub(item, hasher=None, identifiers=CHAT_IDENTIFIERS)
    timestamp = item.get("timestamp")
    occurred_at = (
        datetime.fromtimestamp(timestamp / 1000, UTC)
        if isinstance(timestamp, int) and not isinstance(timestamp, bool)
        else None
    )
    return inbox.insert_event(
        connection,
        source=f"chat:{channel}",
        event_id=_chat_event_id(result.document),
        event_type=_chat_event_type(item),
        payload=result.document,
        occurred_at=occurred_at,
    )
