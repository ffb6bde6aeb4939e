"""Queued reconciliation items that fail wait, and are tried again later, alone.

A drain reconciles up to two thousand queued items in one transaction. An item whose
reconciliation fails for a reason that is not the database's (a fact the rules do not
expect, a fault in the code) used to roll the whole drain back, and every drain after it
took the same first items and failed again: one item stopped reconciliation for every
merchant. The drain now tries the merchants of a failed drain one at a time; the items of a
merchant that still fails go back to the queue with the attempt counted, the error, and a
time before which no drain takes them (a backoff that doubles up to six hours).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "reconciliation_queue",
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "reconciliation_queue", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("reconciliation_queue", sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("reconciliation_queue", "last_error")
    op.drop_column("reconciliation_queue", "retry_at")
    op.drop_column("reconciliation_queue", "attempts")
