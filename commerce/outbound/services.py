"""Outbound webhooks: endpoints and their secrets, recording events for them, and delivering.

An event is recorded in the transaction of the change it reports, with one delivery per
subscribed endpoint; the delivery task is sent after the commit with the delivery id only.
The retry schedule lives on the delivery row (`next_attempt_at`), and a beat sweep sends
what is due, so a lost task or a restarted broker delays a delivery and never loses it.

An attempt claims its delivery in a short transaction (moving `next_attempt_at` forward by
an in-flight lease, so a second task for the same delivery does nothing), makes the HTTP
request outside any transaction, and records the attempt and the next step in another.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets as random_secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from sqlalchemy import any_, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from commerce.cards.scrub import mask
from commerce.db import after_commit, transaction, utcnow
from commerce.errors import Conflict, InvalidInput, NotFound
from commerce.ids import new_id
from commerce.instants import utc_text
from commerce.outbound import guard
from commerce.outbound.guard import AddressPolicy, AddressRefused, Destination, Resolver
from commerce.outbound.models import (
    DELIVERY_STATUSES,
    EVENT_TYPES,
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointSecret,
)
from commerce.sales.models import Sale
from commerce.sales.states import SaleState

log = logging.getLogger(__name__)

#: How long the previous secret keeps signing after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)
#: Attempts go on this long after the first one (or after a redelivery).
RETRY_WINDOW = timedelta(days=3)
#: The first retry waits about this long; each next one about twice as long...
FIRST_RETRY = timedelta(seconds=10)
#: ...up to this.
LONGEST_RETRY = timedelta(hours=6)
#: A receiver's Retry-After is honoured up to this; beyond it, this.
LONGEST_RETRY_AFTER = timedelta(hours=24)
#: Connect and read timeout of one attempt, in seconds.
TIMEOUT_SECONDS = 15
#: A claimed attempt holds its delivery this long; past it (the worker died), it is due again.
IN_FLIGHT = timedelta(minutes=2)
#: The task sent at commit is given this long before the sweep sends another.
SWEEP_GRACE = timedelta(seconds=30)
#: A delivery the sweep sent is not sent again for this long.
QUEUE_LEASE = timedelta(minutes=2)
#: Deliveries one bulk redelivery puts back in the queue, at most.
BULK_REDELIVERY_LIMIT = 1000
_ERROR_CHARS = 2000
_BODY_SNIPPET = 500

_SALE_EVENT_DATA = (
    "id",
    "offer_id",
    "conversation_id",
    "state",
    "amount",
    "currency",
    "amount_captured",
    "amount_refunded",
    "amount_disputed",
    "payment_intent_id",
)


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


# --- Endpoints --------------------------------------------------------------------------------


def create_endpoint(
    session: Session,
    *,
    merchant_id: str,
    url: str,
    event_types: Sequence[str],
    policy: AddressPolicy | None = None,
    resolver: Resolver | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its first signing secret (shown once).

    The URL's host must be, and resolve only to, public addresses (`guard`); it is checked
    again before every attempt, since what a name resolves to can change.
    """
    errors: dict[str, list[str]] = {}
    if not event_types or set(event_types) - set(EVENT_TYPES):
        errors["event_types"] = [f"Must be a non-empty subset of {', '.join(EVENT_TYPES)}."]
    try:
        guard.check_url(
            url,
            policy=policy or AddressPolicy.strict(),
            resolver=resolver or guard.system_resolver,
        )
    except AddressRefused as exc:
        errors["url"] = [str(exc)]
    if errors:
        raise InvalidInput(errors)
    endpoint = WebhookEndpoint(
        id=new_id("webhook_endpoint"),
        merchant_id=merchant_id,
        url=url,
        event_types=sorted(set(event_types)),
        status="enabled",
    )
    secret = new_signing_secret()
    endpoint.secrets = [WebhookEndpointSecret(secret=secret)]
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get_endpoint(
    session: Session, *, merchant_id: str, endpoint_id: str, lock: bool = False
) -> WebhookEndpoint:
    """The merchant's endpoint; another merchant's id is NotFound, as an unknown one is."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=lock or None)
    if endpoint is None or endpoint.merchant_id != merchant_id:
        raise NotFound("webhook endpoint")
    return endpoint


#: `disabled_reason` of an endpoint the merchant disabled.
DISABLED_BY_MERCHANT = "Disabled by the merchant."
#: `disabled_reason` of an endpoint whose receiver answered 410 Gone.
DISABLED_BY_410 = "The receiver answered 410 Gone."


def disable_endpoint(session: Session, *, merchant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Stop sending to the endpoint, by hand: its pending deliveries are canceled (a
    redelivery sends them once it is enabled again) and new events record none for it.
    Disabling a disabled endpoint changes nothing, its reason included."""
    endpoint = get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    if endpoint.status != "disabled":
        _disable(session, endpoint, reason=DISABLED_BY_MERCHANT, now=utcnow())
    return endpoint


