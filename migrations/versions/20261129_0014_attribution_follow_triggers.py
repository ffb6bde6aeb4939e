"""An attribution follows its card transaction and touchpoint by trigger, not by foreign key.

The two foreign keys left on `attributions` were checked once per row written (a trigger,
an index lookup and a row lock per row and key), which was the largest part of an
attribution batch's writing time. As for reconciliation's rows (migration 0012), a deletion
of card transactions or touchpoints now deletes their attributions in one statement, and
the attribution itself takes the lock the checks took on the rows it writes about, in one
statement per table (commerce/attribution/engine.py), so a consent ended or a touchpoint
deleted while it runs never leaves an attribution behind. Touchpoints deleted with their
offer, conversation or merchant reach the trigger through their own foreign keys' cascade.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: Parent table -> the column of attributions that names its rows, and the name of the
#: foreign key it replaces.
_FOLLOW = (
    ("card_transactions", "card_transaction_id", "card_transaction_id_card_transactions"),
    ("touchpoints", "touchpoint_id", "touchpoint_id_touchpoints"),
)

_FOLLOW_FUNCTION = """
CREATE FUNCTION attribution_follow_{parent}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM attributions WHERE {column} IN (SELECT id FROM gone);
    RETURN NULL;
END
$$
"""

_FOLLOW_TRIGGER = """
CREATE TRIGGER attribution_follow_{parent} AFTER DELETE ON {parent}
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
EXECUTE FUNCTION attribution_follow_{parent}()
"""


def upgrade() -> None:
    for parent, column, name in _FOLLOW:
        op.drop_constraint(op.f(f"fk_attributions_{name}"), "attributions", type_="foreignkey")
        op.execute(_FOLLOW_FUNCTION.format(parent=parent, column=column))
        op.execute(_FOLLOW_TRIGGER.format(parent=parent))


def downgrade() -> None:
    for parent, column, name in _FOLLOW:
        op.execute(f"DROP TRIGGER attribution_follow_{parent} ON {parent}")
        op.execute(f"DROP FUNCTION attribution_follow_{parent}()")
        op.execute(
            f"DELETE FROM attributions a WHERE NOT EXISTS"  # noqa: S608 - names from code
            f" (SELECT 1 FROM {parent} p WHERE p.id = a.{column})"
        )
        op.create_foreign_key(
            op.f(f"fk_attributions_{name}"),
            "attributions",
            parent,
            [column],
            ["id"],
            ondelete="CASCADE",
        )
