"""Celery tasks for reconciliation. Each takes ids only, opens its own transactions, and is
safe to run twice (late acknowledgement may deliver it again)."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from celery import shared_task
from sqlalchemy.exc import OperationalError

from commerce import runtime
from commerce.db import transaction, utcnow
from commerce.errors import ProviderError
from commerce.payouts.models import Payout
from commerce.reconciliation import engine, payouts, services

log = logging.getLogger(__name__)

#: Tries that wait for a line's sale event before its absence is recorded as a mismatch.
WAIT_RETRIES = 5
#: Tries to find a payout row not visible yet.
MISSING_RETRIES = 3
#: Tries in all, Stripe's outages included.
MAX_RETRIES = 10
#: A payout whose lines were not listed this long after it was paid was never queued.
SWEEP_AFTER = timedelta(minutes=10)


def _countdown(retries: int) -> float:
    """5 s, 10 s, 20 s, ... capped at 10 minutes, with jitter."""
    ceiling = min(5 * 2**retries, 600)
    return random.uniform(ceiling / 2, ceiling)


@shared_task(bind=True, name="reconciliation.fetch_payout_lines", max_retries=MAX_RETRIES)
def fetch_payout_lines(self, payout_id: str) -> str | None:  # type: ignore[no-untyped-def]
    """List the payout's balance transactions from Stripe, store them, tie them to sales
    and check the payout's amount against them."""
    retries = self.request.retries
    with transaction(runtime.sessions()) as session:
        payout = session.get(Payout, payout_id)
        account = payout.stripe_account if payout is not None else None
    if payout is None:
        # Sent after a savepoint released rather than after the transaction committed, the
        # task can be ahead of the row: look again shortly, then give up (it rolled back).
        if retries < MISSING_RETRIES:
            raise self.retry(countdown=1 + retries)
        return None
    try:
        listed = payouts.list_balance_transactions(payout_id, connected_account=account)
    except ProviderError as exc:
        if not exc.retryable or retries >= MAX_RETRIES:
            log.error("lines of payout %s not listed: %s", payout_id, exc)
            raise
        raise self.retry(exc=exc, countdown=_countdown(retries)) from exc
    with transaction(runtime.sessions()) as session:
        check = payouts.record_lines(session, payout_id, listed, final=retries >= WAIT_RETRIES)
    if check is None:
        return None
    if check.status == "waiting":
        log.info("payout %s waits for the sales of %s", payout_id, ", ".join(check.waiting))
        raise self.retry(countdown=_countdown(retries))
    return check.status


@shared_task(name="reconciliation.sweep_payouts")
def sweep_payouts() -> int:
    """Queue the payouts whose lines were never listed (their task was lost), and those with
    a line whose sale's event arrived after their last check gave up waiting."""
    with transaction(runtime.sessions()) as session:
        ids = payouts.unfetched_payouts(session, older_than=utcnow() - SWEEP_AFTER)
        ids += payouts.payouts_explained_since(session)
    for payout_id in dict.fromkeys(ids):
        fetch_payout_lines.apply_async(args=[payout_id])
    return len(ids)


@shared_task(bind=True, name="reconciliation.run_batch", max_retries=5)
def run_batch(self, run_id: str) -> str | None:  # type: ignore[no-untyped-def]
    """Run a queued batch over its period. Its merchants are reconciled in chunks, each
    committed on its own (`engine.reconcile_period`); the run, its attribution and summary
    commit together after them. A failure is recorded on the run in a transaction of its
    own."""
    try:
        with transaction(runtime.sessions()) as session:
            ran = services.execute_run(session, run_id, sessions=runtime.sessions())
    except OperationalError as exc:
        # The database went away or a lock waited too long: the run is still queued.
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc
    except Exception as exc:
        log.exception("reconciliation run %s failed", run_id)
        with transaction(runtime.sessions()) as session:
            services.fail_run(session, run_id, f"{type(exc).__name__}: {exc}"[:2000])
        return "failed"
    return "succeeded" if ran else None


@shared_task(name="reconciliation.sweep_clearings")
def sweep_clearings() -> int:
    """Reconcile the authorizations that time alone may have made missing their clearing."""
    as_of = utcnow()
    with transaction(runtime.sessions()) as session:
        start, end = services.clearing_sweep_period(session, as_of=as_of)
    outcome = engine.reconcile_period(runtime.sessions(), start, end, as_of=as_of)
    return outcome.changed["exceptions_written"]


#: A drain stops taking more after this long; the next one goes on.
DRAIN_BUDGET_SECONDS = 20.0


@shared_task(bind=True, name="reconciliation.drain", max_retries=5)
def drain(self) -> int:  # type: ignore[no-untyped-def]
    """Reconcile and attribute what events queued, a batch per transaction, until the queue
    is empty or the budget is spent. A database failure rolls the batch back and retries
    the task; a merchant that fails otherwise waits in the queue (engine.drain)."""
    import time

    started = time.monotonic()
    total = 0
    try:
        while time.monotonic() - started < DRAIN_BUDGET_SECONDS:
            with transaction(runtime.sessions()) as session:
                taken = engine.drain(session)
            total += taken
            if not taken:
                break
    except OperationalError as exc:
        # A deadlock with another drain, a lock wait too long, the database restarting.
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc
    return total
