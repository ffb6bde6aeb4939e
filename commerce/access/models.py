"""API keys and the record of idempotent requests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, SmallInteger, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow


class ApiKey(Base):
    """A bearer key. Only its SHA-256 is stored; the key itself is shown once, at creation.

    Keys are 256-bit random strings, so a fast hash is enough: there is nothing to
    brute-force that a slow password hash would protect.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "(role = 'operator' AND merchant_id IS NULL)"
            " OR (role = 'merchant' AND merchant_id IS NOT NULL)",
            name="role_matches_owner",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: `operator` administers; `merchant` reaches one merchant's objects only.
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), index=True
    )
    #: The first characters of the key, kept to tell keys apart in listings and logs.
    prefix: Mapped[str] = mapped_column(String(16))
    #: Hex SHA-256 of the whole key; the lookup column.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """The stored answer to a creating POST sent with an `Idempotency-Key`.

    A retry with the same key and the same request gets the same answer; the same
    key with a different request is refused.
    """

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("api_key_id", "key"),
        Index("ix_idempotency_records_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    #: SHA-256 over method, path and body: what "the same request" means.
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(SmallInteger)
    response_body: Mapped[Any] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
