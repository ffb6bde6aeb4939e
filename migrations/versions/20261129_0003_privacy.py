"""Privacy: merchant-scoped card aliases, the audit log (append-only), deletion receipts,
erased customers.

Revision ID: 0003
Revises: 0002
Created: 2026-11-29 02:28:24.350598
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=True),
        sa.Column("subject_id", sa.String(length=128), nullable=True),
        sa.Column("purpose", sa.String(length=32), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"], unique=False)
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    op.create_table(
        "deletion_receipts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=True),
        sa.Column("customer_ref", sa.String(length=128), nullable=True),
        sa.Column("counts", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletion_receipts")),
    )
    op.create_index(
        op.f("ix_deletion_receipts_partner_id"), "deletion_receipts", ["partner_id"], unique=False
    )
    op.create_table(
        "merchant_card_aliases",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("card_ref_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_ref_id"],
            ["card_refs.id"],
            name=op.f("fk_merchant_card_aliases_card_ref_id_card_refs"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_merchant_card_aliases_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant_card_aliases")),
        sa.UniqueConstraint("alias", name=op.f("uq_merchant_card_aliases_alias")),
        sa.UniqueConstraint(
            "merchant_id",
            "card_ref_id",
            name=op.f("uq_merchant_card_aliases_merchant_id_card_ref_id"),
        ),
    )
    op.create_index(
        op.f("ix_merchant_card_aliases_card_ref_id"),
        "merchant_card_aliases",
        ["card_ref_id"],
        unique=False,
    )
    op.add_column("customers", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))

    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END;
        $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_append_only
        BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    op.execute("DROP FUNCTION audit_log_append_only()")
    op.drop_column("customers", "erased_at")
    op.drop_index(op.f("ix_merchant_card_aliases_card_ref_id"), table_name="merchant_card_aliases")
    op.drop_table("merchant_card_aliases")
    op.drop_index(op.f("ix_deletion_receipts_partner_id"), table_name="deletion_receipts")
    op.drop_table("deletion_receipts")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")
    op.drop_table("audit_log")
