"""Reconciliation as the merchant and the operator use it: tolerances, exceptions, a sale's
status, and batch runs over a period.

The rules themselves live in engine.py; everything here reads what it wrote or asks it to
run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from commerce.attribution import engine as attribution
from commerce.db import utcnow
from commerce.errors import Conflict, InvalidInput, NotFound
from commerce.ids import new_id
from commerce.reconciliation import engine
from commerce.reconciliation.models import (
    DEFAULT_AMOUNT_TOLERANCE,
    DEFAULT_CLEARING_DAYS,
    DEFAULT_TIME_WINDOW_SECONDS,
    EXCEPTION_STATUSES,
    EXCEPTION_TYPES,
    ReconciliationException,
    ReconciliationRun,
    ReconciliationSettings,
)
from commerce.sales.models import Sale

#: A batch run over more than this is refused: split it (each chunk of a run holds its
#: merchants' reconciliation lock for the whole period's work).
MAX_RUN_PERIOD = timedelta(days=366)


# ---------------------------------------------------------------------------- tolerances


def get_settings(session: Session, merchant_id: str) -> dict[str, Any]:
    row = session.get(ReconciliationSettings, merchant_id)
    return {
        "amount_tolerance": row.amount_tolerance if row else DEFAULT_AMOUNT_TOLERANCE,
        "time_window_seconds": row.time_window_seconds if row else DEFAULT_TIME_WINDOW_SECONDS,
        "clearing_days": row.clearing_days if row else DEFAULT_CLEARING_DAYS,
    }


def update_settings(session: Session, merchant_id: str, **changes: Any) -> dict[str, Any]:
    """Change the merchant's tolerances. They apply from the next reconciliation of each
    sale; run a batch over a period to apply them to it at once."""
    row = session.get(ReconciliationSettings, merchant_id)
    if row is None:
        row = ReconciliationSettings(
            merchant_id=merchant_id,
            amount_tolerance=DEFAULT_AMOUNT_TOLERANCE,
            time_window_seconds=DEFAULT_TIME_WINDOW_SECONDS,
            clearing_days=DEFAULT_CLEARING_DAYS,
        )
        session.add(row)
    for name, value in changes.items():
        if value is not None:
            setattr(row, name, value)
    session.flush()
    return get_settings(session, merchant_id)


# ---------------------------------------------------------------------------- exceptions


def exceptions_query(
    merchant_id: str | None,
    *,
    types: Sequence[str] = (),
    statuses: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    sale_id: str | None = None,
) -> Select[Any]:
    """The merchant's exceptions (every merchant's for None: the operator), filtered;
    `start`/`end` bound when what each is about happened (`opened_at`)."""
    for value in types:
        if value not in EXCEPTION_TYPES:
            raise InvalidInput({"type": [f"Must be one of {', '.join(EXCEPTION_TYPES)}."]})
    for value in statuses:
        if value not in EXCEPTION_STATUSES:
            raise InvalidInput({"status": [f"Must be one of {', '.join(EXCEPTION_STATUSES)}."]})
    query = select(ReconciliationException)
    if merchant_id is not None:
        query = query.where(ReconciliationException.merchant_id == merchant_id)
    if types:
        query = query.where(ReconciliationException.type.in_(types))
    if statuses:
        query = query.where(ReconciliationException.status.in_(statuses))
    if start is not None:
        query = query.where(ReconciliationException.opened_at >= start)
    if end is not None:
        query = query.where(ReconciliationException.opened_at < end)
    if sale_id is not None:
        query = query.where(ReconciliationException.sale_id == sale_id)
    return query


def get_exception(
    session: Session, merchant_id: str | None, exception_id: str
) -> ReconciliationException:
    """One exception of the merchant's (of any merchant's for None: the operator)."""
    row = session.get(ReconciliationException, exception_id)
    if row is None or (merchant_id is not None and row.merchant_id != merchant_id):
        raise NotFound("exception")
    return row


def acknowledge(
    session: Session, merchant_id: str, exception_id: str, note: str
) -> ReconciliationException:
    """The merchant has seen an open exception and says why; it stays acknowledged until
    later events explain it (then it is resolved)."""
    row = session.scalars(
        select(ReconciliationException)
        .where(ReconciliationException.id == exception_id)
        .with_for_update()
    ).one_or_none()
    if row is None or row.merchant_id != merchant_id:
        raise NotFound("exception")
    if row.status == "resolved":
        raise Conflict("The exception is resolved: later events explained it.")
    row.status = "acknowledged"
    row.note = note
    row.acknowledged_at = row.acknowledged_at or utcnow()
    row.updated_at = utcnow()
    session.flush()
    return row


# ---------------------------------------------------------------------------- a sale


def sale_reconciliation(session: Session, sale: Sale) -> dict[str, Any]:
    """A sale's reconciliation status, its matches and its exceptions.

    - `unpaid`: Stripe has reported no charge;
    - `exceptions`: a difference is open or acknowledged;
    - `reconciled`: paid at Stripe and nothing differs.
    """
    matches = session.execute(
        text(
            f"SELECT * FROM ({engine.MATCHES}) m"  # noqa: S608 - the engine's own SQL
            " WHERE m.sale_id = :sale_id ORDER BY m.kind, m.source_key"
        ),
        {"sale_id": sale.id},
    ).all()
    exceptions = list(
        session.scalars(
            select(ReconciliationException)
            .where(
                ReconciliationException.sale_id == sale.id,
                ReconciliationException.status != "resolved",
            )
            .order_by(ReconciliationException.opened_at, ReconciliationException.id)
        )
    )
    if exceptions:
        status = "exceptions"
    elif any(m.kind == "stripe_charge" for m in matches):
        status = "reconciled"
    else:
        status = "unpaid"
    return {"status": status, "matches": matches, "exceptions": exceptions}


# ---------------------------------------------------------------------------- batch runs


def create_run(
    session: Session,
    *,
    merchant_id: str | None,
    start: datetime,
    end: datetime,
) -> ReconciliationRun:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput({"from": ["Times must carry a time zone."]})
    if end <= start:
        raise InvalidInput({"to": ["Must be after `from`."]})
    if end - start > MAX_RUN_PERIOD:
        raise InvalidInput({"to": ["A run covers at most 366 days: split the period."]})
    run = ReconciliationRun(
        id=new_id("reconciliation_run"),
        merchant_id=merchant_id,
        period_start=start,
        period_end=end,
        status="queued",
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, merchant_id: str | None, run_id: str) -> ReconciliationRun:
    """One run of the merchant's (any run for None: the operator)."""
    run = session.get(ReconciliationRun, run_id)
    if run is None or (merchant_id is not None and run.merchant_id != merchant_id):
        raise NotFound("run")
    return run


