"""Deleting partner data when the ground for keeping it is gone, with a receipt each time.

Grounds end when a consent is revoked or expires, when an agreement ends or is
terminated, and when data outlives the agreement's retention. The read path
(commerce/partnerdata.py) stops using such data at once; this module deletes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, false, func, not_, select
from sqlalchemy.orm import Session

from commerce.audit.services import record
from commerce.cards.models import CardTransaction
from commerce.consent.models import BalanceSnapshot, Consent, DeletionReceipt
from commerce.db import utcnow
from commerce.ids import new_id
from commerce.partnerdata import agreement_covers, lock_merchants
from commerce.partners.models import Agreement

_TABLES: tuple[type[CardTransaction] | type[BalanceSnapshot], ...] = (
    CardTransaction,
    BalanceSnapshot,
)


def _delete(
    session: Session,
    where: dict[type, ColumnElement[bool]],
    *,
    reason: str,
    partner_id: str | None,
    customer_ref: str | None,
) -> DeletionReceipt | None:
    counts: dict[str, int] = {}
    for model in _TABLES:
        if model is CardTransaction:
            deleted = _delete_card_transactions(session, where[model])
        else:
            deleted = session.execute(delete(model).where(where[model])).rowcount
        if deleted:
            counts[model.__tablename__] = deleted
    if not counts:
        return None
    receipt = DeletionReceipt(
        id=new_id("deletion_receipt"),
        reason=reason,
        partner_id=partner_id,
        customer_ref=customer_ref,
        counts=counts,
    )
    session.add(receipt)
    record(
        session,
        actor="system:privacy",
        action="partner_data.delete",
        subject_type="deletion_receipt",
        subject_id=receipt.id,
        detail={"reason": reason, "counts": counts},
    )
    session.flush()
    return receipt


def _delete_card_transactions(session: Session, where: ColumnElement[bool]) -> int:
    """Delete the card transactions `where` selects, each once the reconciliations writing
    about its merchant have committed (`partnerdata.lock_merchants`); their triggers then
    delete the matches and exceptions that name them.

    The merchants are those of the rows found. A row that arrives meanwhile at another
    merchant is found by the next look and deleted under that merchant's lock in turn."""
    held: set[str] = set()
    deleted = 0
    while True:
        merchants = set(
            session.scalars(select(CardTransaction.merchant_id).where(where).distinct())
        )
        if not merchants:
            return deleted
        new = {m for m in merchants if m is not None} - held
        lock_merchants(session, new, shared=False)
        held |= new
        deleted += session.execute(
            delete(CardTransaction).where(
                where,
                CardTransaction.merchant_id.is_(None) | CardTransaction.merchant_id.in_(held),
            )
        ).rowcount


def delete_partner_data(
    session: Session, *, partner_id: str, customer_ref: str | None, reason: str
) -> DeletionReceipt | None:
    """Everything this partner shared (about one cardholder, when `customer_ref` is given)."""
    where = {}
    for model in _TABLES:
        condition = model.partner_id == partner_id
        if customer_ref is not None:
            condition = and_(condition, model.customer_ref == customer_ref)
        where[model] = condition
    return _delete(session, where, reason=reason, partner_id=partner_id, customer_ref=customer_ref)


def sweep(session: Session, *, now: datetime | None = None) -> list[DeletionReceipt]:
    """Delete what consents, agreements and retention no longer cover."""
    now = now or utcnow()
    receipts: list[DeletionReceipt] = []

    # Consents that expired or were revoked (revocations are also handled when they arrive).
    ended = session.execute(
        select(Consent.partner_id, Consent.customer_ref, Consent.status).where(
            (Consent.status == "revoked") | (Consent.expires_at <= now)
        )
    ).all()
    for partner_id, customer_ref, status in ended:
        receipt = delete_partner_data(
            session,
            partner_id=partner_id,
            customer_ref=customer_ref,
            reason="consent_revoked" if status == "revoked" else "consent_expired",
        )
        if receipt:
            receipts.append(receipt)

    # Partners with data but no agreement in force for its scope any more.
    for model, scope in ((CardTransaction, "transactions"), (BalanceSnapshot, "balances")):
        partners = session.scalars(
            select(model.partner_id)
            .where(not_(agreement_covers(model.partner_id, scope=scope, purpose=None, at=now)))
            .distinct()
        ).all()
        for partner_id in partners:
            where = {m: m.partner_id == partner_id if m is model else false() for m in _TABLES}
            receipt = _delete(
                session,
                where,
                reason="agreement_ended",
                partner_id=partner_id,
                customer_ref=None,
            )
            if receipt:
                receipts.append(receipt)

    # Data older than the longest retention among the partner's agreements in force.
    retention = (
        select(Agreement.partner_id, func.max(Agreement.retention_days).label("days"))
        .where(Agreement.status == "active")
        .group_by(Agreement.partner_id)
        .subquery()
    )
    for partner_id, days in session.execute(select(retention.c.partner_id, retention.c.days)):
        cutoff = now - timedelta(days=days)
        where = {m: and_(m.partner_id == partner_id, m.created_at < cutoff) for m in _TABLES}
        receipt = _delete(
            session, where, reason="retention", partner_id=partner_id, customer_ref=None
        )
        if receipt:
            receipts.append(receipt)
    return receipts
