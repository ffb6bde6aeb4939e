"""The inbox: every verified event, stored (scrubbed) before its sender gets a 2xx."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

STATUSES = ("pending", "processed", "waiting", "failed", "refused", "ignored")


class InboxEvent(Base):
    """One event from one source, stored once per (source, event id).

    `pending` until a worker processes it; `waiting` when it refers to something not
    yet known (it is tried again, and woken when that thing appears); `failed` with
    its error when processing raised (retried with backoff, replayable); `refused`
    when it was verified but is not acceptable (stored so the refusal is on record);
    `ignored` when it is about nothing chatledger keeps.
    """

    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        CheckConstraint(
            "status IN ('pending', 'processed', 'waiting', 'failed', 'refused', 'ignored')",
            name="status_known",
        ),
        # The sweep's query: unfinished events whose next attempt is due.
        Index(
            "ix_inbox_events_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'waiting', 'failed')"),
        ),
        Index("ix_inbox_events_waiting_for", "waiting_for"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: `stripe`, `partner:<partner id>` or `chat:<channel>`.
    source: Mapped[str] = mapped_column(String(64))
    #: The sender's id for the event (Stripe's `evt_...`, `webhook-id`, a message id).
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(64))
    #: The event as received, with card numbers hashed or masked and secrets dropped.
    payload: Mapped[Any] = mapped_column(JSONB)
    #: The few headers worth keeping (signature timestamp, API version); never a signature.
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: When the sender says the event happened.
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: What a waiting event waits for, e.g. `payment_intent:pi_...`.
    waiting_for: Mapped[str | None] = mapped_column(String(128))
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
