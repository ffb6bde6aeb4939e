"""Merchants' webhook endpoints, their signing secrets, the events recorded for them, and
each delivery of an event to an endpoint with every attempt made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from commerce.db import Base, utcnow

EVENT_TYPES = (
    "sale.paid",
    "sale.refunded",
    "sale.disputed",
    "reconciliation.exception",
    "attribution.created",
)
ENDPOINT_STATUSES = ("enabled", "disabled")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "canceled")


class WebhookEndpoint(Base):
    """Where a merchant wants its events sent, and which ones."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("status IN ('enabled', 'disabled')", name="status_known"),
        Index("ix_webhook_endpoints_merchant_id_created_at", "merchant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    #: http(s) URL; its host was checked against the address guard at registration.
    url: Mapped[str] = mapped_column(String(2048))
    #: Subset of EVENT_TYPES.
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    #: `disabled` after the receiver answered 410 Gone or the merchant disabled it; nothing
    #: more is sent to it until the merchant enables it again.
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    #: Why it is disabled (`services.DISABLED_BY_410` or `DISABLED_BY_MERCHANT`).
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    secrets: Mapped[list[WebhookEndpointSecret]] = relationship(
        order_by="WebhookEndpointSecret.created_at.desc()", cascade="all, delete-orphan"
    )


class WebhookEndpointSecret(Base):
    """A `whsec_` signing secret. During a rotation two are valid, and every delivery is
    signed with each of them."""

    __tablename__ = "webhook_endpoint_secrets"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    #: Needed in the clear to sign; never returned after the answer that created it.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: After this the secret no longer signs (set when a newer one replaces it).
    expires_at: Mapped[datetime | None]


class OutboundEvent(Base):
    """Something that happened to a merchant's objects, as sent to its endpoints. The body is
    kept as first built, so every attempt and every redelivery sends the same bytes' meaning
    under the same `webhook-id` (this row's id)."""

    __tablename__ = "outbound_events"
    __table_args__ = (UniqueConstraint("merchant_id", "dedupe_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    #: What caused it (e.g. the sale event), so a repeated cause records no second event.
    dedupe_key: Mapped[str] = mapped_column(String(160))
    #: The JSON body sent: {id, type, created, data}.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event to one endpoint, with the retry schedule.

    `pending` while attempts go on; `delivered` after a 2xx; `failed` when the retry window
    ended without one; `canceled` when the endpoint was disabled. A redelivery puts it back
    to `pending` with a new window. Deleting the endpoint deletes its deliveries.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'canceled')", name="status_known"
        ),
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at", "id"),
        # The sweep's query: pending deliveries whose next attempt is due.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(
        ForeignKey("outbound_events.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: When the next attempt may start; while one is in flight, the end of its lease.
    next_attempt_at: Mapped[datetime | None]
    #: A task for this delivery is with the broker until then: the sweep sends no other.
    queued_until: Mapped[datetime | None]
    #: No attempt is scheduled after this (about three days after the first or a redelivery).
    give_up_at: Mapped[datetime]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    #: Masked for card numbers.
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    event: Mapped[OutboundEvent] = relationship()
    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", viewonly=True
    )


class WebhookAttempt(Base):
    """One HTTP request of a delivery and what came of it."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime]
    #: The receiver's HTTP status; null when no answer came (refused address, timeout).
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    #: `delivered`, `retry`, `disabled` or `failed`.
    outcome: Mapped[str] = mapped_column(String(16))
    #: Masked for card numbers; never the body we sent.
    error: Mapped[str | None] = mapped_column(Text)
