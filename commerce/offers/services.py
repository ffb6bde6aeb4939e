"""Posting offers and recording touchpoints."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import money
from commerce.chat.services import get_conversation
from commerce.db import utcnow
from commerce.errors import InvalidInput, NotFound
from commerce.ids import new_id
from commerce.offers.models import TOUCHPOINT_KINDS, Offer, Touchpoint

#: A touchpoint may be reported this far ahead of our clock (clock skew), and no further.
_FUTURE_SKEW = timedelta(minutes=5)


def post_offer(
    session: Session,
    *,
    merchant_id: str,
    conversation_id: str,
    title: str,
    amount: int,
    currency: str,
    quantity: int = 1,
    expires_at: datetime | None = None,
    click_window_seconds: int | None = None,
    view_window_seconds: int | None = None,
    return_period_days: int | None = None,
) -> Offer:
    conversation = get_conversation(
        session, merchant_id=merchant_id, conversation_id=conversation_id
    )
    code = money.currency(currency).code
    money.validate_amount(amount, code)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput({"expires_at": ["Must be in the future."]})
    offer = Offer(
        id=new_id("offer"),
        merchant_id=merchant_id,
        conversation_id=conversation.id,
        title=title,
        amount=amount,
        currency=code,
        quantity=quantity,
        expires_at=expires_at,
        click_window_seconds=click_window_seconds,
        view_window_seconds=view_window_seconds,
        return_period_days=return_period_days,
    )
    session.add(offer)
    session.flush()
    return offer


def get_offer(session: Session, *, merchant_id: str, offer_id: str) -> Offer:
    offer = session.get(Offer, offer_id)
    if offer is None or offer.merchant_id != merchant_id:
        raise NotFound("offer")
    return offer


def record_touchpoint(
    session: Session,
    *,
    merchant_id: str,
    offer_id: str,
    kind: str,
    occurred_at: datetime | None = None,
    external_id: str | None = None,
    source: str = "api",
) -> tuple[Touchpoint, bool]:
    """Record an interaction; with an `external_id`, a repeat returns the first record."""
    offer = get_offer(session, merchant_id=merchant_id, offer_id=offer_id)
    if kind not in TOUCHPOINT_KINDS:
        raise InvalidInput({"kind": [f"Must be one of {', '.join(TOUCHPOINT_KINDS)}."]})
    now = utcnow()
    occurred_at = occurred_at or now
    if occurred_at > now + _FUTURE_SKEW:
        raise InvalidInput({"occurred_at": ["Must not be in the future."]})
    new = new_id("touchpoint")
    values = {
        "id": new,
        "merchant_id": merchant_id,
        "offer_id": offer.id,
        "conversation_id": offer.conversation_id,
        "kind": kind,
        "occurred_at": occurred_at,
        "source": source,
        "external_id": external_id,
    }
    if external_id is None:
        touchpoint = Touchpoint(**values)
        session.add(touchpoint)
        session.flush()
        _attribute(session, touchpoint)
        return touchpoint, True
    session.execute(
        insert(Touchpoint)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[Touchpoint.offer_id, Touchpoint.external_id])
    )
    touchpoint = session.scalars(
        select(Touchpoint).where(
            Touchpoint.offer_id == offer.id, Touchpoint.external_id == external_id
        )
    ).one()
    if touchpoint.id == new:
        _attribute(session, touchpoint)
    return touchpoint, touchpoint.id == new


def _attribute(session: Session, touchpoint: Touchpoint) -> None:
    """A click or a view may be what led to a purchase the customer made outside the chat:
    attribute the purchases of the cardholders behind this conversation again."""
    from commerce.attribution import engine
    from commerce.attribution.models import CLICK_KINDS, VIEW_KINDS

    if touchpoint.kind in CLICK_KINDS + VIEW_KINDS:
        engine.conversation_changed(session, touchpoint.conversation_id)