def enable_endpoint(
    session: Session,
    *,
    merchant_id: str,
    endpoint_id: str,
    policy: AddressPolicy | None = None,
    resolver: Resolver | None = None,
) -> WebhookEndpoint:
    """Send to the endpoint again (after a 410, or after the merchant disabled it).

    Its URL is checked again as at registration: what a name resolves to may have changed
    while it was disabled. Deliveries canceled meanwhile stay canceled: the merchant
    chooses what to send again with a redelivery (`status=canceled` sends all of them);
    events recorded from now on are delivered as usual.
    """
    endpoint = get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    if endpoint.status == "enabled":
        return endpoint
    try:
        guard.check_url(
            endpoint.url,
            policy=policy or AddressPolicy.strict(),
            resolver=resolver or guard.system_resolver,
        )
    except AddressRefused as exc:
        raise InvalidInput({"url": [str(exc)]}) from None
    endpoint.status = "enabled"
    endpoint.disabled_reason = None
    endpoint.disabled_at = None
    session.flush()
    return endpoint


def delete_endpoint(session: Session, *, merchant_id: str, endpoint_id: str) -> None:
    """Remove the endpoint with its secrets, deliveries and their attempts.

    A delivery still pending goes with it: nothing more is sent, and a task or an attempt
    in flight for it finds no delivery and records nothing. The events stay (other
    endpoints of the merchant may have deliveries of them).
    """
    endpoint = get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id, lock=True)
    # The database cascades to deliveries and attempts; the ORM to the secrets it loaded.
    session.delete(endpoint)
    session.flush()


def rotate_secret(session: Session, *, merchant_id: str, endpoint_id: str) -> str:
    """A new secret; the previous ones keep signing for ROTATION_OVERLAP, so a receiver that
    still checks the old one accepts every delivery meanwhile (each carries both signatures)."""
    endpoint = get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
    now = utcnow()
    for old in endpoint.secrets:
        if old.expires_at is None or old.expires_at > now + ROTATION_OVERLAP:
            old.expires_at = now + ROTATION_OVERLAP
    secret = new_signing_secret()
    endpoint.secrets.append(WebhookEndpointSecret(secret=secret, created_at=now))
    session.flush()
    return secret


def signing_secrets(session: Session, endpoint_id: str, *, at: datetime) -> list[str]:
    return list(
        session.scalars(
            select(WebhookEndpointSecret.secret)
            .where(
                WebhookEndpointSecret.endpoint_id == endpoint_id,
                or_(
                    WebhookEndpointSecret.expires_at.is_(None),
                    WebhookEndpointSecret.expires_at > at,
                ),
            )
            .order_by(WebhookEndpointSecret.created_at.desc(), WebhookEndpointSecret.id.desc())
        )
    )


# --- Events -----------------------------------------------------------------------------------


def subscribed_merchants(
    session: Session, merchant_ids: Iterable[str], event_type: str
) -> set[str]:
    """Which of these merchants have an enabled endpoint for `event_type`: a producer of
    many events at once (a reconciliation batch) asks first, and calls `emit` only for them.
    """
    wanted = sorted(set(merchant_ids))
    if not wanted:
        return set()
    return set(
        session.scalars(
            select(WebhookEndpoint.merchant_id)
            .distinct()
            .where(
                WebhookEndpoint.merchant_id.in_(wanted),
                WebhookEndpoint.status == "enabled",
                literal(event_type) == any_(WebhookEndpoint.event_types),
            )
        )
    )


