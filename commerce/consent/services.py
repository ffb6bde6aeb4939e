"""Consents from partners' consent events, and balance snapshots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import money
from commerce.cards.services import link_card_aliases
from commerce.consent.models import BalanceSnapshot, Consent
from commerce.db import utcnow
from commerce.errors import InvalidInput
from commerce.ids import new_id
from commerce.partners.models import PURPOSES, SCOPES

_CARD_FIELDS = ("token", "par", "brand", "last4")


def _strings(value: Any, allowed: Sequence[str], field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput({field: ["Must be a list of strings."]})
    unknown = set(value) - set(allowed)
    if unknown:
        raise InvalidInput({field: [f"Unknown: {', '.join(sorted(unknown))}."]})
    return sorted(set(value))


def apply_consent(
    session: Session,
    *,
    partner_id: str,
    granted: bool,
    data: Mapping[str, Any],
    as_of: datetime,
) -> Consent | None:
    """Grant or revoke; an event older than the one that last changed the consent is stale."""
    customer_ref = data.get("customer_ref")
    if not isinstance(customer_ref, str) or not customer_ref:
        raise InvalidInput({"data.customer_ref": ["Required."]})
    current = session.scalars(
        select(Consent)
        .where(Consent.partner_id == partner_id, Consent.customer_ref == customer_ref)
        .with_for_update()
    ).one_or_none()
    if current is not None and current.as_of >= as_of:
        return current
    chat = data.get("chat") or {}
    values: dict[str, Any] = {"status": "granted" if granted else "revoked", "as_of": as_of}
    if granted:
        expires = data.get("expires_at")
        values.update(
            scopes=_strings(data.get("scopes"), SCOPES, "data.scopes"),
            purposes=_strings(data.get("purposes"), PURPOSES, "data.purposes"),
            expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
            chat_channel=chat.get("channel"),
            chat_user_id=chat.get("user_id"),
            cards=[
                {k: card.get(k) for k in _CARD_FIELDS if card.get(k) is not None}
                for card in data.get("cards") or []
                if isinstance(card, dict)
            ],
        )
    if current is None:
        if not granted:
            values.update(scopes=[], purposes=[])
        consent = Consent(
            id=new_id("consent"), partner_id=partner_id, customer_ref=customer_ref, **values
        )
        session.add(consent)
    else:
        consent = current
        for key, value in values.items():
            setattr(consent, key, value)
    session.flush()
    if granted:
        # The cards a consent lists are each one card, whatever each source calls it.
        for card in consent.cards:
            aliases = [("par", "", str(card["par"]))] if card.get("par") else []
            if card.get("token"):
                aliases.append(("partner_token", partner_id, str(card["token"])))
            link_card_aliases(session, aliases, brand=card.get("brand"), last4=card.get("last4"))
    if not granted:
        # The flow stops at once (the door and the read path check the consent), and what
        # was shared under it is deleted now, with a receipt.
        from commerce.consent.cascade import delete_partner_data

        delete_partner_data(
            session, partner_id=partner_id, customer_ref=customer_ref, reason="consent_revoked"
        )
    return consent


def record_balance(
    session: Session,
    *,
    partner_id: str,
    data: Mapping[str, Any],
    purposes: Sequence[str],
) -> None:
    for field in ("customer_ref", "account_ref", "as_of"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise InvalidInput({f"data.{field}": ["Required."]})
    for field in ("available", "current"):
        if isinstance(data.get(field), bool) or not isinstance(data.get(field), int):
            raise InvalidInput({f"data.{field}": ["Must be an integer of minor units."]})
    currency = money.currency(str(data.get("currency", "")), field="data.currency").code
    session.execute(
        insert(BalanceSnapshot)
        .values(
            partner_id=partner_id,
            customer_ref=data["customer_ref"],
            account_ref=data["account_ref"],
            available=data["available"],
            current=data["current"],
            currency=currency,
            as_of=datetime.fromisoformat(data["as_of"].replace("Z", "+00:00")),
            purposes=sorted(set(purposes)),
        )
        .on_conflict_do_nothing(
            index_elements=[
                BalanceSnapshot.partner_id,
                BalanceSnapshot.account_ref,
                BalanceSnapshot.as_of,
            ]
        )
    )


def consent_in_force(
    session: Session,
    *,
    partner_id: str,
    customer_ref: str,
    scope: str,
    at: datetime | None = None,
) -> Consent | None:
    """The cardholder's consent to this partner, if granted, unexpired and covering `scope`."""
    at = at or utcnow()
    consent = session.scalars(
        select(Consent).where(
            Consent.partner_id == partner_id, Consent.customer_ref == customer_ref
        )
    ).one_or_none()
    if consent is None or consent.status != "granted" or scope not in consent.scopes:
        return None
    if consent.expires_at is not None and consent.expires_at <= at:
        return None
    return consent
