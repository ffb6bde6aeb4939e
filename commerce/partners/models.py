"""Partners (banks, card networks, wallets), their webhook secrets and their agreements."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ARRAY, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from commerce.db import Base, utcnow

SCOPES = ("transactions", "balances")
PURPOSES = ("fraud_alerts", "balance_display", "sales_attribution")


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Card numbers this partner sent in the clear (hashed and dropped on arrival).
    pan_reports: Mapped[int] = mapped_column(Integer, default=0)
    #: When it last did: flagged for the operator.
    pan_reported_at: Mapped[datetime | None]

    secrets: Mapped[list[PartnerSecret]] = relationship(
        order_by="PartnerSecret.created_at.desc()", cascade="all, delete-orphan"
    )
    agreements: Mapped[list[Agreement]] = relationship(order_by="Agreement.starts_at")


class PartnerSecret(Base):
    """A Standard Webhooks signing secret. Several are valid at once during rotation."""

    __tablename__ = "partner_secrets"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(
        ForeignKey("partners.id", ondelete="CASCADE"), index=True
    )
    #: `whsec_<base64>`; needed in the clear to verify signatures, never returned after creation.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: After this the secret no longer verifies (set when a newer one replaces it).
    expires_at: Mapped[datetime | None]


class Agreement(Base):
    """The data-sharing agreement with a partner: what it may send, for what, for how long."""

    __tablename__ = "agreements"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended', 'terminated')", name="status_known"),
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ends_after_start"),
        CheckConstraint("retention_days > 0", name="retention_positive"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    #: Subset of SCOPES.
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    #: Subset of PURPOSES.
    purposes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    #: Days partner data may be kept.
    retention_days: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
