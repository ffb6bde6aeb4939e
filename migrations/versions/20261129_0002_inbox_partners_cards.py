"""The webhook inbox, partners and their agreements, card identity and transactions,
consents and balances, payouts; the card that paid a sale.

Revision ID: 0002
Revises: 0001
Created: 2026-11-29 02:00:52.529039
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "card_refs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("brand", sa.String(length=20), nullable=True),
        sa.Column("last4", sa.String(length=4), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_refs")),
    )
    op.create_table(
        "inbox_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("waiting_for", sa.String(length=128), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'waiting', 'failed', 'refused', 'ignored')",
            name=op.f("ck_inbox_events_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_events")),
        sa.UniqueConstraint("source", "event_id", name=op.f("uq_inbox_events_source_event_id")),
    )
    op.create_index(
        "ix_inbox_events_due",
        "inbox_events",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'waiting', 'failed')"),
    )
    op.create_index(op.f("ix_inbox_events_status"), "inbox_events", ["status"], unique=False)
    op.create_index("ix_inbox_events_waiting_for", "inbox_events", ["waiting_for"], unique=False)
    op.create_table(
        "partners",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pan_reports", sa.Integer(), nullable=False),
        sa.Column("pan_reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("stripe_account", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("arrival_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
    )
    op.create_table(
        "agreements",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("scopes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("purposes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'terminated')",
            name=op.f("ck_agreements_status_known"),
        ),
        sa.CheckConstraint(
            "ends_at IS NULL OR ends_at > starts_at", name=op.f("ck_agreements_ends_after_start")
        ),
        sa.CheckConstraint("retention_days > 0", name=op.f("ck_agreements_retention_positive")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_agreements_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreements")),
    )
    op.create_index(op.f("ix_agreements_partner_id"), "agreements", ["partner_id"], unique=False)
    op.create_table(
        "balance_snapshots",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("customer_ref", sa.String(length=128), nullable=False),
        sa.Column("account_ref", sa.String(length=128), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("current", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purposes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_balance_snapshots_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_snapshots")),
        sa.UniqueConstraint(
            "partner_id",
            "account_ref",
            "as_of",
            name=op.f("uq_balance_snapshots_partner_id_account_ref_as_of"),
        ),
    )
    op.create_index(
        op.f("ix_balance_snapshots_customer_ref"),
        "balance_snapshots",
        ["customer_ref"],
        unique=False,
    )
    op.create_table(
        "card_aliases",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("card_ref_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('stripe_fingerprint', 'partner_token', 'par', 'pan_hash')",
            name=op.f("ck_card_aliases_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["card_ref_id"], ["card_refs.id"], name=op.f("fk_card_aliases_card_ref_id_card_refs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_aliases")),
        sa.UniqueConstraint(
            "kind", "scope", "value", name=op.f("uq_card_aliases_kind_scope_value")
        ),
    )
    op.create_index(
        op.f("ix_card_aliases_card_ref_id"), "card_aliases", ["card_ref_id"], unique=False
    )
    op.create_table(
        "card_transactions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("original_transaction_id", sa.String(length=128), nullable=True),
        sa.Column("customer_ref", sa.String(length=128), nullable=True),
        sa.Column("card_ref_id", sa.String(length=32), nullable=True),
        sa.Column("card_brand", sa.String(length=20), nullable=True),
        sa.Column("card_last4", sa.String(length=4), nullable=True),
        sa.Column("mid", sa.String(length=15), nullable=True),
        sa.Column("merchant_id", sa.String(length=32), nullable=True),
        sa.Column("merchant_name", sa.String(length=200), nullable=True),
        sa.Column("mcc", sa.String(length=4), nullable=True),
        sa.Column("merchant_country", sa.String(length=2), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("auth_code", sa.String(length=16), nullable=True),
        sa.Column("card_present", sa.Boolean(), nullable=True),
        sa.Column("wallet", sa.String(length=32), nullable=True),
        sa.Column("purposes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("inbox_event_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_card_transactions_amount_not_negative")),
        sa.ForeignKeyConstraint(
            ["card_ref_id"],
            ["card_refs.id"],
            name=op.f("fk_card_transactions_card_ref_id_card_refs"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_card_transactions_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_card_transactions_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_transactions")),
        sa.UniqueConstraint(
            "partner_id",
            "kind",
            "transaction_id",
            name=op.f("uq_card_transactions_partner_id_kind_transaction_id"),
        ),
    )
    op.create_index(
        op.f("ix_card_transactions_card_ref_id"), "card_transactions", ["card_ref_id"], unique=False
    )
    op.create_index(
        op.f("ix_card_transactions_customer_ref"),
        "card_transactions",
        ["customer_ref"],
        unique=False,
    )
    op.create_index(
        op.f("ix_card_transactions_merchant_id"), "card_transactions", ["merchant_id"], unique=False
    )
    op.create_index(
        "ix_card_transactions_mid_occurred_at",
        "card_transactions",
        ["mid", "occurred_at"],
        unique=False,
    )
    op.create_index(
        "ix_card_transactions_partner_id_transaction_id",
        "card_transactions",
        ["partner_id", "transaction_id"],
        unique=False,
    )
    op.create_table(
        "consents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("customer_ref", sa.String(length=128), nullable=False),
        sa.Column("chat_channel", sa.String(length=20), nullable=True),
        sa.Column("chat_user_id", sa.String(length=128), nullable=True),
        sa.Column("scopes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("purposes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cards", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('granted', 'revoked')", name=op.f("ck_consents_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_consents_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
        sa.UniqueConstraint(
            "partner_id", "customer_ref", name=op.f("uq_consents_partner_id_customer_ref")
        ),
    )
    op.create_table(
        "partner_secrets",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
            name=op.f("fk_partner_secrets_partner_id_partners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_secrets")),
    )
    op.create_index(
        op.f("ix_partner_secrets_partner_id"), "partner_secrets", ["partner_id"], unique=False
    )
    op.add_column("sales", sa.Column("card_ref_id", sa.String(length=32), nullable=True))
    op.add_column("sales", sa.Column("card_brand", sa.String(length=20), nullable=True))
    op.add_column("sales", sa.Column("card_last4", sa.String(length=4), nullable=True))
    op.create_index(op.f("ix_sales_card_ref_id"), "sales", ["card_ref_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_sales_card_ref_id_card_refs"), "sales", "card_refs", ["card_ref_id"], ["id"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_sales_card_ref_id_card_refs"), "sales", type_="foreignkey")
    op.drop_index(op.f("ix_sales_card_ref_id"), table_name="sales")
    op.drop_column("sales", "card_last4")
    op.drop_column("sales", "card_brand")
    op.drop_column("sales", "card_ref_id")
    op.drop_index(op.f("ix_partner_secrets_partner_id"), table_name="partner_secrets")
    op.drop_table("partner_secrets")
    op.drop_table("consents")
    op.drop_index("ix_card_transactions_partner_id_transaction_id", table_name="card_transactions")
    op.drop_index("ix_card_transactions_mid_occurred_at", table_name="card_transactions")
    op.drop_index(op.f("ix_card_transactions_merchant_id"), table_name="card_transactions")
    op.drop_index(op.f("ix_card_transactions_customer_ref"), table_name="card_transactions")
    op.drop_index(op.f("ix_card_transactions_card_ref_id"), table_name="card_transactions")
    op.drop_table("card_transactions")
    op.drop_index(op.f("ix_card_aliases_card_ref_id"), table_name="card_aliases")
    op.drop_table("card_aliases")
    op.drop_index(op.f("ix_balance_snapshots_customer_ref"), table_name="balance_snapshots")
    op.drop_table("balance_snapshots")
    op.drop_index(op.f("ix_agreements_partner_id"), table_name="agreements")
    op.drop_table("agreements")
    op.drop_table("payouts")
    op.drop_table("partners")
    op.drop_index("ix_inbox_events_waiting_for", table_name="inbox_events")
    op.drop_index(op.f("ix_inbox_events_status"), table_name="inbox_events")
    op.drop_index(
        "ix_inbox_events_due",
        table_name="inbox_events",
        postgresql_where=sa.text("status IN ('pending', 'waiting', 'failed')"),
    )
    op.drop_table("inbox_events")
    op.drop_table("card_refs")
