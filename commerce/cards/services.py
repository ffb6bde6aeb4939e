"""Card references: one identity per card, found through any of its aliases."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce.cards.models import CardAlias, CardRef, MerchantCardAlias
from commerce.ids import new_id


def card_ref_for(
    session: Session,
    *,
    kind: str,
    value: str,
    scope: str = "",
    brand: str | None = None,
    last4: str | None = None,
    key_version: str | None = None,
) -> CardRef:
    """The card known by this alias, created on first sight.

    Two deliveries naming a new card at once create one reference: the alias row is
    inserted with ON CONFLICT DO NOTHING and whichever reference won is read back.
    """
    existing = session.scalars(
        select(CardRef)
        .join(CardAlias, CardAlias.card_ref_id == CardRef.id)
        .where(CardAlias.kind == kind, CardAlias.scope == scope, CardAlias.value == value)
    ).one_or_none()
    if existing is not None:
        return existing
    ref = CardRef(id=new_id("card_ref"), brand=brand, last4=last4)
    session.add(ref)
    session.flush()
    session.execute(
        insert(CardAlias)
        .values(card_ref_id=ref.id, kind=kind, scope=scope, value=value, key_version=key_version)
        .on_conflict_do_nothing(index_elements=[CardAlias.kind, CardAlias.scope, CardAlias.value])
    )
    winner = session.scalars(
        select(CardRef)
        .join(CardAlias, CardAlias.card_ref_id == CardRef.id)
        .where(CardAlias.kind == kind, CardAlias.scope == scope, CardAlias.value == value)
    ).one()
    if winner.id != ref.id:
        session.delete(ref)
        session.flush()
    return winner


def merchant_alias(session: Session, *, merchant_id: str, card_ref_id: str) -> str:
    """The merchant's own name for a card, made on first sight (random, so two merchants'
    names for one card share nothing)."""
    session.execute(
        insert(MerchantCardAlias)
        .values(merchant_id=merchant_id, card_ref_id=card_ref_id, alias=new_id("card_alias"))
        .on_conflict_do_nothing(
            index_elements=[MerchantCardAlias.merchant_id, MerchantCardAlias.card_ref_id]
        )
    )
    return session.scalars(
        select(MerchantCardAlias.alias).where(
            MerchantCardAlias.merchant_id == merchant_id,
            MerchantCardAlias.card_ref_id == card_ref_id,
        )
    ).one()


def link_card_aliases(
    session: Session,
    aliases: list[tuple[str, str, str]],
    *,
    brand: str | None = None,
    last4: str | None = None,
) -> str | None:
    """Record that these (kind, scope, value) aliases name one card, as a consent listing a
    card's token and PAR proves: the card reference of the first known alias gains the
    others. Aliases already known under another reference keep theirs (merging two
    references is reconciliation's to prove). Returns the card reference id."""
    if not aliases:
        return None
    ref_id = None
    for kind, scope, value in aliases:
        ref_id = session.scalar(
            select(CardAlias.card_ref_id).where(
                CardAlias.kind == kind, CardAlias.scope == scope, CardAlias.value == value
            )
        )
        if ref_id is not None:
            break
    if ref_id is None:
        kind, scope, value = aliases[0]
        ref_id = card_ref_for(
            session, kind=kind, scope=scope, value=value, brand=brand, last4=last4
        ).id
    for kind, scope, value in aliases:
        session.execute(
            insert(CardAlias)
            .values(card_ref_id=ref_id, kind=kind, scope=scope, value=value)
            .on_conflict_do_nothing(
                index_elements=[CardAlias.kind, CardAlias.scope, CardAlias.value]
            )
        )
    return ref_id
