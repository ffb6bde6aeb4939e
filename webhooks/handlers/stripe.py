"""Stripe events -> the sale's history.

An allowlist of event types is handled; anything else is processed as ignored.
Amounts come from the object, per refund and per dispute: the charge's cumulative
`amount_refunded` is never used. Facts carry the same references whichever path
brought them (webhook, the sync endpoint, the backfill), so a repeat is a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import locks
from commerce.cards.services import card_ref_for, merchant_alias
from commerce.payments.stripe import from_stripe_amount
from commerce.payouts.models import Payout
from commerce.reconciliation import engine as reconciliation
from commerce.sales.models import Refund, Sale
from commerce.sales.services import apply_refund_result, record_event
from commerce.sales.states import EventKind
from webhooks.inbox import Ignored, Waiting, handles
from webhooks.models import InboxEvent

Obj = dict[str, Any]
#: session.info key: sales this event touched -> their card's last four before it.
_TOUCHED = "reconciliation.touched_sales"


def _when(event: Obj) -> datetime:
    return datetime.fromtimestamp(int(event["created"]), UTC)


def _created(obj: Obj, event: Obj) -> datetime:
    """When the object itself came to be at Stripe (a refund, a dispute): the same whichever
    of its events arrives first; the event's time if the object does not say."""
    created = obj.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC)
    return _when(event)


def _id(value: Any) -> str | None:
    """Stripe fields hold an id, or the object itself when expanded."""
    if isinstance(value, dict):
        return value.get("id")
    return value


def _sale_for_intent(session: Session, intent_id: str | None, obj: Obj) -> Sale:
    """The sale paid by this PaymentIntent, locked; waits if the checkout has not committed."""
    if not intent_id:
        raise Ignored(f"{obj.get('object')} {obj.get('id')} has no PaymentIntent")
    sale_id = session.scalar(select(Sale.id).where(Sale.payment_intent_id == intent_id))
    if sale_id is None:
        if (obj.get("metadata") or {}).get("sale_id") or obj.get("object") != "payment_intent":
            # Ours (or possibly ours): the checkout that created it may not have committed yet.
            raise Waiting(f"payment_intent:{intent_id}")
        raise Ignored(f"PaymentIntent {intent_id} was not created by chatledger")
    sale = locks.lock_sale(session, sale_id)
    assert sale is not None
    # Reconciled once the handler is done, with the card group it was in before (a charge
    # may be what first tells the card's last four digits).
    session.info.setdefault(_TOUCHED, {}).setdefault(sale.id, sale.card_last4)
    return sale


def payment_intent_succeeded(session: Session, event: Obj, intent: Obj) -> None:
    sale = _sale_for_intent(session, intent["id"], intent)
    record_event(
        session,
        sale,
        kind=EventKind.PAYMENT_SUCCEEDED,
        source="stripe",
        source_ref=_id(intent.get("latest_charge")) or intent["id"],
        amount=from_stripe_amount(int(intent.get("amount_received") or 0), sale.currency),
        occurred_at=_when(event),
    )


def payment_intent_capturable(session: Session, event: Obj, intent: Obj) -> None:
    sale = _sale_for_intent(session, intent["id"], intent)
    record_event(
        session,
        sale,
        kind=EventKind.PAYMENT_AUTHORIZED,
        source="stripe",
        source_ref=intent["id"],
        amount=from_stripe_amount(int(intent.get("amount_capturable") or 0), sale.currency),
        occurred_at=_when(event),
    )


def payment_intent_failed(session: Session, event: Obj, intent: Obj) -> None:
    sale = _sale_for_intent(session, intent["id"], intent)
    error = intent.get("last_payment_error") or {}
    # Each failed attempt is its own fact: its failed charge, or this event.
    record_event(
        session,
        sale,
        kind=EventKind.PAYMENT_FAILED,
        source="stripe",
        source_ref=_id(error.get("charge")) or event["id"],
        occurred_at=_when(event),
        data={"code": error.get("code"), "decline_code": error.get("decline_code")},
    )


def payment_intent_canceled(session: Session, event: Obj, intent: Obj) -> None:
    sale = _sale_for_intent(session, intent["id"], intent)
    record_event(
        session,
        sale,
        kind=EventKind.PAYMENT_CANCELED,
        source="stripe",
        source_ref=intent["id"],
        occurred_at=_when(event),
        data={"reason": intent.get("cancellation_reason")},
    )


def charge_succeeded(session: Session, event: Obj, charge: Obj) -> None:
    sale = _sale_for_intent(session, _id(charge.get("payment_intent")), charge)
    card = (charge.get("payment_method_details") or {}).get("card") or {}
    if card.get("fingerprint"):
        ref = card_ref_for(
            session,
            kind="stripe_fingerprint",
            scope=_id(charge.get("on_behalf_of")) or "",
            value=card["fingerprint"],
            brand=card.get("brand"),
            last4=card.get("last4"),
        )
        sale.card_ref_id = ref.id
        merchant_alias(session, merchant_id=sale.merchant_id, card_ref_id=ref.id)
    sale.card_brand = card.get("brand") or sale.card_brand
    sale.card_last4 = card.get("last4") or sale.card_last4
    if charge.get("captured") and charge.get("paid"):
        record_event(
            session,
            sale,
            kind=EventKind.PAYMENT_SUCCEEDED,
            source="stripe",
            source_ref=charge["id"],
            amount=from_stripe_amount(int(charge.get("amount_captured") or 0), sale.currency),
            occurred_at=_when(event),
        )


