"""A cardholder's rights over their data: export everything held, or erase it.

Erasure keeps the merchants' sales (they are the merchants' accounting) but cuts the
link to the person: the customer's channel id and thread ids are replaced, message ids
are dropped, partner data and consents are deleted with a receipt.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from commerce import partnerdata
from commerce.audit.services import record
from commerce.cards.models import CardTransaction
from commerce.chat.models import Conversation, Customer
from commerce.consent.cascade import delete_partner_data
from commerce.consent.models import BalanceSnapshot, Consent, DeletionReceipt
from commerce.db import utcnow
from commerce.errors import NotFound
from commerce.ids import new_id
from commerce.offers.models import Touchpoint
from commerce.sales.models import Sale


def _customer(session: Session, customer_id: str) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None or customer.erased_at is not None:
        raise NotFound("customer")
    return customer


def _consents(session: Session, customer: Customer) -> list[Consent]:
    return list(
        session.scalars(
            select(Consent).where(
                Consent.chat_channel == customer.channel,
                Consent.chat_user_id == customer.channel_user_id,
            )
        )
    )


def _row(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in fields:
        value = getattr(obj, name)
        out[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


def export(session: Session, *, customer_id: str, actor: str) -> dict[str, Any]:
    """Everything chatledger holds about this person, as plain JSON-ready data."""
    customer = _customer(session, customer_id)
    conversations = list(
        session.scalars(select(Conversation).where(Conversation.customer_id == customer.id))
    )
    conversation_ids = [c.id for c in conversations]
    touchpoints = list(
        session.scalars(select(Touchpoint).where(Touchpoint.conversation_id.in_(conversation_ids)))
    )
    sales = list(session.scalars(select(Sale).where(Sale.customer_id == customer.id)))
    consents = _consents(session, customer)
    partner_rows: dict[str, list[dict[str, Any]]] = {"card_transactions": [], "balances": []}
    for consent in consents:
        mine = (consent.partner_id, consent.customer_ref)
        for row in partnerdata.read(
            session,
            CardTransaction,
            purpose=partnerdata.DATA_RIGHTS,
            actor=actor,
            where=[CardTransaction.partner_id == mine[0], CardTransaction.customer_ref == mine[1]],
        ):
            partner_rows["card_transactions"].append(
                _row(
                    row,
                    (
                        "id",
                        "partner_id",
                        "kind",
                        "transaction_id",
                        "card_brand",
                        "card_last4",
                        "merchant_name",
                        "mcc",
                        "merchant_country",
                        "amount",
                        "currency",
                        "occurred_at",
                    ),
                )
            )
        for row in partnerdata.read(
            session,
            BalanceSnapshot,
            purpose=partnerdata.DATA_RIGHTS,
            actor=actor,
            where=[BalanceSnapshot.partner_id == mine[0], BalanceSnapshot.customer_ref == mine[1]],
        ):
            partner_rows["balances"].append(
                _row(
                    row,
                    (
                        "partner_id",
                        "account_ref",
                        "available",
                        "current",
                        "currency",
                        "as_of",
                    ),
                )
            )
    record(
        session,
        actor=actor,
        action="customer.export",
        subject_type="customer",
        subject_id=customer.id,
    )
    return {
        "customer": _row(customer, ("id", "channel", "channel_user_id", "created_at")),
        "conversations": [
            _row(c, ("id", "merchant_id", "channel", "thread_id", "created_at"))
            for c in conversations
        ],
        "touchpoints": [
            _row(t, ("id", "offer_id", "conversation_id", "kind", "occurred_at", "source"))
            for t in touchpoints
        ],
        "sales": [
            _row(
                s,
                (
                    "id",
                    "merchant_id",
                    "offer_id",
                    "amount",
                    "currency",
                    "state",
                    "card_brand",
                    "card_last4",
                    "created_at",
                ),
            )
            for s in sales
        ],
        "consents": [
            _row(
                c,
                (
                    "partner_id",
                    "customer_ref",
                    "status",
                    "scopes",
                    "purposes",
                    "expires_at",
                    "as_of",
                    "cards",
                ),
            )
            for c in consents
        ],
        **partner_rows,
    }


def erase(session: Session, *, customer_id: str, actor: str) -> tuple[DeletionReceipt, str, str]:
    """Erase the person; their merchants keep the sales, no longer linked to anyone.

    Returns the receipt and the (channel, channel user id) the person had, for the caller
    to erase what other parts hold under that id (the webhook inbox's chat events).
    """
    customer = _customer(session, customer_id)
    channel_user_id = customer.channel_user_id
    counts: dict[str, int] = {}
    for consent in _consents(session, customer):
        receipt = delete_partner_data(
            session,
            partner_id=consent.partner_id,
            customer_ref=consent.customer_ref,
            reason="erasure",
        )
        for table, count in (receipt.counts if receipt else {}).items():
            counts[table] = counts.get(table, 0) + count
        session.delete(consent)
        counts["consents"] = counts.get("consents", 0) + 1
    conversations = list(
        session.scalars(select(Conversation).where(Conversation.customer_id == customer.id))
    )
    for conversation in conversations:
        conversation.thread_id = f"erased:{conversation.id}"
    counts["conversations"] = len(conversations)
    counts["touchpoints"] = session.execute(
        update(Touchpoint)
        .where(Touchpoint.conversation_id.in_([c.id for c in conversations]))
        .values(external_id=None)
    ).rowcount
    customer.channel_user_id = f"erased:{customer.id}"
    customer.erased_at = utcnow()
    receipt = DeletionReceipt(
        id=new_id("deletion_receipt"), reason="erasure", customer_ref=customer.id, counts=counts
    )
    session.add(receipt)
    record(
        session,
        actor=actor,
        action="customer.erase",
        subject_type="customer",
        subject_id=customer.id,
        detail={"receipt": receipt.id},
    )
    session.flush()
    return receipt, customer.channel, channel_user_id
