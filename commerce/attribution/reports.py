"""Off-platform attributions as the reports read them (commerce/reports/attribution.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.attribution.models import DEFAULT_MODEL, Attribution
from commerce.reports.attribution import AttributedPurchase, register_off_platform


def attributed_purchases(
    session: Session, merchant_id: str, start: datetime, end: datetime, model: str = DEFAULT_MODEL
) -> Iterator[AttributedPurchase]:
    """The merchant's credits under `model` for purchases in [start, end), net of refunds in
    the return period; credits taken back count nothing."""
    rows = session.execute(
        select(
            Attribution.offer_id,
            Attribution.conversation_id,
            Attribution.currency,
            Attribution.window,
            Attribution.amount - Attribution.refunded,
            Attribution.cardholder,
        ).where(
            Attribution.merchant_id == merchant_id,
            Attribution.model == model,
            Attribution.status == "active",
            Attribution.purchased_at >= start,
            Attribution.purchased_at < end,
        )
    )
    for offer_id, conversation_id, currency, window, amount, cardholder in rows:
        yield AttributedPurchase(offer_id, conversation_id, currency, window, amount, cardholder)


def register() -> None:
    register_off_platform(attributed_purchases)
