"""Keeping the report rollups current: folding the change log in, and rebuilding from scratch.

The triggers of migration 0008 append to `report_deltas` in the transaction of every change
to a sale's figures or a touchpoint (see commerce/reports/models.py). `fold` moves those rows
into the rollups; `rebuild` recomputes the rollups from `sales` and `touchpoints` and must
give exactly what the folds gave (tests/reports/test_rollups.py proves it).

One advisory lock keeps folds and rebuilds apart: two folds never upsert the same rollup rows
in different orders (no deadlock), and a rebuild never races a fold.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from commerce.reports.models import MEASURES

#: pg advisory lock key shared by folds and rebuilds ("reports" in ASCII).
LOCK_KEY = 0x7265706F727473
#: Deltas moved per fold statement; a fold loops until the log is empty.
FOLD_BATCH = 50_000
#: UTC origin of the buckets; any whole hour would do.
_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
QUARTER = f"date_bin('15 minutes', {{col}}, {_ORIGIN})"
HOUR = f"date_bin('1 hour', {{col}}, {_ORIGIN})"

_M = ", ".join(MEASURES)
_SUMS = ", ".join(f"sum({m})" for m in MEASURES)
_ADD = ", ".join(f"{m} = r.{m} + excluded.{m}" for m in MEASURES)
_NONZERO = " OR ".join(f"sum({m}) <> 0" for m in MEASURES)


def _upserts(source: str) -> str:
    """CTEs that add the rows of `source` (a CTE with the delta columns) to the three rollups."""
    quarter = QUARTER.format(col="at")
    hour = HOUR.format(col="at")
    return f"""
    offers AS (
        INSERT INTO report_offer_rollups AS r
            (merchant_id, bucket, offer_id, conversation_id, currency, {_M})
        SELECT merchant_id, {quarter}, offer_id, min(conversation_id), min(currency), {_SUMS}
        FROM {source} GROUP BY merchant_id, {quarter}, offer_id
        ON CONFLICT (merchant_id, bucket, offer_id) DO UPDATE SET {_ADD}
        RETURNING 1
    ),
    quarters AS (
        INSERT INTO report_merchant_quarters AS r (merchant_id, bucket, currency, {_M})
        SELECT merchant_id, {quarter}, currency, {_SUMS}
        FROM {source} GROUP BY merchant_id, {quarter}, currency
        ON CONFLICT (merchant_id, bucket, currency) DO UPDATE SET {_ADD}
        RETURNING 1
    ),
    hours AS (
        INSERT INTO report_merchant_hours AS r (merchant_id, bucket, currency, {_M})
        SELECT merchant_id, {hour}, currency, {_SUMS}
        FROM {source} GROUP BY merchant_id, {hour}, currency
        ON CONFLICT (merchant_id, bucket, currency) DO UPDATE SET {_ADD}
        RETURNING 1
    ),
    days AS (
        INSERT INTO report_merchant_days AS r (merchant_id, day, currency, {_M})
        SELECT s.merchant_id, (s.at AT TIME ZONE z.timezone)::date, s.currency, {_SUMS}
        FROM {source} AS s JOIN report_day_zones AS z ON z.merchant_id = s.merchant_id
        GROUP BY s.merchant_id, (s.at AT TIME ZONE z.timezone)::date, s.currency
        ON CONFLICT (merchant_id, day, currency) DO UPDATE SET {_ADD}
        RETURNING 1
    )
    """  # noqa: S608 - the SQL text holds fixed names only


_FOLD = f"""
WITH moved AS (
    DELETE FROM report_deltas
    WHERE id IN (SELECT id FROM report_deltas ORDER BY id LIMIT :batch)
    RETURNING merchant_id, at, offer_id, conversation_id, currency, {_M}
),
{_upserts("moved")}
SELECT (SELECT count(*) FROM moved)
"""  # noqa: S608

#: Every sale's and touchpoint's figures, straight from the raw tables: what the triggers add
#: up, computed in one pass. Unpaid sales and declined offers move no figure and are left out.
_FACTS = """
    SELECT s.merchant_id, s.created_at AS at, s.offer_id, s.conversation_id, s.currency,
           0 AS delivered, 0 AS viewed, 0 AS clicked, 0 AS accepted,
           (s.amount_captured > 0)::int AS paid, s.amount_captured AS gross,
           s.amount_refunded AS refunds,
           CASE WHEN s.state IN ('disputed', 'dispute_lost') THEN s.amount_disputed ELSE 0 END
               AS disputes,
           s.amount_captured - s.amount_refunded
           - CASE WHEN s.state IN ('disputed', 'dispute_lost') THEN s.amount_disputed ELSE 0 END
               AS net
    FROM sales AS s
    WHERE (s.amount_captured <> 0 OR s.amount_refunded <> 0
           OR (s.state IN ('disputed', 'dispute_lost') AND s.amount_disputed <> 0))
    {sale_filter}
    UNION ALL
    SELECT t.merchant_id, t.occurred_at, t.offer_id, t.conversation_id, o.currency,
           (t.kind = 'delivered')::int, (t.kind = 'viewed')::int, (t.kind = 'clicked')::int,
           (t.kind = 'accepted')::int, 0, 0, 0, 0, 0
    FROM touchpoints AS t JOIN offers AS o ON o.id = t.offer_id
    WHERE t.kind IN ('delivered', 'viewed', 'clicked', 'accepted')
    {touch_filter}
