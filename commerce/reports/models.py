"""Report rollups, the log of changes not yet folded into them, and dashboard sign-ins.

How the rollups stay current (see commerce/reports/rollups.py):

1. Database triggers on `sales` and `touchpoints` (migration 0008) append one row to
   `report_deltas` for every change that moves a reported figure, in the same transaction
   as the change. They only insert, so writers never wait on each other for a rollup row,
   and no path that changes a sale (the API, a webhook, a bulk repair in SQL) is missed.
2. A periodic task (`reports.fold`, every 10 s) moves the deltas into the rollup tables in
   one statement: DELETE ... RETURNING, grouped, upserted.
3. Reports read the rollups plus the few deltas not folded yet, in one statement, so they
   are exact at the moment they are read, not merely at most a minute behind.

Buckets are UTC and 15 minutes or an hour wide: every zone's local midnight falls on a
quarter hour (India +5:30, Nepal +5:45, Chatham +12:45, Lord Howe's 30-minute DST), and on
a whole hour in nearly all of them, so a day, week or month in any zone, DST or not, is an
exact union of buckets. The hourly table serves the zones whose boundaries are on whole
hours in the period asked; the quarter-hour table the others.

A sale counts in the bucket of its checkout (`sales.created_at`) with its amounts as they
stand: a refund made a week later lowers the day the sale was made. Touchpoints count in the
bucket in which they happened.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Identity, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

#: The reported figures, in the order reports show them.
FUNNEL = ("delivered", "viewed", "clicked", "accepted", "paid")
MONEY = ("gross", "refunds", "disputes", "net")
MEASURES = FUNNEL + MONEY


class _Measures:
    #: Offers delivered, viewed, clicked, accepted (touchpoints of that kind).
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    viewed: Mapped[int] = mapped_column(BigInteger, default=0)
    clicked: Mapped[int] = mapped_column(BigInteger, default=0)
    accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Sales whose payment was captured (the report's `count`).
    paid: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Captured, in minor units of `currency`.
    gross: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Refunded, in minor units.
    refunds: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Under an open dispute or lost to one, in minor units (a won dispute counts 0).
    disputes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: gross - refunds - disputes, in minor units.
    net: Mapped[int] = mapped_column(BigInteger, default=0)


class ReportDelta(_Measures, Base):
    """One change to reported figures, not yet folded into the rollups (written by triggers)."""

    __tablename__ = "report_deltas"
    __table_args__ = (Index("ix_report_deltas_merchant_id_at", "merchant_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(32))
    #: The time the figures belong to: the sale's checkout, or when the touchpoint happened.
    at: Mapped[datetime]
    offer_id: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))


class OfferRollup(_Measures, Base):
    """Figures per offer and quarter hour (UTC): reports by offer and by conversation."""

    __tablename__ = "report_offer_rollups"

    merchant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    offer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))


class MerchantHourRollup(_Measures, Base):
    """Figures per merchant, currency and UTC hour: reports over time in whole-hour zones."""

    __tablename__ = "report_merchant_hours"

    merchant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class MerchantQuarterRollup(_Measures, Base):
    """Figures per merchant, currency and UTC quarter hour: for zones with such offsets."""

    __tablename__ = "report_merchant_quarters"

    merchant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class MerchantDayRollup(_Measures, Base):
    """Figures per merchant, currency and local day in the zone of `report_day_zones`.

    The fast path for the report most asked for: days, weeks or months in the merchant's own
    zone (a year is 365 rows a currency instead of 8,760 hours). Any other zone is served by
    the hourly or quarter-hour rollups, with the same figures.
    """

    __tablename__ = "report_merchant_days"

    merchant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class ReportDayZone(Base):
    """The zone in which a merchant's `report_merchant_days` rows are cut.

    Set when the merchant is created (by a trigger, with the merchant's zone) and by a
    rebuild. A merchant who changes zone keeps its days cut in the old one, consistently,
    until `chatledger reports rebuild --merchant` re-cuts them; reports in the new zone read
    the hourly rollups meanwhile.
    """

    __tablename__ = "report_day_zones"

    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), primary_key=True
    )
    #: IANA zone name.
    timezone: Mapped[str] = mapped_column(String(64))


class DashboardSession(Base):
    """A merchant signed in to the dashboard with an API key.

    The cookie carries a 256-bit random token; only its SHA-256 is stored, like API keys.
    The session ends when it expires, when the merchant signs out, or when the key that
    opened it is revoked.
    """

    __tablename__ = "dashboard_sessions"

    #: Hex SHA-256 of the cookie's token.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    #: Sent back in every form that changes something (sign-out).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