def _apply_refund(session: Session, event: Obj, refund: Obj) -> None:
    sale = _sale_for_intent(session, _id(refund.get("payment_intent")), refund)
    ours = session.scalars(
        select(Refund).where(Refund.provider_refund_id == refund["id"])
    ).one_or_none()
    if ours is None and (refund.get("metadata") or {}).get("refund_id"):
        ours = session.get(Refund, refund["metadata"]["refund_id"])
        if ours is not None and ours.sale_id != sale.id:
            ours = None
    if ours is not None:
        locks.lock_refund(session, ours.id)
    apply_refund_result(
        session,
        sale,
        ours,
        provider_id=refund["id"],
        status=refund.get("status") or "pending",
        amount=from_stripe_amount(int(refund["amount"]), sale.currency),
        failure_reason=refund.get("failure_reason"),
        occurred_at=_created(refund, event),
    )


def refund_event(session: Session, event: Obj, refund: Obj) -> None:
    _apply_refund(session, event, refund)


def charge_refunded(session: Session, event: Obj, charge: Obj) -> None:
    """Each refund listed on the charge, by its own id; never `amount_refunded`."""
    refunds = ((charge.get("refunds") or {}).get("data")) or []
    if not refunds:
        # Newer API versions do not embed refunds; refund.created / refund.updated carry them.
        raise Ignored("charge.refunded without embedded refunds: refund events carry them")
    for refund in refunds:
        refund = {
            **refund,
            "payment_intent": refund.get("payment_intent") or charge.get("payment_intent"),
        }
        _apply_refund(session, event, refund)


def dispute_event(session: Session, event: Obj, dispute: Obj) -> None:
    sale = _sale_for_intent(session, _id(dispute.get("payment_intent")), dispute)
    when = _when(event)
    amount = from_stripe_amount(int(dispute.get("amount") or 0), sale.currency)
    # Opening is recorded by every dispute event, so a close that arrives first still has
    # its opening, at the dispute's own creation; the second time it is a duplicate.
    record_event(
        session,
        sale,
        kind=EventKind.DISPUTE_OPENED,
        source="stripe",
        source_ref=dispute["id"],
        amount=amount,
        occurred_at=_created(dispute, event),
    )
    status = dispute.get("status")
    closing = {"won": EventKind.DISPUTE_WON, "lost": EventKind.DISPUTE_LOST}.get(status or "")
    if closing is not None:
        record_event(
            session,
            sale,
            kind=closing,
            source="stripe",
            source_ref=dispute["id"],
            amount=amount,
            occurred_at=when,
        )


def payout_paid(session: Session, event: Obj, payout: Obj) -> None:
    """Keep the payout; once it commits, its balance transactions are listed, tied to sales
    and checked against its amount (commerce/reconciliation/payouts.py). Delivered again,
    the payout is checked again: lines are stored once, a mismatch since explained resolves."""
    from commerce.db import after_commit
    from commerce.reconciliation.payouts import enqueue_fetch

    arrival = payout.get("arrival_date")
    currency = str(payout["currency"]).upper()
    values = {
        "id": payout["id"],
        "stripe_account": event.get("account"),
        "amount": from_stripe_amount(int(payout["amount"]), currency),
        "currency": currency,
        "status": payout.get("status") or "paid",
        "arrival_date": datetime.fromtimestamp(int(arrival), UTC) if arrival else None,
    }
    session.execute(
        insert(Payout)
        .values(**values)
        .on_conflict_do_update(index_elements=[Payout.id], set_={"status": values["status"]})
    )
    payout_id = values["id"]
    after_commit(session, lambda: enqueue_fetch(payout_id))


HANDLERS: dict[str, Callable[[Session, Obj, Obj], None]] = {
    "payment_intent.succeeded": payment_intent_succeeded,
    "payment_intent.amount_capturable_updated": payment_intent_capturable,
    "payment_intent.payment_failed": payment_intent_failed,
    "payment_intent.canceled": payment_intent_canceled,
    "charge.succeeded": charge_succeeded,
    "charge.refunded": charge_refunded,
    "refund.created": refund_event,
    "refund.updated": refund_event,
    "refund.failed": refund_event,
    "charge.dispute.created": dispute_event,
    "charge.dispute.updated": dispute_event,
    "charge.dispute.closed": dispute_event,
    "payout.paid": payout_paid,
}


@handles("stripe")
def handle(session: Session, row: InboxEvent) -> None:
    event = row.payload
    handler = HANDLERS.get(row.event_type)
    if handler is None:
        raise Ignored(f"{row.event_type} is not an event chatledger keeps")
    session.info.pop(_TOUCHED, None)
    handler(session, event, event["data"]["object"])
    # Continuous reconciliation and attribution, in the event's transaction.
    reconciliation.sales_changed(session, session.info.pop(_TOUCHED, {}))
