"""Sales, their append-only event history, and the refunds requested through chatledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from commerce.cards.models import MerchantCardAlias
from commerce.db import Base, utcnow


class Sale(Base):
    """A purchase initiated in chat: an accepted offer.

    The state and amount columns are a cache of `states.fold` over the sale's
    events, rewritten in the same transaction as every new event; they exist so
    lists and reports need not replay histories.
    """

    __tablename__ = "sales"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_captured", name="refund_bounded"
        ),
        Index("ix_sales_merchant_id_created_at", "merchant_id", "created_at", "id"),
        # Reconciliation compares a merchant's sales and card transactions card by card.
        Index("ix_sales_merchant_id_card_last4", "merchant_id", "card_last4"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    #: One sale per offer: accepting an offer twice returns the same sale.
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.id"), unique=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    #: Price at checkout, in minor units of `currency`.
    amount: Mapped[int]
    #: ISO 4217 code.
    currency: Mapped[str] = mapped_column(String(3))
    quantity: Mapped[int] = mapped_column(Integer)
    #: Derived from the events by the state machine in states.py; never set by hand.
    state: Mapped[str] = mapped_column(String(24), index=True)
    #: Captured by the payment provider, in minor units.
    amount_captured: Mapped[int] = mapped_column(default=0)
    #: Refunded, summed over distinct succeeded refunds; never the provider's running total.
    amount_refunded: Mapped[int] = mapped_column(default=0)
    #: Under dispute or lost to one, in minor units.
    amount_disputed: Mapped[int] = mapped_column(default=0)
    payment_provider: Mapped[str] = mapped_column(String(16), default="stripe")
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: What the chat needs to collect payment; not a card secret, but never logged.
    client_secret: Mapped[str | None] = mapped_column(String(255))
    #: The card that paid, as chatledger knows it (never its number), from the charge.
    card_ref_id: Mapped[str | None] = mapped_column(ForeignKey("card_refs.id"), index=True)
    card_brand: Mapped[str | None] = mapped_column(String(20))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    events: Mapped[list[SaleEvent]] = relationship(order_by="SaleEvent.recorded_at", viewonly=True)
    refunds: Mapped[list[Refund]] = relationship(order_by="Refund.created_at", viewonly=True)
    #: The merchant's own alias for the card that paid (never shared with other merchants).
    card_alias_row: Mapped[MerchantCardAlias | None] = relationship(
        primaryjoin="and_(Sale.merchant_id == foreign(MerchantCardAlias.merchant_id), "
        "Sale.card_ref_id == foreign(MerchantCardAlias.card_ref_id))",
        viewonly=True,
        uselist=False,
    )

    @property
    def card_alias(self) -> str | None:
        return self.card_alias_row.alias if self.card_alias_row is not None else None


class SaleEvent(Base):
    """One fact about a sale's money, from one source. Rows are never updated or deleted
    (a trigger in the migrations refuses it)."""

    __tablename__ = "sale_events"
    __table_args__ = (
        # The same fact delivered twice is stored once.
        UniqueConstraint("sale_id", "kind", "source_ref"),
        Index("ix_sale_events_sale_id_recorded_at", "sale_id", "recorded_at"),
        # Payout lines and reconciliation find a sale by the provider's charge or refund id.
        Index("ix_sale_events_kind_source_ref", "kind", "source_ref"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sale_id: Mapped[str] = mapped_column(ForeignKey("sales.id", ondelete="CASCADE"))
    #: One of states.EventKind.
    kind: Mapped[str] = mapped_column(String(32))
    #: Who said so: `api` (the merchant through chatledger), `stripe`, `system`.
    source: Mapped[str] = mapped_column(String(16))
    #: The source's id for the thing (PaymentIntent, charge, refund or dispute id).
    source_ref: Mapped[str] = mapped_column(String(128))
    #: Minor units of the sale's currency, where the event carries an amount.
    amount: Mapped[int | None]
    #: When it happened at the source.
    occurred_at: Mapped[datetime]
    #: When chatledger learned it.
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: What the state machine said when it arrived (applied, stale, invalid, duplicate).
    outcome_on_arrival: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class Refund(Base):
    """A refund requested through chatledger, and what the provider made of it."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('requested', 'pending', 'succeeded', 'failed', 'canceled')",
            name="status_known",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sale_id: Mapped[str] = mapped_column(ForeignKey("sales.id", ondelete="CASCADE"), index=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    #: Minor units of `currency`.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(32))
    #: requested (not yet accepted by the provider) -> pending | succeeded | failed | canceled.
    status: Mapped[str] = mapped_column(String(16), default="requested")
    provider_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(String(255))
    #: Submissions to the provider so far (the idempotency key makes repeats safe).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
