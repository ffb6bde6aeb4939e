"""Fraud alerts: one per suspicious card transaction, with its sending and its answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

ALERT_STATES = ("pending", "sent", "failed", "answered")
ANSWERS = ("me", "not_me")


class FraudAlert(Base):
    """A card transaction the rules found suspicious, told to the cardholder in chat.

    The row holds no card data of its own: the message is composed from the transaction,
    read through the partner-data path when it is sent. Deleting the transaction (consent
    revoked, agreement ended, retention) deletes the alert with it.
    """

    __tablename__ = "fraud_alerts"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'sent', 'failed', 'answered')", name="state_known"),
        CheckConstraint("answer IS NULL OR answer IN ('me', 'not_me')", name="answer_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: One alert per transaction, however often its event is delivered.
    card_transaction_id: Mapped[str] = mapped_column(
        ForeignKey("card_transactions.id", ondelete="CASCADE"), unique=True
    )
    #: The cardholder, as the partner knows them: their consent names the chat to send to.
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    customer_ref: Mapped[str] = mapped_column(String(128), index=True)
    #: The rules that fired: [{"rule": "velocity", "reason": "..."}], in rule order.
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    #: pending -> sent -> answered, or failed when sending gave up.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: Sending attempts made (a missing send API is not an attempt).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Why the alert is not sent yet, or why the last attempt failed.
    last_error: Mapped[str | None] = mapped_column(String(2000))
    sent_at: Mapped[datetime | None]
    #: The chat platform's id for the message sent.
    message_id: Mapped[str | None] = mapped_column(String(256))
    #: The cardholder's answer: "me" (they made it) or "not_me".
    answer: Mapped[str | None] = mapped_column(String(8))
    #: When the cardholder answered, by the chat platform's clock.
    answered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