"""

ROLLUP_TABLES = (
    "report_offer_rollups",
    "report_merchant_quarters",
    "report_merchant_hours",
    "report_merchant_days",
)


@dataclass(frozen=True, slots=True)
class FoldResult:
    #: Delta rows moved into the rollups.
    folded: int
    #: False when another fold or a rebuild held the lock: nothing was done, try later.
    ran: bool = True


def fold_once(connection: Connection, *, batch: int = FOLD_BATCH) -> FoldResult:
    """Move up to `batch` deltas into the rollups, in the caller's transaction.

    One statement: the deleted deltas and the upserts see one snapshot, so a delta is added
    exactly once. Deltas of transactions still open are not visible and wait for the next fold.
    """
    locked = connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_KEY}
    ).scalar_one()
    if not locked:
        return FoldResult(0, ran=False)
    folded = connection.execute(text(_FOLD), {"batch": batch}).scalar_one()
    return FoldResult(folded)


def fold(engine: Engine, *, batch: int = FOLD_BATCH) -> FoldResult:
    """Fold the whole log, one committed batch at a time."""
    total = 0
    while True:
        with engine.begin() as connection:
            result = fold_once(connection, batch=batch)
        if not result.ran:
            return FoldResult(total, ran=total > 0)
        total += result.folded
        if result.folded < batch:
            return FoldResult(total)


def rebuild(engine: Engine, *, merchant_id: str | None = None) -> int:
    """Recompute the rollups (of one merchant, or all) from the raw tables; the rows written.

    Runs in one REPEATABLE READ transaction: the rollups are cleared and recomputed from one
    snapshot, and the deltas that snapshot already reflects are deleted with them, so changes
    committed while the rebuild runs are neither lost nor counted twice: their deltas were
    not visible to it and are folded afterwards. The lock is taken first, in a transaction
    of its own, so that the snapshot is taken after any fold in progress has committed.
    """
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        connection.commit()
        try:
            connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                return _rebuild(connection, merchant_id)
        finally:
            connection.execution_options(isolation_level="READ COMMITTED")
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            connection.commit()


def _rebuild(connection: Connection, merchant_id: str | None) -> int:
    params = {"m": merchant_id}
    where = "WHERE merchant_id = :m" if merchant_id else ""
    for table in (*ROLLUP_TABLES, "report_deltas"):
        connection.execute(text(f"DELETE FROM {table} {where}"), params)  # noqa: S608 - fixed names
    facts = _FACTS.format(
        sale_filter="AND s.merchant_id = :m" if merchant_id else "",
        touch_filter="AND t.merchant_id = :m" if merchant_id else "",
    )
    quarter = QUARTER.format(col="at")
    # The offer rollup first, from the raw rows; the merchant rollups from it (far fewer rows).
    offers = connection.execute(
        text(f"""
        INSERT INTO report_offer_rollups
            (merchant_id, bucket, offer_id, conversation_id, currency, {_M})
        SELECT merchant_id, {quarter}, offer_id, min(conversation_id), min(currency), {_SUMS}
        FROM ({facts}) AS facts
        GROUP BY merchant_id, {quarter}, offer_id
        HAVING {_NONZERO}
        """),  # noqa: S608 - no user input in the SQL text
        params,
    ).rowcount
    quarters = connection.execute(
        text(f"""
        INSERT INTO report_merchant_quarters (merchant_id, bucket, currency, {_M})
        SELECT merchant_id, bucket, currency, {_SUMS}
        FROM report_offer_rollups {where}
        GROUP BY merchant_id, bucket, currency
        HAVING {_NONZERO}
        """),  # noqa: S608
        params,
    ).rowcount
    hour = HOUR.format(col="bucket")
    hours = connection.execute(
        text(f"""
        INSERT INTO report_merchant_hours (merchant_id, bucket, currency, {_M})
        SELECT merchant_id, {hour}, currency, {_SUMS}
        FROM report_merchant_quarters {where}
        GROUP BY merchant_id, {hour}, currency
        HAVING {_NONZERO}
        """),  # noqa: S608
        params,
    ).rowcount
    # Days in each merchant's own zone, which becomes (again) the zone its days are cut in.
    connection.execute(
        text(f"""
        INSERT INTO report_day_zones (merchant_id, timezone)
        SELECT id, timezone FROM merchants {"WHERE id = :m" if merchant_id else ""}
        ON CONFLICT (merchant_id) DO UPDATE SET timezone = excluded.timezone
        """),  # noqa: S608
        params,
    )
    local_day = "(q.bucket AT TIME ZONE z.timezone)::date"
    days = connection.execute(
        text(f"""
        INSERT INTO report_merchant_days (merchant_id, day, currency, {_M})
        SELECT q.merchant_id, {local_day}, q.currency, {_SUMS}
        FROM report_merchant_quarters AS q
        JOIN report_day_zones AS z ON z.merchant_id = q.merchant_id
        {"WHERE q.merchant_id = :m" if merchant_id else ""}
        GROUP BY q.merchant_id, {local_day}, q.currency
        HAVING {_NONZERO}
        """),  # noqa: S608
        params,
    ).rowcount
    return offers + quarters + hours + days
