"""Report rollups, the triggers that feed them, and dashboard sessions.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_MEASURES = (
    "delivered",
    "viewed",
    "clicked",
    "accepted",
    "paid",
    "gross",
    "refunds",
    "disputes",
    "net",
)


def _measure_columns() -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in _MEASURES]


# Statement-level triggers with transition tables: one grouped INSERT per statement, whatever
# the number of rows it touched, and nothing but inserts (no row of a rollup is locked by a
# writer). A row leaving (old_rows) counts negatively, a row arriving (new_rows) positively,
# so INSERT, UPDATE and DELETE are one rule; changes that move no figure leave no delta.
_SALE_FIGURES = """
    SELECT merchant_id, created_at, offer_id, conversation_id, currency, {sign} AS sign,
           (amount_captured > 0)::int AS paid, amount_captured AS gross,
           amount_refunded AS refunds,
           CASE WHEN state IN ('disputed', 'dispute_lost') THEN amount_disputed ELSE 0 END
               AS disputes
    FROM {table}
"""
_SALE_DELTAS = """
    INSERT INTO report_deltas (merchant_id, at, offer_id, conversation_id, currency,
        delivered, viewed, clicked, accepted, paid, gross, refunds, disputes, net)
    SELECT merchant_id, created_at, offer_id, conversation_id, currency, 0, 0, 0, 0,
           sum(sign * paid), sum(sign * gross), sum(sign * refunds), sum(sign * disputes),
           sum(sign * (gross - refunds - disputes))
    FROM ({rows}) AS changed
    GROUP BY merchant_id, created_at, offer_id, conversation_id, currency
    HAVING sum(sign * paid) <> 0 OR sum(sign * gross) <> 0 OR sum(sign * refunds) <> 0
        OR sum(sign * disputes) <> 0;
"""
_TOUCH_FIGURES = """
    SELECT t.merchant_id, t.occurred_at, t.offer_id, t.conversation_id, o.currency,
           {sign} AS sign, t.kind
    FROM {table} AS t JOIN offers AS o ON o.id = t.offer_id
    WHERE t.kind IN ('delivered', 'viewed', 'clicked', 'accepted')
"""
_TOUCH_DELTAS = """
    INSERT INTO report_deltas (merchant_id, at, offer_id, conversation_id, currency,
        delivered, viewed, clicked, accepted, paid, gross, refunds, disputes, net)
    SELECT merchant_id, occurred_at, offer_id, conversation_id, currency,
           sum(sign * (kind = 'delivered')::int), sum(sign * (kind = 'viewed')::int),
           sum(sign * (kind = 'clicked')::int), sum(sign * (kind = 'accepted')::int),
           0, 0, 0, 0, 0
    FROM ({rows}) AS changed
    GROUP BY merchant_id, occurred_at, offer_id, conversation_id, currency;
"""


def _function(name: str, figures: str, deltas: str) -> str:
    def rows(*parts: tuple[str, str]) -> str:
        return " UNION ALL ".join(figures.format(sign=s, table=t) for s, t in parts)

    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {deltas.format(rows=rows(("1", "new_rows")))}
    ELSIF TG_OP = 'UPDATE' THEN
        {deltas.format(rows=rows(("1", "new_rows"), ("-1", "old_rows")))}
    ELSE
        {deltas.format(rows=rows(("-1", "old_rows")))}
    END IF;
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "report_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offer_id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_measure_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_deltas")),
    )
    op.create_index(
        "ix_report_deltas_merchant_id_at", "report_deltas", ["merchant_id", "at"], unique=False
    )
    op.create_table(
        "report_offer_rollups",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offer_id", sa.String(length=32), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_measure_columns(),
        sa.PrimaryKeyConstraint(
            "merchant_id", "bucket", "offer_id", name=op.f("pk_report_offer_rollups")
        ),
    )
    for table in ("report_merchant_hours", "report_merchant_quarters"):
        op.create_table(
            table,
            sa.Column("merchant_id", sa.String(length=32), nullable=False),
            sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
            sa.Column("currency", sa.String(length=3), nullable=False),
            *_measure_columns(),
            sa.PrimaryKeyConstraint("merchant_id", "bucket", "currency", name=op.f(f"pk_{table}")),
        )
    op.create_table(
        "report_merchant_days",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_measure_columns(),
        sa.PrimaryKeyConstraint(
            "merchant_id", "day", "currency", name=op.f("pk_report_merchant_days")
        ),
    )
    op.create_table(
        "report_day_zones",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_report_day_zones_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_report_day_zones")),
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("api_key_id", sa.String(length=32), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_dashboard_sessions_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_dashboard_sessions_merchant_id_merchants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_dashboard_sessions")),
    )
    op.create_index(
        op.f("ix_dashboard_sessions_merchant_id"), "dashboard_sessions", ["merchant_id"]
    )

    op.execute(_function("report_sale_deltas", _SALE_FIGURES, _SALE_DELTAS))
    op.execute(_function("report_touchpoint_deltas", _TOUCH_FIGURES, _TOUCH_DELTAS))
    # A new merchant's days are cut in its zone from the start (it has no sales yet).
    op.execute("""
CREATE FUNCTION report_day_zone_of_new_merchants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_day_zones (merchant_id, timezone)
    SELECT id, timezone FROM new_rows
    ON CONFLICT (merchant_id) DO NOTHING;
    RETURN NULL;
END
$$;
""")
    op.execute(
        "CREATE TRIGGER merchants_report_day_zone AFTER INSERT ON merchants"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION report_day_zone_of_new_merchants()"
    )
    for table, function in (
        ("sales", "report_sale_deltas"),
        ("touchpoints", "report_touchpoint_deltas"),
    ):
        op.execute(
            f"CREATE TRIGGER {table}_report_insert AFTER INSERT ON {table}"
            f" REFERENCING NEW TABLE AS new_rows"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_report_update AFTER UPDATE ON {table}"
            f" REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_report_delete AFTER DELETE ON {table}"
            f" REFERENCING OLD TABLE AS old_rows"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS merchants_report_day_zone ON merchants")
    op.execute("DROP FUNCTION IF EXISTS report_day_zone_of_new_merchants()")
    for table in ("sales", "touchpoints"):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_report_{event} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS report_sale_deltas()")
    op.execute("DROP FUNCTION IF EXISTS report_touchpoint_deltas()")
    op.drop_index(op.f("ix_dashboard_sessions_merchant_id"), table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_table("report_day_zones")
    op.drop_table("report_merchant_days")
    op.drop_table("report_merchant_quarters")
    op.drop_table("report_merchant_hours")
    op.drop_table("report_offer_rollups")
    op.drop_index("ix_report_deltas_merchant_id_at", table_name="report_deltas")
    op.drop_table("report_deltas")
