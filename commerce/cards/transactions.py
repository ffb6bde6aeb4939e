"""Recording what partners say happened on cards, once per (partner, kind, transaction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import money
from commerce.cards.models import TRANSACTION_KINDS, CardAlias, CardTransaction
from commerce.cards.services import card_ref_for
from commerce.errors import InvalidInput
from commerce.ids import new_id
from commerce.merchants.models import MerchantMid


def _card_ref(session: Session, partner_id: str, card: Mapping[str, Any]) -> str | None:
    """The card's reference from its strongest alias: the network's PAR, then the keyed hash
    of a number the partner should not have sent, then the partner's own token."""
    brand, last4 = card.get("brand"), card.get("last4")
    if card.get("par"):
        return card_ref_for(
            session, kind="par", value=str(card["par"]), brand=brand, last4=last4
        ).id
    if card.get("pan_hash"):
        return pan_hash_ref(session, card, brand=brand, last4=last4)
    if card.get("token"):
        return card_ref_for(
            session,
            kind="partner_token",
            scope=partner_id,
            value=str(card["token"]),
            brand=brand,
            last4=last4,
        ).id
    return None


def pan_hash_ref(
    session: Session, card: Mapping[str, Any], *, brand: str | None, last4: str | None
) -> str:
    """The card a keyed hash names: found by the current hash, or by the hash under any
    rotation chain (stored hashes re-keyed by `chatledger keys rotate`); the current hash
    is then added as an alias of the same card, so the link survives the rotation."""
    candidates = [str(card["pan_hash"])] + [
        str(item.get("hash")) for item in card.get("pan_hash_rotated") or [] if item.get("hash")
    ]
    found = session.scalar(
        select(CardAlias.card_ref_id).where(
            CardAlias.kind == "pan_hash", CardAlias.scope == "", CardAlias.value.in_(candidates)
        )
    )
    if found is None:
        return card_ref_for(
            session,
            kind="pan_hash",
            value=candidates[0],
            key_version=card.get("pan_hash_version"),
            brand=brand,
            last4=last4,
        ).id
    session.execute(
        insert(CardAlias)
        .values(
            card_ref_id=found,
            kind="pan_hash",
            scope="",
            value=candidates[0],
            key_version=card.get("pan_hash_version"),
        )
        .on_conflict_do_nothing(index_elements=[CardAlias.kind, CardAlias.scope, CardAlias.value])
    )
    return found


def record_card_transaction(
    session: Session,
    *,
    partner_id: str,
    kind: str,
    data: Mapping[str, Any],
    occurred_at: datetime,
    purposes: Sequence[str],
    inbox_event_id: str | None = None,
) -> CardTransaction:
    """Store one partner notification; a repeat returns the first record."""
    if kind not in TRANSACTION_KINDS:
        raise InvalidInput({"type": [f"Unknown transaction kind {kind!r}."]})
    transaction_id = data.get("transaction_id")
    if not transaction_id or not isinstance(transaction_id, str):
        raise InvalidInput({"data.transaction_id": ["Required."]})
    amount = data.get("amount")
    currency = money.currency(str(data.get("currency", "")), field="data.currency").code
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidInput({"data.amount": ["Must be a non-negative integer of minor units."]})
    card = data.get("card") or {}
    merchant = data.get("merchant") or {}
    mid = merchant.get("mid")
    merchant_id = (
        session.scalar(select(MerchantMid.merchant_id).where(MerchantMid.mid == mid))
        if mid
        else None
    )
    values = {
        "id": new_id("card_transaction"),
        "partner_id": partner_id,
        "kind": kind,
        "transaction_id": transaction_id[:128],
        "original_transaction_id": data.get("original_transaction_id"),
        "customer_ref": data.get("customer_ref"),
        "card_ref_id": _card_ref(session, partner_id, card),
        "card_brand": card.get("brand"),
        "card_last4": card.get("last4"),
        "mid": mid,
        "merchant_id": merchant_id,
        "merchant_name": (merchant.get("name") or None) and str(merchant["name"])[:200],
        "mcc": merchant.get("mcc"),
        "merchant_country": merchant.get("country"),
        "amount": amount,
        "currency": currency,
        "occurred_at": occurred_at,
        "auth_code": data.get("auth_code"),
        "card_present": data.get("card_present"),
        "wallet": data.get("wallet"),
        "purposes": sorted(set(purposes)),
        "inbox_event_id": inbox_event_id,
    }
    session.execute(
        insert(CardTransaction)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[
                CardTransaction.partner_id,
                CardTransaction.kind,
                CardTransaction.transaction_id,
            ]
        )
    )
    return session.scalars(
        select(CardTransaction).where(
            CardTransaction.partner_id == partner_id,
            CardTransaction.kind == kind,
            CardTransaction.transaction_id == values["transaction_id"],
        )
    ).one()
