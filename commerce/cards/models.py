"""Card identity without card numbers, and what partners say happened on cards."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

ALIAS_KINDS = ("stripe_fingerprint", "partner_token", "par", "pan_hash")
TRANSACTION_KINDS = ("authorized", "cleared", "reversed", "refunded", "chargeback")


class CardRef(Base):
    """chatledger's identity for one card; what sources call it lives in CardAlias."""

    __tablename__ = "card_refs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    brand: Mapped[str | None] = mapped_column(String(20))
    last4: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CardAlias(Base):
    """One source's name for a card: a Stripe fingerprint, a partner token, a PAR, or a
    keyed hash of a card number (with the version of the key that made it)."""

    __tablename__ = "card_aliases"
    __table_args__ = (
        UniqueConstraint("kind", "scope", "value"),
        CheckConstraint(
            "kind IN ('stripe_fingerprint', 'partner_token', 'par', 'pan_hash')", name="kind_known"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    card_ref_id: Mapped[str] = mapped_column(ForeignKey("card_refs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    #: Whose namespace the value is in: a partner id for tokens, a Stripe account, or ''.
    scope: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[str] = mapped_column(String(128))
    #: For `pan_hash`: the CHATLEDGER_CARD_KEYS version that made it.
    key_version: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CardTransaction(Base):
    """One partner notification about a card transaction: a fact, never updated.

    An authorization and its clearing share `transaction_id`; a reversal, refund or
    chargeback names the original in `original_transaction_id`. Each arrives once per
    (partner, kind, transaction id), however often it is delivered.
    """

    __tablename__ = "card_transactions"
    __table_args__ = (
        UniqueConstraint("partner_id", "kind", "transaction_id"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        Index("ix_card_transactions_mid_occurred_at", "mid", "occurred_at"),
        Index("ix_card_transactions_partner_id_transaction_id", "partner_id", "transaction_id"),
        Index("ix_card_transactions_merchant_id_card_last4", "merchant_id", "card_last4"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    #: One of TRANSACTION_KINDS.
    kind: Mapped[str] = mapped_column(String(16))
    transaction_id: Mapped[str] = mapped_column(String(128))
    original_transaction_id: Mapped[str | None] = mapped_column(String(128))
    customer_ref: Mapped[str | None] = mapped_column(String(128), index=True)
    card_ref_id: Mapped[str | None] = mapped_column(ForeignKey("card_refs.id"), index=True)
    card_brand: Mapped[str | None] = mapped_column(String(20))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    #: The card-acceptor id of the store, and the merchant it belongs to if it is one of ours.
    mid: Mapped[str | None] = mapped_column(String(15))
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.id"), index=True)
    merchant_name: Mapped[str | None] = mapped_column(String(200))
    mcc: Mapped[str | None] = mapped_column(String(4))
    merchant_country: Mapped[str | None] = mapped_column(String(2))
    #: Minor units of `currency` (ISO 4217).
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    occurred_at: Mapped[datetime]
    auth_code: Mapped[str | None] = mapped_column(String(16))
    card_present: Mapped[bool | None] = mapped_column(Boolean)
    wallet: Mapped[str | None] = mapped_column(String(32))
    #: Purposes this fact may be used for, from the agreement in force when it arrived.
    purposes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    inbox_event_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MerchantCardAlias(Base):
    """The name one merchant sees for one card: random, so two merchants' aliases for the
    same card cannot be matched with each other, and stable, so a merchant's repeat
    customers are recognisable to that merchant."""

    __tablename__ = "merchant_card_aliases"
    __table_args__ = (UniqueConstraint("merchant_id", "card_ref_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    card_ref_id: Mapped[str] = mapped_column(ForeignKey("card_refs.id"), index=True)
    #: `card_...`: what the merchant is shown.
    alias: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