def emit(
    session: Session,
    *,
    merchant_id: str,
    event_type: str,
    data: dict[str, Any],
    dedupe_key: str,
) -> OutboundEvent | None:
    """Record an event for every enabled endpoint of the merchant subscribed to its type, in
    the caller's transaction; each delivery's task is sent after the commit.

    The same `dedupe_key` again records nothing (a repeated cause is one event). Returns the
    event, or None when no endpoint wants it or it was already recorded.

    How a producer uses it (`on_sale_changed` below is the model; `reconciliation.exception`
    and `attribution.created` are produced the same way by their own modules):

    - Call it inside the transaction that makes the change the event reports, after the
      change is flushed, never after the commit and never in a transaction of its own: the
      event is recorded if and only if the change commits, and a rollback takes it back.
      It takes a KEY SHARE lock on the merchant's subscribed endpoints (an endpoint being
      deleted is waited for, then left out) and flushes; it never commits.
    - `event_type` is one of `models.EVENT_TYPES`; anything else raises ValueError (a
      programming error, not the merchant's).
    - `data` is the JSON the merchant receives as the body's `data`, kept as built: every
      attempt and redelivery sends it again under the same `webhook-id`. It names the
      object kind in `"object"` (`"reconciliation_exception"`, `"attribution"`) and carries
      its `id` and the ids the merchant knows it by (sale, offer, conversation); amounts in
      minor units with their `currency`; times as RFC 3339 UTC strings. It is the merchant's
      own data only: no card data beyond what the merchant's API shows (a merchant-scoped
      card alias, never a PAN, token, PAR or another merchant's alias), and nothing a
      partner shared for a purpose other than the one that produced the event.
    - `dedupe_key` names the cause, stably, so that running the producer again (a task
      delivered twice, a batch re-run, a replayed webhook) records no second event:
      `f"{event_type}:{object id}:{cause}"`, e.g. `"reconciliation.exception:<exception
      id>:opened"`, `"attribution.created:<attribution id>"`. At most 160 characters;
      unique per merchant.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbound event type {event_type!r}")
    endpoint_ids = list(
        session.scalars(
            select(WebhookEndpoint.id)
            .where(
                WebhookEndpoint.merchant_id == merchant_id,
                WebhookEndpoint.status == "enabled",
                literal(event_type) == any_(WebhookEndpoint.event_types),
            )
            # An endpoint being deleted now is waited for and then left out, so the
            # deliveries below never point at a deleted row (which would fail the caller's
            # transaction, a sale's). A disable or secret rotation does not wait: KEY SHARE.
            .with_for_update(key_share=True)
        )
    )
    if not endpoint_ids:
        return None
    now = utcnow()
    event_id = new_id("outbound_event")
    payload = {
        "id": event_id,
        "type": event_type,
        "created": utc_text(now),
        "data": data,
    }
    inserted = session.execute(
        insert(OutboundEvent)
        .values(
            id=event_id,
            merchant_id=merchant_id,
            type=event_type,
            dedupe_key=dedupe_key,
            payload=payload,
            created_at=now,
        )
        .on_conflict_do_nothing(
            index_elements=[OutboundEvent.merchant_id, OutboundEvent.dedupe_key]
        )
        .returning(OutboundEvent.id)
    ).scalar_one_or_none()
    if inserted is None:
        return None
    for endpoint_id in endpoint_ids:
        delivery_id = new_id("webhook_delivery")
        session.add(
            WebhookDelivery(
                id=delivery_id,
                endpoint_id=endpoint_id,
                event_id=event_id,
                status="pending",
                next_attempt_at=now,
                queued_until=now + SWEEP_GRACE,
                give_up_at=now + RETRY_WINDOW,
                created_at=now,
            )
        )
        enqueue(session, delivery_id)
    session.flush()
    return session.get(OutboundEvent, event_id)


def on_sale_changed(
    session: Session,
    sale: Sale,
    *,
    previous_state: str,
    previous_refunded: int,
    cause: str,
) -> None:
    """The sale's derived state or amounts changed because of the sale event `cause`: record
    `sale.paid` when it became paid, `sale.refunded` when more of it was refunded (partially
    or in full), `sale.disputed` when it became disputed."""
    types = []
    if sale.state == SaleState.PAID and previous_state != SaleState.PAID:
        types.append("sale.paid")
    if sale.amount_refunded > previous_refunded and sale.state in (
        SaleState.PARTIALLY_REFUNDED,
        SaleState.REFUNDED,
    ):
        types.append("sale.refunded")
    if sale.state == SaleState.DISPUTED and previous_state != SaleState.DISPUTED:
        types.append("sale.disputed")
    if not types:
        return
    data: dict[str, Any] = {"object": "sale", "previous_state": previous_state}
    data.update({name: getattr(sale, name) for name in _SALE_EVENT_DATA})
    for event_type in types:
        emit(
            session,
            merchant_id=sale.merchant_id,
            event_type=event_type,
            data=data,
            dedupe_key=f"{event_type}:{sale.id}:{cause}",
        )


# --- Queueing ---------------------------------------------------------------------------------


def send(delivery_id: str) -> None:
    """Send the delivery task now (the caller has committed). If the broker is down the
    delivery stays due and the sweep sends it."""
    from commerce.outbound import tasks

    try:
        tasks.deliver.apply_async(args=[delivery_id])
    except Exception:  # the broker's errors vary by transport; the sweep covers all of them
        log.warning("delivery %s not queued; the sweep will send it", delivery_id)


def enqueue(session: Session, delivery_id: str) -> None:
    after_commit(session, lambda: send(delivery_id))


def due(session: Session, *, now: datetime, limit: int = 500) -> list[str]:
    """Pending deliveries whose next attempt is due and that no task is queued for; each is
    leased for QUEUE_LEASE so the next sweep does not send it again at once."""
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.queued_until.is_(None), WebhookDelivery.queued_until <= now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(queued_until=now + QUEUE_LEASE)
        )
    return ids


# --- Delivering -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What the receiver answered: status, headers, and the start of its body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes = b""


#: (checked destination, body, headers) -> the receiver's reply; raises requests' errors.
Sender = Callable[[Destination, bytes, dict[str, str]], Reply]


@dataclass(frozen=True, slots=True)
class _Result:
    status_code: int | None
    error: str | None
    retry_after: str | None = None


def send_pinned(
    destination: Destination,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float = TIMEOUT_SECONDS,
    ca_bundle: str | None = None,
) -> Reply:
    """POST to the checked address (never re-resolved), without following redirects.

    For https the certificate is verified, always, against the URL's host name (not the
    address connected to): against the system's trust store, or `ca_bundle` (a PEM file),
    which only the tests pass, to trust the CA of a local receiver; nothing turns the
    verification off. `trust_env` is off: a proxy from the environment would resolve the
    name itself, and .netrc credentials must not go to a merchant's server.
    """
    adapter = guard.PinnedAdapter(destination)
    with requests.Session() as http:
        http.trust_env = False
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        response = http.post(
            destination.url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
            verify=ca_bundle or True,
        )
        try:
            snippet = response.raw.read(_BODY_SNIPPET, decode_content=True) or b""
        except Exception:  # the body is only for the log; its failure is not the delivery's
            snippet = b""
        finally:
            response.close()
        return Reply(response.status_code, response.headers, snippet)


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def deliver(
    factory: sessionmaker[Session],
    delivery_id: str,
    *,
    policy: AddressPolicy,
    resolver: Resolver | None = None,
    clock: Callable[[], datetime] = utcnow,
    sender: Sender | None = None,
    rng: Callable[[], float] = random.random,
) -> str | None:
    """Make one attempt of a due delivery; returns the delivery's status after it.

    `policy` is `AddressPolicy.strict()` in the product (tasks.deliver builds it); `clock`
    decides what is due and when the next attempt is. The signature's `webhook-timestamp`
    is always the real time the request leaves, since receivers check it against theirs.
    """
    now = clock()
    with transaction(factory) as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + IN_FLIGHT, queued_until=None)
            .returning(WebhookDelivery.id)
        ).scalar_one_or_none()
        if claimed is None:
            return session.scalar(
                select(WebhookDelivery.status).where(WebhookDelivery.id == delivery_id)
            )
        delivery = session.get_one(WebhookDelivery, delivery_id)
        endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
        if endpoint.status != "enabled":
            delivery.status = "canceled"
            delivery.next_attempt_at = None
            return delivery.status
        secrets = signing_secrets(session, endpoint.id, at=now)
        url, message_id = endpoint.url, delivery.event_id
        body = _canonical(delivery.event.payload)

    started = time.monotonic()
    result = _attempt(
        url,
        message_id,
        body,
        secrets,
        policy=policy,
        resolver=resolver or guard.system_resolver,
        sender=sender or send_pinned,
    )
    latency_ms = int((time.monotonic() - started) * 1000)
    return _record(
        factory, delivery_id, result, attempted_at=now, latency_ms=latency_ms, now=clock(), rng=rng
    )


def wallclock() -> float:
    """The real time, for `webhook-timestamp`: never the scheduling clock."""
    return time.time()


def _attempt(
    url: str,
    message_id: str,
    body: str,
    secrets: Sequence[str],
    *,
    policy: AddressPolicy,
    resolver: Resolver,
    sender: Sender,
) -> _Result:
    try:
        destination = guard.check_url(url, policy=policy, resolver=resolver)
    except AddressRefused as exc:
        return _Result(None, f"Destination refused: {exc}")
    if not secrets:
        return _Result(None, "The endpoint has no valid signing secret.")
    sent_at = datetime.fromtimestamp(int(wallclock()), UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "chatledger-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        # One signature per valid secret, space-separated: during a rotation a receiver
        # verifying with either secret accepts the delivery.
        "webhook-signature": " ".join(Webhook(s).sign(message_id, sent_at, body) for s in secrets),
    }
    try:
        response = sender(destination, body.encode(), headers)
    except requests.Timeout:
        return _Result(None, f"No answer within {TIMEOUT_SECONDS} seconds.")
    except requests.RequestException as exc:
        return _Result(None, f"{type(exc).__name__}: {exc}")
    code = response.status_code
    if 200 <= code < 300:
        return _Result(code, None)
    if 300 <= code < 400:
        location = response.headers.get("Location", "")
        error = f"HTTP {code}: redirect to {location!r} not followed."
    else:
        text = response.content[:_BODY_SNIPPET].decode("utf-8", "replace")
        error = f"HTTP {code}" + (f": {text}" if text else "")
    return _Result(code, error, response.headers.get("Retry-After"))


def _record(
    factory: sessionmaker[Session],
    delivery_id: str,
    result: _Result,
    *,
    attempted_at: datetime,
    latency_ms: int,
    now: datetime,
    rng: Callable[[], float],
) -> str | None:
    error = mask(result.error)[:_ERROR_CHARS] if result.error else None
    code = result.status_code
    with transaction(factory) as session:
        if code == 410:
            # The endpoint is disabled below: lock it first, in the order that disabling by
            # hand and deleting take (the endpoint, then its deliveries), so that neither
            # deadlocks with this.
            endpoint_id = session.scalar(
                select(WebhookDelivery.endpoint_id).where(WebhookDelivery.id == delivery_id)
            )
            if endpoint_id is not None:
                session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.last_status_code = code
        delivery.last_error = error
        if code is not None and 200 <= code < 300:
            outcome = "delivered"
            delivery.status = "delivered"
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif code == 410:
            outcome = "disabled"
            _disable_endpoint(session, delivery.endpoint_id, now=now)
        elif delivery.status != "pending":
            # Canceled meanwhile (another delivery's 410 disabled the endpoint): no retry.
            outcome = "failed"
        else:
            delay = backoff(delivery.attempts, rng)
            wait = retry_after(result.retry_after, now=now)
            if wait is not None:
                delay = max(delay, min(wait, LONGEST_RETRY_AFTER))
            if now + delay > delivery.give_up_at:
                outcome = "failed"
                delivery.status = "failed"
                delivery.next_attempt_at = None
            else:
                outcome = "retry"
                delivery.next_attempt_at = now + delay
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempted_at=attempted_at,
                status_code=code,
                latency_ms=latency_ms,
                outcome=outcome,
                error=error,
            )
        )
        session.flush()
        return delivery.status


def _disable_endpoint(session: Session, endpoint_id: str, *, now: datetime) -> None:
    """410 Gone: the receiver asks for nothing more."""
    endpoint = session.get_one(WebhookEndpoint, endpoint_id, with_for_update=True)
    _disable(session, endpoint, reason=DISABLED_BY_410, now=now)


def _disable(session: Session, endpoint: WebhookEndpoint, *, reason: str, now: datetime) -> None:
    """The endpoint is disabled and everything still pending for it is canceled (a
    redelivery can resend it once it is enabled again)."""
    endpoint.status = "disabled"
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")
        .values(status="canceled", next_attempt_at=None, queued_until=None)
        .execution_options(synchronize_session="fetch")
    )
    session.flush()


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> timedelta:
    """Exponential backoff with jitter: about 10 s, 20 s, 40 s ... after the 1st, 2nd, 3rd
    failure, capped at 6 hours; each wait is drawn between half and all of its ceiling."""
    ceiling = min(
        FIRST_RETRY.total_seconds() * 2 ** min(max(attempts, 1) - 1, 30),
        LONGEST_RETRY.total_seconds(),
    )
    return timedelta(seconds=ceiling / 2 + rng() * ceiling / 2)


def retry_after(value: str | None, *, now: datetime) -> timedelta | None:
    """A `Retry-After` header (delay in seconds, or an HTTP date) as a wait from `now`."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=min(int(value[:12]), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


