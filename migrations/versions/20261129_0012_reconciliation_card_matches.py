"""Reconciliation stores card matches only, and its rows follow their sale or card
transaction by trigger instead of a foreign key checked row by row.

- A Stripe charge or refund is matched to its sale by its own id, from the sale's events
  alone: `commerce.reconciliation.engine.MATCHES` reads those matches from the events beside
  the stored card matches, so storing them again (a row or more per paid sale) only cost
  every reconciliation its writing time.
- The foreign keys of matches and exceptions to their merchant, sale and card transaction
  were checked once per row written, which was most of a batch's writing time. A deletion
  of sales or card transactions now deletes their matches and exceptions in one statement
  (a trigger, as the cascade did); the merchant's deletion reaches them through its sales.
  The reconciliation itself takes the lock the check took on each card transaction it
  writes about, in one statement (`partnerdata.hold_transactions`), so a cardholder's data
  deleted while it runs never leaves a match behind. Sales are deleted only with their
  merchant.
- A match is its (sale, kind, source key): that is its primary key now, instead of a serial
  id beside a unique index on them; the index on sale_id alone is the key's first column,
  and nothing reads matches by merchant.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: (table, column, referenced table, constraint name)
_KEYS = (
    ("reconciliation_matches", "merchant_id", "merchants", "merchant_id_merchants"),
    ("reconciliation_matches", "sale_id", "sales", "sale_id_sales"),
    (
        "reconciliation_matches",
        "card_transaction_id",
        "card_transactions",
        "card_transaction_id_card_transactions",
    ),
    ("reconciliation_exceptions", "merchant_id", "merchants", "merchant_id_merchants"),
    ("reconciliation_exceptions", "sale_id", "sales", "sale_id_sales"),
    (
        "reconciliation_exceptions",
        "card_transaction_id",
        "card_transactions",
        "card_transaction_id_card_t_e86b",
    ),
)

#: Parent table -> the column of matches and exceptions that names its rows.
_FOLLOW = (("sales", "sale_id"), ("card_transactions", "card_transaction_id"))


_FOLLOW_FUNCTION = """
CREATE FUNCTION reconciliation_follow_{parent}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM reconciliation_matches WHERE {column} IN (SELECT id FROM gone);
    DELETE FROM reconciliation_exceptions WHERE {column} IN (SELECT id FROM gone);
    RETURN NULL;
END
$$
"""

_FOLLOW_TRIGGER = """
CREATE TRIGGER reconciliation_follow_{parent} AFTER DELETE ON {parent}
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
EXECUTE FUNCTION reconciliation_follow_{parent}()
"""


def upgrade() -> None:
    op.execute(
        "DELETE FROM reconciliation_matches WHERE kind IN ('stripe_charge', 'stripe_refund')"
    )
    op.drop_constraint(
        op.f("ck_reconciliation_matches_kind_known"), "reconciliation_matches", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_reconciliation_matches_kind_known"),
        "reconciliation_matches",
        "kind IN ('card_purchase', 'card_refund')",
    )
    op.drop_index(op.f("ix_reconciliation_matches_sale_id"), table_name="reconciliation_matches")
    # A match is its (sale, kind, source): that is its key; nothing reads it by merchant.
    op.drop_index("ix_reconciliation_matches_merchant_id_kind", table_name="reconciliation_matches")
    op.drop_constraint(op.f("pk_reconciliation_matches"), "reconciliation_matches", type_="primary")
    op.drop_column("reconciliation_matches", "id")
    op.drop_constraint(
        op.f("uq_reconciliation_matches_sale_id_kind_source_key"),
        "reconciliation_matches",
        type_="unique",
    )
    op.create_primary_key(
        op.f("pk_reconciliation_matches"),
        "reconciliation_matches",
        ["sale_id", "kind", "source_key"],
    )
    for table, _column, _parent, name in _KEYS:
        op.drop_constraint(op.f(f"fk_{table}_{name}"), table, type_="foreignkey")
    for parent, column in _FOLLOW:
        op.execute(_FOLLOW_FUNCTION.format(parent=parent, column=column))
        op.execute(_FOLLOW_TRIGGER.format(parent=parent))


def downgrade() -> None:
    for parent, _column in _FOLLOW:
        op.execute(f"DROP TRIGGER reconciliation_follow_{parent} ON {parent}")
        op.execute(f"DROP FUNCTION reconciliation_follow_{parent}()")
    for table, column, parent, name in _KEYS:
        op.create_foreign_key(
            op.f(f"fk_{table}_{name}"), table, parent, [column], ["id"], ondelete="CASCADE"
        )
    op.drop_constraint(op.f("pk_reconciliation_matches"), "reconciliation_matches", type_="primary")
    op.create_unique_constraint(
        op.f("uq_reconciliation_matches_sale_id_kind_source_key"),
        "reconciliation_matches",
        ["sale_id", "kind", "source_key"],
    )
    op.execute("ALTER TABLE reconciliation_matches ADD COLUMN id bigserial")
    op.create_primary_key(op.f("pk_reconciliation_matches"), "reconciliation_matches", ["id"])
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
    op.drop_constraint(
        op.f("ck_reconciliation_matches_kind_known"), "reconciliation_matches", type_="check"
    )
    # Stripe's matches come back as rows with the next reconciliation of each sale.
    op.create_check_constraint(
        op.f("ck_reconciliation_matches_kind_known"),
        "reconciliation_matches",
        "kind IN ('stripe_charge', 'stripe_refund', 'card_purchase', 'card_refund')",
    )
