"""Row locks, in one place and one order: offer, then sale, then refund.

Every path that changes a sale's money takes its locks through these functions,
in that order, so two paths can never wait on each other in opposite orders.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.offers.models import Offer
from commerce.sales.models import Refund, Sale


def lock_offer(session: Session, offer_id: str, merchant_id: str) -> Offer | None:
    return session.scalars(
        select(Offer)
        .where(Offer.id == offer_id, Offer.merchant_id == merchant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def lock_sale(session: Session, sale_id: str) -> Sale | None:
    return session.scalars(
        select(Sale)
        .where(Sale.id == sale_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def lock_refund(session: Session, refund_id: str) -> Refund | None:
    return session.scalars(
        select(Refund)
        .where(Refund.id == refund_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