# --- The log and redelivery -------------------------------------------------------------------


def get_delivery(
    session: Session, *, merchant_id: str, endpoint_id: str, delivery_id: str
) -> WebhookDelivery:
    get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        raise NotFound("webhook delivery")
    return delivery


def _requeue(session: Session, deliveries: Sequence[WebhookDelivery], now: datetime) -> None:
    for delivery in deliveries:
        delivery.status = "pending"
        delivery.next_attempt_at = now
        delivery.queued_until = now + SWEEP_GRACE
        delivery.give_up_at = now + RETRY_WINDOW
        enqueue(session, delivery.id)
    session.flush()


def _enabled(session: Session, *, merchant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = get_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
    if endpoint.status != "enabled":
        raise Conflict("The endpoint is disabled; nothing is sent to it.")
    return endpoint


def redeliver(
    session: Session, *, merchant_id: str, endpoint_id: str, delivery_id: str
) -> WebhookDelivery:
    """Send a delivery again, whatever became of it, with a new retry window. Same event,
    same `webhook-id`: a receiver that already has it can tell."""
    _enabled(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
    delivery = get_delivery(
        session, merchant_id=merchant_id, endpoint_id=endpoint_id, delivery_id=delivery_id
    )
    _requeue(session, [delivery], utcnow())
    return delivery


def redeliver_many(
    session: Session,
    *,
    merchant_id: str,
    endpoint_id: str,
    status: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Send again every delivery of the endpoint in `status` (created in [since, until)), up
    to BULK_REDELIVERY_LIMIT of them, oldest first; returns how many."""
    if status not in DELIVERY_STATUSES:
        raise InvalidInput({"status": [f"Must be one of {', '.join(DELIVERY_STATUSES)}."]})
    _enabled(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == status
    )
    if since is not None:
        query = query.where(WebhookDelivery.created_at >= since)
    if until is not None:
        query = query.where(WebhookDelivery.created_at < until)
    deliveries = list(
        session.scalars(
            query.order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            .limit(BULK_REDELIVERY_LIMIT)
            .with_for_update()
        )
    )
    _requeue(session, deliveries, utcnow())
    return len(deliveries)
