"""A credit keeps two foreign keys: its card transaction and its touchpoint.

The offer, the conversation and the merchant of a credit are its touchpoint's, so their
deletions reach the credit through the touchpoint (touchpoints cascade from offers and
merchants; a conversation cannot go while it has touchpoints). Checking them again for
every credit written cost the attribution batch most of its writing time, and the index
on offer_id served only the cascade of the key removed here.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_DROPPED = (
    ("offer_id", "offers"),
    ("conversation_id", "conversations"),
    ("merchant_id", "merchants"),
)


def upgrade() -> None:
    for column, table in _DROPPED:
        op.drop_constraint(
            op.f(f"fk_attributions_{column}_{table}"), "attributions", type_="foreignkey"
        )
    op.drop_index(op.f("ix_attributions_offer_id"), table_name="attributions")


def downgrade() -> None:
    op.create_index(op.f("ix_attributions_offer_id"), "attributions", ["offer_id"], unique=False)
    for column, table in _DROPPED:
        op.create_foreign_key(
            op.f(f"fk_attributions_{column}_{table}"),
            "attributions",
            table,
            [column],
            ["id"],
            ondelete="CASCADE",
        )
