"""Fraud alerts: one per suspicious card transaction, with its sending and the answer.

Revision ID: 0004
Revises: 0003
Created: 2026-11-29 03:15:28.357602
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fraud_alerts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("card_transaction_id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("customer_ref", sa.String(length=128), nullable=False),
        sa.Column("reasons", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.String(length=256), nullable=True),
        sa.Column("answer", sa.String(length=8), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "answer IS NULL OR answer IN ('me', 'not_me')",
            name=op.f("ck_fraud_alerts_answer_known"),
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'failed', 'answered')",
            name=op.f("ck_fraud_alerts_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["card_transaction_id"],
            ["card_transactions.id"],
            name=op.f("fk_fraud_alerts_card_transaction_id_card_transactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_fraud_alerts_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fraud_alerts")),
        sa.UniqueConstraint(
            "card_transaction_id", name=op.f("uq_fraud_alerts_card_transaction_id")
        ),
    )
    op.create_index(
        op.f("ix_fraud_alerts_customer_ref"), "fraud_alerts", ["customer_ref"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_fraud_alerts_customer_ref"), table_name="fraud_alerts")
    op.drop_table("fraud_alerts")
