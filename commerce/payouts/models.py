"""Stripe payouts, kept for reconciliation against their balance transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow


class Payout(Base):
    __tablename__ = "payouts"

    #: Stripe's payout id (`po_...`).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stripe_account: Mapped[str | None] = mapped_column(String(64))
    #: The merchant whose connected account was paid out, when it is one of ours.
    merchant_id: Mapped[str | None] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), index=True
    )
    #: When its balance transactions were listed and tied to sales (None: not yet).
    lines_fetched_at: Mapped[datetime | None]
    #: Minor units of `currency`; the net paid to the bank account.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    arrival_date: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
