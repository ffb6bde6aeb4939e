"""Checkout, the sale's event history, and refunds.

Every change to a sale's money goes through `record_event`: it appends one event
(once per source reference, however often it is delivered), then re-derives the
sale's state and amounts from the whole history with the state machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import locks, payments
from commerce.chat.models import Conversation
from commerce.db import after_commit, utcnow
from commerce.errors import Conflict, InvalidInput, InvalidTransition, NotFound, ProviderError
from commerce.ids import new_id
from commerce.merchants.models import Merchant
from commerce.offers.services import record_touchpoint
from commerce.sales.models import Refund, Sale, SaleEvent
from commerce.sales.states import (
    BY_AMOUNT,
    TABLE,
    EventKind,
    Fact,
    Ledger,
    Outcome,
    SaleState,
    fold,
    transition,
)

log = logging.getLogger(__name__)

#: Refunds not yet answered by the provider hold back this much of the refundable amount.
_OPEN_REFUND_STATUSES = ("requested", "pending")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


@dataclass(frozen=True, slots=True)
class Checkout:
    sale: Sale
    #: False when the offer had already been accepted and this is the same sale again.
    created: bool


def get_sale(session: Session, *, merchant_id: str, sale_id: str) -> Sale:
    sale = session.get(Sale, sale_id)
    if sale is None or sale.merchant_id != merchant_id:
        raise NotFound("sale")
    return sale


def checkout(session: Session, *, merchant_id: str, offer_id: str) -> Checkout:
    """Accept an offer: create its sale and the provider's PaymentIntent.

    The offer row is locked so two taps on one offer make one sale. The
    PaymentIntent's idempotency key is derived from the sale id, so a retried call
    to the provider never creates a second intent for the sale.
    """
    offer = locks.lock_offer(session, offer_id, merchant_id)
    if offer is None:
        raise NotFound("offer")
    existing = session.scalars(select(Sale).where(Sale.offer_id == offer.id)).one_or_none()
    if existing is not None:
        return Checkout(existing, created=False)
    if offer.expires_at is not None and offer.expires_at <= utcnow():
        raise Conflict("The offer has expired.")

    conversation = session.get_one(Conversation, offer.conversation_id)
    merchant = session.get_one(Merchant, merchant_id)
    sale = Sale(
        id=new_id("sale"),
        merchant_id=merchant_id,
        offer_id=offer.id,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
        amount=offer.amount,
        currency=offer.currency,
        quantity=offer.quantity,
        state=SaleState.PENDING_PAYMENT,
    )
    session.add(sale)
    session.flush()
    record_event(
        session,
        sale,
        kind=EventKind.CHECKOUT_CREATED,
        source="api",
        source_ref=sale.id,
        amount=sale.amount,
        occurred_at=sale.created_at,
    )
    record_touchpoint(
        session,
        merchant_id=merchant_id,
        offer_id=offer.id,
        kind="accepted",
        external_id=f"checkout:{sale.id}",
    )
    intent = payments.provider().create_payment_intent(
        amount=sale.amount,
        currency=sale.currency,
        description=offer.title,
        metadata={
            "sale_id": sale.id,
            "offer_id": offer.id,
            "conversation_id": conversation.id,
            "merchant_id": merchant_id,
        },
        idempotency_key=f"chatledger-checkout-{sale.id}",
        connected_account=merchant.stripe_account,
    )
    sale.payment_intent_id = intent.id
    sale.client_secret = intent.client_secret
    session.flush()
    return Checkout(sale, created=True)


def record_event(
    session: Session,
    sale: Sale,
    *,
    kind: EventKind,
    source: str,
    source_ref: str,
    occurred_at: datetime,
    amount: int | None = None,
    data: dict[str, Any] | None = None,
) -> tuple[SaleEvent | None, Outcome]:
    """Append one fact to the sale's history and re-derive its state.

    The caller holds the sale's row lock (locks.lock_sale) or has just created the
    sale. The same (kind, source_ref) a second time stores nothing and answers
    DUPLICATE: deliveries repeat, facts do not.
    """
    event_id = new_id("sale_event")
    current = _ledger_of(sale)
    arrival, _ = transition(
        current, Fact(event_id, kind, occurred_at, ref=source_ref, amount=amount)
    )
    inserted = session.execute(
        insert(SaleEvent)
        .values(
            id=event_id,
            sale_id=sale.id,
            kind=kind.value,
            source=source,
            source_ref=source_ref,
            amount=amount,
            occurred_at=occurred_at,
            outcome_on_arrival=arrival.value,
            data=data or {},
        )
        .on_conflict_do_nothing(
            index_elements=[SaleEvent.sale_id, SaleEvent.kind, SaleEvent.source_ref]
        )
        .returning(SaleEvent.id)
    ).scalar_one_or_none()
    if inserted is None:
        return None, Outcome.DUPLICATE
    previous_state, previous_refunded = sale.state, sale.amount_refunded
    derive(session, sale)
    if (sale.state, sale.amount_refunded) != (previous_state, previous_refunded):
        # Merchants' webhooks (sale.paid, sale.refunded, sale.disputed), in this transaction.
        from commerce.outbound.services import on_sale_changed

        on_sale_changed(
            session,
            sale,
            previous_state=previous_state,
            previous_refunded=previous_refunded,
            cause=event_id,
        )
    return session.get(SaleEvent, event_id), arrival


def derive(session: Session, sale: Sale) -> Ledger:
    """Fold the sale's whole history and write the result onto the sale row."""
    ledger = _fold_history(session, sale.id)
    sale.state = ledger.state.value
    sale.amount_captured = ledger.amount_captured
    sale.amount_refunded = ledger.amount_refunded
    sale.amount_disputed = ledger.amount_disputed
    session.flush()
    return ledger


