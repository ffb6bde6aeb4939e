"""Off-platform attributions as the reports read them (commerce/reports/attribution.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from commerce.attribution.models import DEFAULT_MODEL
from commerce.reports.attribution import AttributedPurchase, register_off_platform

#: The view `attribution_credits` (migration 0013) has one branch per model: the filter on
#: the model leaves one, and the merchant and period use the attributions' index on them.
_CREDITS = text(
    """
SELECT offer_id, conversation_id, currency, "window", amount - refunded, cardholder
  FROM attribution_credits
 WHERE merchant_id = :merchant_id AND model = :model AND status = 'active'
   AND purchased_at >= :start AND purchased_at < :end
"""
)


def attributed_purchases(
    session: Session, merchant_id: str, start: datetime, end: datetime, model: str = DEFAULT_MODEL
) -> Iterator[AttributedPurchase]:
    """The merchant's credits under `model` for purchases in [start, end), net of refunds in
    the return period; credits taken back count nothing."""
    rows = session.execute(
        _CREDITS, {"merchant_id": merchant_id, "model": model, "start": start, "end": end}
    )
    for offer_id, conversation_id, currency, window, amount, cardholder in rows:
        yield AttributedPurchase(offer_id, conversation_id, currency, window, amount, cardholder)


def register() -> None:
    register_off_platform(attributed_purchases)
