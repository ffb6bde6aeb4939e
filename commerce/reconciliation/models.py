"""What reconciliation found: matches, exceptions, batch runs, a merchant's tolerances, and
the lines of Stripe payouts.

Matches and exceptions are derived data: `engine.reconcile` recomputes them for a scope
(a period, or the sales and cards one event touched) with the same set-based SQL either
way, so the continuous path and a batch run over the same data leave the same rows.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

EXCEPTION_TYPES = (
    "missing_payment",
    "missing_clearing",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_charge",
    "refund_mismatch",
    "orphan_transaction",
    "disputed",
    "payout_mismatch",
)
EXCEPTION_STATUSES = ("open", "acknowledged", "resolved")
MATCH_KINDS = ("stripe_charge", "stripe_refund", "card_purchase", "card_refund")
#: Stripe's matches follow from a sale's own events and are read from them
#: (`engine.MATCHES`); only card matches are stored.
STORED_MATCH_KINDS = ("card_purchase", "card_refund")
RUN_STATUSES = ("queued", "running", "succeeded", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ReconciliationSettings(Base):
    """A merchant's tolerances; a merchant without a row uses the defaults below."""

    __tablename__ = "reconciliation_settings"
    __table_args__ = (
        CheckConstraint("amount_tolerance >= 0", name="amount_tolerance_not_negative"),
        CheckConstraint("time_window_seconds > 0", name="time_window_positive"),
        CheckConstraint("clearing_days > 0", name="clearing_days_positive"),
    )

    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), primary_key=True
    )
    #: Minor units by which a card amount may differ from the sale's and still match.
    amount_tolerance: Mapped[int] = mapped_column(default=0)
    #: How far apart a card authorization and the checkout may be, either way.
    time_window_seconds: Mapped[int] = mapped_column(Integer, default=86400)
    #: Days after which an authorization without its clearing is an exception.
    clearing_days: Mapped[int] = mapped_column(Integer, default=7)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


DEFAULT_AMOUNT_TOLERANCE = 0
DEFAULT_TIME_WINDOW_SECONDS = 86400
DEFAULT_CLEARING_DAYS = 7


class ReconciliationMatch(Base):
    """One link between a sale and a card purchase or card refund, with how it was made.

    `source_key` names the card purchase (`partner_id:transaction_id`) or card refund.
    `rule` says which rule linked them, `fields` which fields agreed (with their values), and
    `confidence` how sure the rule is. Stripe's charges and refunds are matched by their own
    ids, from the sale's events, and read with the stored ones through `engine.MATCHES`.
    """

    __tablename__ = "reconciliation_matches"
    __table_args__ = (
        CheckConstraint(_in("kind", STORED_MATCH_KINDS), name="kind_known"),
        CheckConstraint("confidence > 0 AND confidence <= 1", name="confidence_range"),
    )

    #: A match is its sale, kind and source: a sale is matched to a source once.
    sale_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    source_key: Mapped[str] = mapped_column(String(260), primary_key=True)
    #: The sale's merchant. Deleted with the sale (and so with the merchant), and with the
    #: card transaction, by the triggers of migration 0012: no foreign key is checked for
    #: each row a reconciliation writes.
    merchant_id: Mapped[str] = mapped_column(String(32))
    #: The authorization (or first clearing) row; deleted with it when the cardholder's
    #: consent ends (reconciliation holds the row while it writes about it).
    card_transaction_id: Mapped[str | None] = mapped_column(String(32), index=True)
    rule: Mapped[str] = mapped_column(String(32))
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB)
    confidence: Mapped[Decimal] = mapped_column(Numeric(3, 2))
    #: Minor units, in the currency the source reported (presentment for card data).
    amount: Mapped[int | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReconciliationException(Base):
    """A difference reconciliation cannot explain, with the fields that differ.

    One row per (merchant, type, subject): found again, it is the same exception; no longer
    found, it is resolved; found after being resolved, it is open again. The merchant may
    acknowledge it with a note.
    """

    __tablename__ = "reconciliation_exceptions"
    __table_args__ = (
        UniqueConstraint("merchant_id", "type", "subject_key"),
        CheckConstraint(_in("type", EXCEPTION_TYPES), name="type_known"),
        CheckConstraint(_in("status", EXCEPTION_STATUSES), name="status_known"),
        Index(
            "ix_reconciliation_exceptions_merchant_id_opened_at", "merchant_id", "opened_at", "id"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Deleted with its sale, card transaction or payout (triggers of migration 0012 for
    #: the first two), so with its merchant too.
    merchant_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(24))
    #: What it is about, as one key: `sale:<id>[:source]`, `txn:<partner>:<transaction id>`,
    #: `payout:<id>`.
    subject_key: Mapped[str] = mapped_column(String(300))
    sale_id: Mapped[str | None] = mapped_column(String(32), index=True)
    card_transaction_id: Mapped[str | None] = mapped_column(String(32), index=True)
    payout_id: Mapped[str | None] = mapped_column(ForeignKey("payouts.id", ondelete="CASCADE"))
    #: The fields that differ, each with both values: {"amount": {"sale": 1250, "card": 1300}}.
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="open")
    #: When the difference was found (for card data: when the transaction happened).
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReconciliationRun(Base):
    """A batch run over a period, asked for by a merchant (its own data) or the operator."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status_known"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: None: every merchant (the operator's `chatledger reconcile`).
    merchant_id: Mapped[str | None] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), index=True
    )
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    #: matched / unmatched sales, exceptions by type, amounts: see engine.summarize.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PayoutLine(Base):
    """One balance transaction of a Stripe payout, tied to the sale it came from."""

    __tablename__ = "payout_lines"
    __table_args__ = (UniqueConstraint("payout_id", "balance_transaction_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    payout_id: Mapped[str] = mapped_column(ForeignKey("payouts.id", ondelete="CASCADE"))
    balance_transaction_id: Mapped[str] = mapped_column(String(64))
    #: Stripe's type: charge, payment, refund, adjustment (disputes), stripe_fee, payout, ...
    type: Mapped[str] = mapped_column(String(40))
    #: The charge, refund or dispute id the line is about, if any.
    source_id: Mapped[str | None] = mapped_column(String(64), index=True)
    #: Minor units of the settlement `currency`; net = amount - fee.
    amount: Mapped[int]
    fee: Mapped[int] = mapped_column(default=0)
    net: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    sale_id: Mapped[str | None] = mapped_column(
        ForeignKey("sales.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReconciliationQueue(Base):
    """What processing asked to reconcile and attribute: a sale, a card group (a merchant's
    last four digits), or a cardholder. Events add rows in their own transaction; the
    worker's drain takes many at once and reconciles them together, so a burst of events
    costs one reconciliation, not one each. Rows are deleted in the transaction that
    reconciles them: a failure of the database leaves them for the next drain, and a
    merchant whose reconciliation fails otherwise has its rows put back with the attempt
    counted, to be taken again after `retry_at` (engine.drain)."""

    __tablename__ = "reconciliation_queue"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    sale_id: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    #: A cardholder to attribute (partner id and the partner's customer reference).
    partner_id: Mapped[str | None] = mapped_column(String(32))
    customer_ref: Mapped[str | None] = mapped_column(String(128))
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Failed reconciliations of this item so far, the last one's error (card numbers
    #: masked), and when a drain may take it again (None: at once).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    retry_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
