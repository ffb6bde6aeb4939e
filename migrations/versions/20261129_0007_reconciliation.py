"""Reconciliation: matches, exceptions, runs and payout lines.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.sqltypes import Text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_reconciliation_runs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_reconciliation_runs_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    op.create_index(
        op.f("ix_reconciliation_runs_merchant_id"),
        "reconciliation_runs",
        ["merchant_id"],
        unique=False,
    )
    op.create_table(
        "reconciliation_settings",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("amount_tolerance", sa.BigInteger(), nullable=False),
        sa.Column("time_window_seconds", sa.Integer(), nullable=False),
        sa.Column("clearing_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "amount_tolerance >= 0",
            name=op.f("ck_reconciliation_settings_amount_tolerance_not_negative"),
        ),
        sa.CheckConstraint(
            "clearing_days > 0", name=op.f("ck_reconciliation_settings_clearing_days_positive")
        ),
        sa.CheckConstraint(
            "time_window_seconds > 0", name=op.f("ck_reconciliation_settings_time_window_positive")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_reconciliation_settings_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_reconciliation_settings")),
    )
    op.create_table(
        "payout_lines",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("payout_id", sa.String(length=64), nullable=False),
        sa.Column("balance_transaction_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("sale_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["payout_id"],
            ["payouts.id"],
            name=op.f("fk_payout_lines_payout_id_payouts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sale_id"],
            ["sales.id"],
            name=op.f("fk_payout_lines_sale_id_sales"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_lines")),
        sa.UniqueConstraint(
            "payout_id",
            "balance_transaction_id",
            name=op.f("uq_payout_lines_payout_id_balance_transaction_id"),
        ),
    )
    op.create_index(op.f("ix_payout_lines_sale_id"), "payout_lines", ["sale_id"], unique=False)
    op.create_index(op.f("ix_payout_lines_source_id"), "payout_lines", ["source_id"], unique=False)
    op.create_table(
        "reconciliation_exceptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=24), nullable=False),
        sa.Column("subject_key", sa.String(length=300), nullable=False),
        sa.Column("sale_id", sa.String(length=32), nullable=True),
        sa.Column("card_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.Column("fields", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')",
            name=op.f("ck_reconciliation_exceptions_status_known"),
        ),
        sa.CheckConstraint(
            "type IN ('missing_payment', 'missing_clearing', 'amount_mismatch', 'currency_mismatch', 'duplicate_charge', 'refund_mismatch', 'orphan_transaction', 'disputed', 'payout_mismatch')",
            name=op.f("ck_reconciliation_exceptions_type_known"),
        ),
        sa.ForeignKeyConstraint(
            ["card_transaction_id"],
            ["card_transactions.id"],
            name=op.f("fk_reconciliation_exceptions_card_transaction_id_card_transactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_reconciliation_exceptions_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["payout_id"],
            ["payouts.id"],
            name=op.f("fk_reconciliation_exceptions_payout_id_payouts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sale_id"],
            ["sales.id"],
            name=op.f("fk_reconciliation_exceptions_sale_id_sales"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_exceptions")),
        sa.UniqueConstraint(
            "merchant_id",
            "type",
            "subject_key",
            name=op.f("uq_reconciliation_exceptions_merchant_id_type_subject_key"),
        ),
    )
    op.create_index(
        op.f("ix_reconciliation_exceptions_card_transaction_id"),
        "reconciliation_exceptions",
        ["card_transaction_id"],
        unique=False,
    )
    op.create_index(
        "ix_reconciliation_exceptions_merchant_id_opened_at",
        "reconciliation_exceptions",
        ["merchant_id", "opened_at", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_reconciliation_exceptions_sale_id"),
        "reconciliation_exceptions",
        ["sale_id"],
        unique=False,
    )
    op.create_table(
        "reconciliation_matches",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("sale_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_key", sa.String(length=260), nullable=False),
        sa.Column("card_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("fields", postgresql.JSONB(astext_type=Text()), nullable=False),
        sa.Column("confidence", sa.Numeric(precision=3, scale=2), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('stripe_charge', 'stripe_refund', 'card_purchase', 'card_refund')",
            name=op.f("ck_reconciliation_matches_kind_known"),
        ),
        sa.CheckConstraint(
            "confidence > 0 AND confidence <= 1",
            name=op.f("ck_reconciliation_matches_confidence_range"),
        ),
        sa.ForeignKeyConstraint(
            ["card_transaction_id"],
            ["card_transactions.id"],
            name=op.f("fk_reconciliation_matches_card_transaction_id_card_transactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_reconciliation_matches_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sale_id"],
            ["sales.id"],
            name=op.f("fk_reconciliation_matches_sale_id_sales"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_matches")),
        sa.UniqueConstraint(
            "sale_id",
            "kind",
            "source_key",
            name=op.f("uq_reconciliation_matches_sale_id_kind_source_key"),
        ),
    )
    op.create_index(
        op.f("ix_reconciliation_matches_card_transaction_id"),
        "reconciliation_matches",
        ["card_transaction_id"],
        unique=False,
    )
    op.create_index(
        "ix_reconciliation_matches_merchant_id_kind",
        "reconciliation_matches",
        ["merchant_id", "kind"],
        unique=False,
    )
    op.create_index(
        op.f("ix_reconciliation_matches_sale_id"),
        "reconciliation_matches",
        ["sale_id"],
        unique=False,
    )
    op.create_index(
        "ix_card_transactions_merchant_id_card_last4",
        "card_transactions",
        ["merchant_id", "card_last4"],
        unique=False,
    )
    op.add_column("payouts", sa.Column("merchant_id", sa.String(length=32), nullable=True))
    op.add_column(
        "payouts", sa.Column("lines_fetched_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(op.f("ix_payouts_merchant_id"), "payouts", ["merchant_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_payouts_merchant_id_merchants"),
        "payouts",
        "merchants",
        ["merchant_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_sales_merchant_id_card_last4", "sales", ["merchant_id", "card_last4"], unique=False
    )
    op.create_index(
        "ix_sale_events_kind_source_ref", "sale_events", ["kind", "source_ref"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_sale_events_kind_source_ref", table_name="sale_events")
    op.drop_index("ix_sales_merchant_id_card_last4", table_name="sales")
    op.drop_constraint(op.f("fk_payouts_merchant_id_merchants"), "payouts", type_="foreignkey")
    op.drop_index(op.f("ix_payouts_merchant_id"), table_name="payouts")
    op.drop_column("payouts", "lines_fetched_at")
    op.drop_column("payouts", "merchant_id")
    op.drop_index("ix_card_transactions_merchant_id_card_last4", table_name="card_transactions")
    op.drop_index(op.f("ix_reconciliation_matches_sale_id"), table_name="reconciliation_matches")
    op.drop_index("ix_reconciliation_matches_merchant_id_kind", table_name="reconciliation_matches")
    op.drop_index(
        op.f("ix_reconciliation_matches_card_transaction_id"), table_name="reconciliation_matches"
    )
    op.drop_table("reconciliation_matches")
    op.drop_index(
        op.f("ix_reconciliation_exceptions_sale_id"), table_name="reconciliation_exceptions"
    )
    op.drop_index(
        "ix_reconciliation_exceptions_merchant_id_opened_at", table_name="reconciliation_exceptions"
    )
    op.drop_index(
        op.f("ix_reconciliation_exceptions_card_transaction_id"),
        table_name="reconciliation_exceptions",
    )
    op.drop_table("reconciliation_exceptions")
    op.drop_index(op.f("ix_payout_lines_source_id"), table_name="payout_lines")
    op.drop_index(op.f("ix_payout_lines_sale_id"), table_name="payout_lines")
    op.drop_table("payout_lines")
    op.drop_table("reconciliation_settings")
    op.drop_index(op.f("ix_reconciliation_runs_merchant_id"), table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