def _ledger_of(sale: Sale) -> Ledger:
    """The sale's current derived state, rebuilt from the history for exact set semantics."""
    session = Session.object_session(sale)
    return Ledger() if session is None else _fold_history(session, sale.id)


def _fold_history(session: Session, sale_id: str) -> Ledger:
    rows = session.execute(
        select(
            SaleEvent.id,
            SaleEvent.kind,
            SaleEvent.occurred_at,
            SaleEvent.source_ref,
            SaleEvent.amount,
        ).where(SaleEvent.sale_id == sale_id)
    ).all()
    ledger, _ = fold(
        Fact(r.id, EventKind(r.kind), r.occurred_at, ref=r.source_ref, amount=r.amount)
        for r in rows
    )
    return ledger


def request_refund(
    session: Session,
    *,
    merchant_id: str,
    sale_id: str,
    amount: int | None,
    reason: str | None = None,
) -> Refund:
    """Record a refund request and send it to the provider once the request has committed.

    Without an amount, everything still refundable is refunded. Refunds the
    provider has not answered yet hold back their amount, so two quick partial
    refunds can never add up to more than was paid.
    """
    if reason is not None and reason not in REFUND_REASONS:
        raise InvalidInput({"reason": [f"Must be one of {', '.join(REFUND_REASONS)}."]})
    sale = locks.lock_sale(session, sale_id)
    if sale is None or sale.merchant_id != merchant_id:
        raise NotFound("sale")
    ledger = _ledger_of(sale)
    # Only a settled, undisputed payment can be refunded: the provider refuses refunds
    # on a disputed charge, and there is nothing to refund before the money arrived.
    if TABLE[EventKind.REFUND_SUCCEEDED][ledger.state] != BY_AMOUNT:
        raise InvalidTransition(sale.state, "refund", refundable_states())
    held = sum(
        session.scalars(
            select(Refund.amount).where(
                Refund.sale_id == sale.id, Refund.status.in_(_OPEN_REFUND_STATUSES)
            )
        )
    )
    available = ledger.refundable - held
    if available <= 0:
        raise Conflict("Nothing is left to refund on this sale.")
    amount = available if amount is None else amount
    if amount > available:
        raise InvalidInput({"amount": [f"At most {available} can still be refunded on this sale."]})
    refund = Refund(
        id=new_id("refund"),
        sale_id=sale.id,
        merchant_id=merchant_id,
        amount=amount,
        currency=sale.currency,
        reason=reason,
        status="requested",
    )
    session.add(refund)
    session.flush()
    enqueue_refund_submission(session, refund.id)
    return refund


def refundable_states() -> list[str]:
    return [s.value for s, rule in TABLE[EventKind.REFUND_SUCCEEDED].items() if rule == BY_AMOUNT]


def enqueue_refund_submission(session: Session, refund_id: str) -> None:
    """Send the submission task after commit. If the broker is down, the refund stays
    `requested` and the periodic sweep sends it later: nothing is lost."""
    from commerce.sales import tasks

    def send() -> None:
        try:
            tasks.submit_refund.apply_async(args=[refund_id])
        except Exception:  # the broker's errors vary by transport; the sweep covers them all
            log.warning("refund %s not queued; the sweep will send it", refund_id, exc_info=True)

    after_commit(session, send)


