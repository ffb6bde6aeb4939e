"""Off-platform attribution: credits and a merchant's default windows.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attribution_settings",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("click_window_seconds", sa.Integer(), nullable=False),
        sa.Column("view_window_seconds", sa.Integer(), nullable=False),
        sa.Column("return_period_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "click_window_seconds > 0", name=op.f("ck_attribution_settings_click_window_positive")
        ),
        sa.CheckConstraint(
            "return_period_days >= 0",
            name=op.f("ck_attribution_settings_return_period_not_negative"),
        ),
        sa.CheckConstraint(
            "view_window_seconds > 0", name=op.f("ck_attribution_settings_view_window_positive")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_attribution_settings_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_attribution_settings")),
    )
    op.create_table(
        "attributions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("purchase_key", sa.String(length=260), nullable=False),
        sa.Column("card_transaction_id", sa.String(length=32), nullable=False),
        sa.Column("offer_id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("touchpoint_id", sa.String(length=32), nullable=False),
        sa.Column("touch_kind", sa.String(length=16), nullable=False),
        sa.Column("window", sa.String(length=16), nullable=False),
        sa.Column("weight", sa.Numeric(precision=7, scale=6), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("purchased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cardholder", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "model IN ('last_touch', 'first_touch', 'linear')",
            name=op.f("ck_attributions_model_known"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'taken_back')", name=op.f("ck_attributions_status_known")
        ),
        sa.CheckConstraint("weight > 0 AND weight <= 1", name=op.f("ck_attributions_weight_range")),
        sa.ForeignKeyConstraint(
            ["card_transaction_id"],
            ["card_transactions.id"],
            name=op.f("fk_attributions_card_transaction_id_card_transactions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_attributions_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_attributions_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"],
            ["offers.id"],
            name=op.f("fk_attributions_offer_id_offers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["touchpoint_id"],
            ["touchpoints.id"],
            name=op.f("fk_attributions_touchpoint_id_touchpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attributions")),
        sa.UniqueConstraint(
            "purchase_key",
            "model",
            "touchpoint_id",
            name=op.f("uq_attributions_purchase_key_model_touchpoint_id"),
        ),
    )
    op.create_index(
        op.f("ix_attributions_card_transaction_id"),
        "attributions",
        ["card_transaction_id"],
        unique=False,
    )
    op.create_index("ix_attributions_cardholder", "attributions", ["cardholder"], unique=False)
    op.create_index(
        "ix_attributions_merchant_id_purchased_at",
        "attributions",
        ["merchant_id", "purchased_at"],
        unique=False,
    )
    op.create_index(op.f("ix_attributions_offer_id"), "attributions", ["offer_id"], unique=False)
    op.create_index(
        "ix_consents_chat_channel_chat_user_id",
        "consents",
        ["chat_channel", "chat_user_id"],
        unique=False,
    )
    op.create_index(
        "ix_touchpoints_conversation_id_occurred_at",
        "touchpoints",
        ["conversation_id", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_touchpoints_conversation_id_occurred_at", table_name="touchpoints")
    op.drop_index("ix_consents_chat_channel_chat_user_id", table_name="consents")
    op.drop_index(op.f("ix_attributions_offer_id"), table_name="attributions")
    op.drop_index("ix_attributions_merchant_id_purchased_at", table_name="attributions")
    op.drop_index("ix_attributions_cardholder", table_name="attributions")
    op.drop_index(op.f("ix_attributions_card_transaction_id"), table_name="attributions")
    op.drop_table("attributions")
    op.drop_table("attribution_settings")