def execute_run(
    session: Session,
    run_id: str,
    *,
    sessions: Callable[[], Session],
    as_of: datetime | None = None,
) -> bool:
    """Run a queued batch; False if it is not queued (already run, or taken by another
    worker). The period's merchants are reconciled in chunks, each in a session of its own
    from `sessions` that commits when the chunk is done (`engine.reconcile_period`); the
    attribution of the period, the summary and the run's status are written in the
    caller's transaction."""
    run = session.scalars(
        select(ReconciliationRun)
        .where(ReconciliationRun.id == run_id, ReconciliationRun.status == "queued")
        .with_for_update(skip_locked=True)
    ).one_or_none()
    if run is None:
        return False
    run.started_at = utcnow()
    outcome = engine.reconcile_period(
        sessions, run.period_start, run.period_end, merchant_id=run.merchant_id, as_of=as_of
    )
    # Then off-platform attribution of what the period left unmatched.
    attributed = attribution.attribute_period(
        session, run.period_start, run.period_end, merchant_id=run.merchant_id
    )
    run.summary = {
        **summarize(session, run),
        "changed": outcome.changed,
        "attribution": {"purchases": attributed.purchases, "changed": attributed.changed},
    }
    run.status = "succeeded"
    run.finished_at = utcnow()
    session.flush()
    return True


