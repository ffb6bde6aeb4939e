"""The audit log: every read of partner data and every administrative action."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow


class AuditEntry(Base):
    """Who did what, when, and for which purpose. Append-only: a trigger refuses changes."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The API key id, or `system:<job>` for the worker's own work.
    actor: Mapped[str] = mapped_column(String(64))
    #: What was done: `partner_data.read`, `merchant.create`, `customer.erase`, ...
    action: Mapped[str] = mapped_column(String(128), index=True)
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(128))
    #: For reads of partner data: the purpose the read was made for.
    purpose: Mapped[str | None] = mapped_column(String(32))
    #: Counts and ids, never the data itself.
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
