"""An attribution is one purchase and one touchpoint; the credit under each model is a view.

Last touch, first touch and linear all follow from a touchpoint's place among the
purchase's touchpoints in time, so storing one row per model repeated the same purchase
and touchpoint up to three times (1.58 million rows for 0.73 million touches at a million
purchases), and every row cost the batch its foreign key checks and index entries. A row
now keeps the purchase (its whole amount, and its refunds within the return period of the
touchpoint's offer), the touchpoint, and its place: the `touch_rank`-th of `touches`. The
view `attribution_credits` gives the credits per model as the rows were before.

The stored attributions are derived data and cannot be turned into the new rows exactly
(a linear share does not give back the refunds it was cut from), so both directions queue
the cardholders they belong to for the reconciliation drain, which attributes them again
under the code of the day, and empty the table.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: The drain (commerce/reconciliation/engine.py) attributes every cardholder queued here.
_REQUEUE = """
INSERT INTO reconciliation_queue (merchant_id, partner_id, customer_ref, enqueued_at)
SELECT DISTINCT a.merchant_id, c.partner_id, c.customer_ref, now()
  FROM attributions a
  JOIN card_transactions c ON c.id = a.card_transaction_id
  JOIN merchants m ON m.id = a.merchant_id
 WHERE c.customer_ref IS NOT NULL
"""

#: The credits under each model, one row per (model, attribution), as the rows were stored
#: before. Each branch is one model, so a reader's filter on `model` reads one branch.
#: Linear gives the n-th of k touchpoints floor(a*n/k) - floor(a*(n-1)/k) of the purchase
#: and of its refunds, which add up to them exactly.
_CREDITS = """
CREATE VIEW attribution_credits AS
SELECT id, merchant_id, 'last_touch' AS model, purchase_key, card_transaction_id, offer_id,
       conversation_id, touchpoint_id, touch_kind, "window", CAST(1 AS numeric(7, 6)) AS weight,
       amount, refunded, currency, purchased_at, touched_at, status, cardholder
  FROM attributions WHERE touch_rank = touches
UNION ALL
SELECT id, merchant_id, 'first_touch', purchase_key, card_transaction_id, offer_id,
       conversation_id, touchpoint_id, touch_kind, "window", CAST(1 AS numeric(7, 6)),
       amount, refunded, currency, purchased_at, touched_at, status, cardholder
  FROM attributions WHERE touch_rank = 1
UNION ALL
SELECT id, merchant_id, 'linear', purchase_key, card_transaction_id, offer_id,
       conversation_id, touchpoint_id, touch_kind, "window",
       CAST(round(1.0 / touches, 6) AS numeric(7, 6)),
       amount * touch_rank / touches - amount * (touch_rank - 1) / touches,
       refunded * touch_rank / touches - refunded * (touch_rank - 1) / touches,
       currency, purchased_at, touched_at, status, cardholder
  FROM attributions
"""


def _requeue_and_empty() -> None:
    op.execute(_REQUEUE)
    op.execute("DELETE FROM attributions")


def upgrade() -> None:
    _requeue_and_empty()
    op.drop_constraint(
        op.f("uq_attributions_purchase_key_model_touchpoint_id"), "attributions", type_="unique"
    )
    op.drop_constraint(op.f("ck_attributions_model_known"), "attributions", type_="check")
    op.drop_constraint(op.f("ck_attributions_weight_range"), "attributions", type_="check")
    op.drop_column("attributions", "model")
    op.drop_column("attributions", "weight")
    op.add_column("attributions", sa.Column("touch_rank", sa.Integer(), nullable=False))
    op.add_column("attributions", sa.Column("touches", sa.Integer(), nullable=False))
    op.create_check_constraint(
        op.f("ck_attributions_touch_rank_range"),
        "attributions",
        "touch_rank >= 1 AND touch_rank <= touches",
    )
    op.create_unique_constraint(
        op.f("uq_attributions_purchase_key_touchpoint_id"),
        "attributions",
        ["purchase_key", "touchpoint_id"],
    )
    op.execute(_CREDITS)


def downgrade() -> None:
    op.execute("DROP VIEW attribution_credits")
    _requeue_and_empty()
    op.drop_constraint(
        op.f("uq_attributions_purchase_key_touchpoint_id"), "attributions", type_="unique"
    )
    op.drop_constraint(op.f("ck_attributions_touch_rank_range"), "attributions", type_="check")
    op.drop_column("attributions", "touch_rank")
    op.drop_column("attributions", "touches")
    op.add_column("attributions", sa.Column("model", sa.String(length=16), nullable=False))
    op.add_column(
        "attributions", sa.Column("weight", sa.Numeric(precision=7, scale=6), nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_attributions_model_known"),
        "attributions",
        "model IN ('last_touch', 'first_touch', 'linear')",
    )
    op.create_check_constraint(
        op.f("ck_attributions_weight_range"), "attributions", "weight > 0 AND weight <= 1"
    )
    op.create_unique_constraint(
        op.f("uq_attributions_purchase_key_model_touchpoint_id"),
        "attributions",
        ["purchase_key", "model", "touchpoint_id"],
    )