def fail_run(session: Session, run_id: str, error: str) -> None:
    run = session.get(ReconciliationRun, run_id)
    if run is not None and run.status in ("queued", "running"):
        run.status = "failed"
        run.error = error
        run.finished_at = utcnow()
        session.flush()


_SUMMARY = """
WITH s AS (
    SELECT s.id, s.currency, s.amount, s.amount_captured, s.amount_refunded,
           EXISTS (SELECT 1 FROM sale_events e
                    WHERE e.sale_id = s.id AND e.kind = 'payment_succeeded'
                      AND e.source = 'stripe') AS charged,
           EXISTS (SELECT 1 FROM reconciliation_matches m
                    WHERE m.sale_id = s.id AND m.kind = 'card_purchase') AS card_matched,
           EXISTS (SELECT 1 FROM reconciliation_exceptions e
                    WHERE e.sale_id = s.id AND e.status <> 'resolved') AS differs
      FROM sales s
     WHERE s.created_at >= :start AND s.created_at < :end
       AND (CAST(:merchant_id AS text) IS NULL OR s.merchant_id = :merchant_id)
)
SELECT currency,
       count(*) AS sales,
       count(*) FILTER (WHERE charged AND NOT differs) AS reconciled,
       count(*) FILTER (WHERE differs) AS with_exceptions,
       count(*) FILTER (WHERE NOT charged AND NOT differs) AS unpaid,
       count(*) FILTER (WHERE card_matched) AS card_matched,
       coalesce(sum(amount), 0)::bigint AS gross,
       coalesce(sum(amount_captured), 0)::bigint AS captured,
       coalesce(sum(amount_refunded), 0)::bigint AS refunded,
       coalesce(sum(amount) FILTER (WHERE charged AND NOT differs), 0)::bigint
           AS reconciled_amount,
       coalesce(sum(amount) FILTER (WHERE differs), 0)::bigint AS exception_amount
  FROM s GROUP BY currency ORDER BY currency
"""

_SUMMARY_EXCEPTIONS = """
SELECT type, status, count(*)
  FROM reconciliation_exceptions
 WHERE opened_at >= :start AND opened_at < :end
   AND (CAST(:merchant_id AS text) IS NULL OR merchant_id = :merchant_id)
 GROUP BY type, status ORDER BY type, status
"""


def summarize(session: Session, run: ReconciliationRun) -> dict[str, Any]:
    """Sales of the period by outcome and currency, and exceptions by type and status."""
    params = {"start": run.period_start, "end": run.period_end, "merchant_id": run.merchant_id}
    by_currency = [dict(row._mapping) for row in session.execute(text(_SUMMARY), params)]
    totals = {
        key: sum(row[key] for row in by_currency)
        for key in ("sales", "reconciled", "with_exceptions", "unpaid", "card_matched")
    }
    exceptions: dict[str, dict[str, int]] = {}
    for type_, status, count in session.execute(text(_SUMMARY_EXCEPTIONS), params):
        exceptions.setdefault(type_, {})[status] = count
    return {**totals, "by_currency": by_currency, "exceptions": exceptions}


def clearing_sweep_period(session: Session, *, as_of: datetime) -> tuple[datetime, datetime]:
    """The period whose authorizations may have passed their clearing days since the last
    sweep: reconciling it (groups whole) opens `missing_clearing` where time alone made one.
    """
    low, high = session.execute(
        text(
            "SELECT coalesce(min(clearing_days), :d), coalesce(max(clearing_days), :d)"
            " FROM reconciliation_settings"
        ),
        {"d": DEFAULT_CLEARING_DAYS},
    ).one()
    low, high = min(low, DEFAULT_CLEARING_DAYS), max(high, DEFAULT_CLEARING_DAYS)
    return as_of - timedelta(days=high, hours=2), as_of - timedelta(days=low) + timedelta(hours=1)
