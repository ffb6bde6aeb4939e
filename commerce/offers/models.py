"""Offers a merchant posts in a conversation, and the touchpoints people have with them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

TOUCHPOINT_KINDS = ("delivered", "viewed", "clicked", "accepted", "declined")


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index("ix_offers_merchant_id_created_at", "merchant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    #: Total price for `quantity`, in minor units of `currency`.
    amount: Mapped[int]
    #: ISO 4217 code.
    currency: Mapped[str] = mapped_column(String(3))
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    #: After this the offer can no longer be checked out; None: it does not expire.
    expires_at: Mapped[datetime | None]
    #: Attribution window after a click, in seconds; None: the merchant's default.
    click_window_seconds: Mapped[int | None] = mapped_column(Integer)
    #: Attribution window after a view, in seconds; None: the merchant's default.
    view_window_seconds: Mapped[int | None] = mapped_column(Integer)
    #: Days after purchase in which a refund takes the attribution back.
    return_period_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Touchpoint(Base):
    """An interaction with an offer, at the time it happened (not when it was reported)."""

    __tablename__ = "touchpoints"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('delivered', 'viewed', 'clicked', 'accepted', 'declined')", name="kind_known"
        ),
        # A touchpoint the sender names (a chat message id) is recorded once, however often sent.
        UniqueConstraint("offer_id", "external_id"),
        Index("ix_touchpoints_offer_id_occurred_at", "offer_id", "occurred_at"),
        Index("ix_touchpoints_merchant_id_occurred_at", "merchant_id", "occurred_at"),
        # Attribution reads a customer's touchpoints conversation by conversation.
        Index("ix_touchpoints_conversation_id_occurred_at", "conversation_id", "occurred_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    #: Who reported it: `api` (the merchant) or `chat` (the chat platform's webhook).
    source: Mapped[str] = mapped_column(String(16), default="api")
    external_id: Mapped[str | None] = mapped_column(String(128))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
