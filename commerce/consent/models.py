"""Cardholders' consents, and the balance snapshots partners push under them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow


class Consent(Base):
    """One cardholder's grant to one partner. The latest partner event about it wins."""

    __tablename__ = "consents"
    __table_args__ = (
        UniqueConstraint("partner_id", "customer_ref"),
        CheckConstraint("status IN ('granted', 'revoked')", name="status_known"),
        # Attribution finds the cardholders behind a chat user.
        Index("ix_consents_chat_channel_chat_user_id", "chat_channel", "chat_user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    #: The partner's id for the cardholder.
    customer_ref: Mapped[str] = mapped_column(String(128))
    #: The chat identity the consent belongs to (channel and the channel's user id).
    chat_channel: Mapped[str | None] = mapped_column(String(20))
    chat_user_id: Mapped[str | None] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    purposes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    #: Cards covered: token, PAR, brand and last four; never a card number.
    cards: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    #: Time of the partner event that last changed this row: an older one is stale.
    as_of: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BalanceSnapshot(Base):
    """An account balance as a partner reported it at `as_of`."""

    __tablename__ = "balance_snapshots"
    __table_args__ = (UniqueConstraint("partner_id", "account_ref", "as_of"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    customer_ref: Mapped[str] = mapped_column(String(128), index=True)
    account_ref: Mapped[str] = mapped_column(String(128))
    #: Minor units of `currency`; may be negative (an overdrawn account).
    available: Mapped[int]
    current: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    as_of: Mapped[datetime]
    purposes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeletionReceipt(Base):
    """What partner data was deleted, how much, when and why: the proof for the cardholder,
    the partner and the auditor. Holds counts and references, never the data."""

    __tablename__ = "deletion_receipts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: consent_revoked | consent_expired | agreement_ended | retention | erasure
    reason: Mapped[str] = mapped_column(String(32))
    partner_id: Mapped[str | None] = mapped_column(String(32), index=True)
    customer_ref: Mapped[str | None] = mapped_column(String(128))
    #: Table name -> rows deleted.
    counts: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict)