def submit_refund(session: Session, refund_id: str) -> Refund | None:
    """Ask the provider for a refund that is still `requested`.

    Safe to run more than once: the idempotency key is the refund's own id, so the
    provider answers a repeat with the refund it already made.
    """
    refund = locks.lock_refund(session, refund_id)
    if refund is None or refund.status != "requested":
        return refund
    sale = locks.lock_sale(session, refund.sale_id)
    assert sale is not None
    merchant = session.get_one(Merchant, sale.merchant_id)
    if sale.payment_intent_id is None:
        refund.status = "failed"
        refund.failure_reason = "The sale has no payment to refund."
        return refund
    refund.attempts += 1
    try:
        result = payments.provider().create_refund(
            intent_id=sale.payment_intent_id,
            amount=refund.amount,
            currency=refund.currency,
            reason=refund.reason,
            metadata={"sale_id": sale.id, "refund_id": refund.id, "merchant_id": sale.merchant_id},
            idempotency_key=f"chatledger-refund-{refund.id}",
            connected_account=merchant.stripe_account,
        )
    except ProviderError as exc:
        if exc.retryable:
            raise
        refund.status = "failed"
        refund.failure_reason = exc.detail[:255]
        return refund
    apply_refund_result(
        session,
        sale,
        refund,
        provider_id=result.id,
        status=result.status,
        amount=result.amount,
        failure_reason=result.failure_reason,
    )
    return refund


def apply_refund_result(
    session: Session,
    sale: Sale,
    refund: Refund | None,
    *,
    provider_id: str,
    status: str,
    amount: int,
    failure_reason: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "stripe",
) -> None:
    """What the provider said about a refund, whoever asked for it: the sale's history
    gains `refund_succeeded` or `refund_failed`, keyed by the provider's refund id."""
    if refund is not None:
        refund.provider_refund_id = provider_id
        refund.status = (
            status if status in ("pending", "succeeded", "failed", "canceled") else ("pending")
        )
        refund.failure_reason = failure_reason
    when = occurred_at or utcnow()
    if status == "succeeded":
        record_event(
            session,
            sale,
            kind=EventKind.REFUND_SUCCEEDED,
            source=source,
            source_ref=provider_id,
            amount=amount,
            occurred_at=when,
        )
    elif status in ("failed", "canceled"):
        record_event(
            session,
            sale,
            kind=EventKind.REFUND_FAILED,
            source=source,
            source_ref=provider_id,
            amount=amount,
            occurred_at=when,
        )
    session.flush()


def stale_requested_refunds(session: Session, *, older_than: datetime) -> list[str]:
    """Refunds accepted by chatledger but never handed to the provider (the broker was down)."""
    return list(
        session.scalars(
            select(Refund.id)
            .where(Refund.status == "requested", Refund.updated_at < older_than)
            .limit(500)
        )
    )


#: PaymentIntent status -> the event it means for the sale.
_INTENT_EVENTS = {
    "requires_capture": EventKind.PAYMENT_AUTHORIZED,
    "succeeded": EventKind.PAYMENT_SUCCEEDED,
    "canceled": EventKind.PAYMENT_CANCELED,
}


def sync_payment(session: Session, *, merchant_id: str, sale_id: str) -> Sale:
    """Ask the provider where the sale's payment stands and record what is new.

    The webhook normally brings this news; this is how a chat asks right after the
    customer paid, and how a sweep recovers a delivery that never came. The facts
    recorded carry the same references as the webhook's, so whichever arrives
    second is a duplicate.
    """
    sale = locks.lock_sale(session, sale_id)
    if sale is None or sale.merchant_id != merchant_id:
        raise NotFound("sale")
    if sale.payment_intent_id is None:
        return sale
    previous_last4 = sale.card_last4
    merchant = session.get_one(Merchant, sale.merchant_id)
    status = payments.provider().retrieve_payment_intent(
        sale.payment_intent_id, currency=sale.currency, connected_account=merchant.stripe_account
    )
    kind = _INTENT_EVENTS.get(status.status)
    if kind is EventKind.PAYMENT_SUCCEEDED:
        record_event(
            session,
            sale,
            kind=kind,
            source="stripe",
            source_ref=status.latest_charge or status.id,
            amount=status.amount_received,
            occurred_at=utcnow(),
        )
    elif kind is EventKind.PAYMENT_AUTHORIZED:
        record_event(
            session,
            sale,
            kind=kind,
            source="stripe",
            source_ref=status.id,
            amount=status.amount_capturable,
            occurred_at=utcnow(),
        )
    elif kind is EventKind.PAYMENT_CANCELED:
        record_event(
            session, sale, kind=kind, source="stripe", source_ref=status.id, occurred_at=utcnow()
        )
    from commerce.reconciliation import engine as reconciliation

    reconciliation.sales_changed(session, {sale.id: previous_last4})
    return sale


def unsettled_sales(
    session: Session, *, older_than: datetime, limit: int = 200
) -> list[tuple[str, str]]:
    """(merchant id, sale id) of sales still waiting for their payment outcome."""
    rows = session.execute(
        select(Sale.merchant_id, Sale.id)
        .where(
            Sale.state.in_([SaleState.PENDING_PAYMENT.value, SaleState.AUTHORIZED.value]),
            Sale.payment_intent_id.is_not(None),
            Sale.updated_at < older_than,
        )
        .order_by(Sale.updated_at)
        .limit(limit)
    )
    return [(r.merchant_id, r.id) for r in rows]
