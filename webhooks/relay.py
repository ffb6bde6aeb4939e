"""The inbox relay: gets stored events to the workers, so no door sends a task from its request.

A door commits the event's `pending` row and answers; that row is the hand-off. Each Celery
worker runs one `Relay` thread in its main process (`InboxRelayStep`). Every POLL_SECONDS,
and at once when notified on the `inbox` channel (`inbox.enqueue`: a waiting event woken, a
replay), it claims the due rows and sends their processing tasks, in one transaction
(`send_due`):

1. `SELECT id ... FOR UPDATE SKIP LOCKED`: the rows are locked, so a second relay (another
   worker) skips them and never sends them at the same time;
2. one `process_event` task is sent per row, on one producer, failing fast if the broker is
   down;
3. the rows that were sent are leased (`next_attempt_at` moves `lease` ahead), so no relay
   claims them again while their task is on its way; those not sent stay due;
4. COMMIT. A relay whose send failed leaves the unsent rows due: it (or another relay, or the
   sweep) sends them again later. A relay whose commit failed after sending leaves the rows
   due too: their task may then be delivered twice, which processing absorbs (the second
   delivery finds the row processed and does nothing, see `inbox.process`).

Why a poll and not a NOTIFY from every door: PostgreSQL serializes the commits of all
transactions that NOTIFY (a database-wide lock held through the commit's WAL flush). With 16
committers that measured 230-430 commits per second against 1,800-2,700 without. A poll of
the partial `due` index a few times a second costs the idle worker next to nothing, and an
event waits at most POLL_SECONDS before its task is sent.

A task that never ran (its worker was killed, Redis lost it) leaves its row `pending`; once
the lease has passed a relay claims it again. The beat's periodic sweep (`webhooks.sweep`)
runs the same `send_due`, as a safety net for a relay that is not running.

The relay never stops the worker: a lost PostgreSQL connection is reopened with backoff, a
broker that refuses a send is tried again with backoff, and every error is logged and
survived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from celery import bootsteps
from sqlalchemy.engine import Engine, make_url

from commerce.db import make_engine, normalize_url, utcnow
from webhooks import inbox

log = logging.getLogger(__name__)

#: How long a sent event is left to its task before a relay sends it again. Longer than a
#: task normally waits in the queue; a task that outlives it is delivered twice, harmlessly.
LEASE = timedelta(seconds=60)
#: How often a relay looks for due rows: new events, events due by their backoff, leases that
#: ran out. Notified wake-ups come sooner.
POLL_SECONDS = 0.25
#: Rows claimed and sent per transaction: the claim's row locks are held while they are sent.
BATCH = 100
#: A relay sends no more while this many sent events wait to be taken up (see `send_due`).
QUEUE_LIMIT = 300
#: A send that the broker refuses fails within a fraction of a second (one reconnection), so
#: the claimed rows are not held locked through a Redis outage.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.1}
#: The wait after a failure grows from the first to the last, doubling.
BACKOFF = (0.5, 5.0)


class SendFailed(Exception):
    """The broker refused a task; the rows not sent stay due."""


def send_due(
    engine: Engine,
    *,
    grace: timedelta = timedelta(0),
    ids: Sequence[str] | None = None,
    limit: int = BATCH,
    lease: timedelta = LEASE,
) -> int:
    """Claim due inbox rows (all, or those of `ids`), send their tasks and lease the ones sent,
    in one transaction; returns how many were sent. Raises `SendFailed` (after committing the
    leases of those sent before) when the broker refused one."""
    from webhooks import tasks

    sent: list[str] = []
    failure: Exception | None = None
    with engine.begin() as connection:
        now = utcnow()
        if ids is None:
            # Backpressure: no more than QUEUE_LIMIT events sent and not yet taken up. A task
            # then waits in the queue for far less than its lease (at any sane processing
            # rate), so leases run out only for lost tasks and a backlog is not sent twice.
            waiting = inbox.outstanding(connection, now=now, limit=QUEUE_LIMIT)
            limit = min(limit, QUEUE_LIMIT - waiting)
            if limit <= 0:
                return 0
        claimed = inbox.claim(connection, now=now, grace=grace, limit=limit, ids=ids)
        if not claimed:
            return 0
        try:
            with tasks.process_event.app.producer_or_acquire() as producer:
                for inbox_id in claimed:
                    tasks.process_event.apply_async(
                        args=[inbox_id], producer=producer, retry_policy=PUBLISH_RETRY
                    )
                    sent.append(inbox_id)
        except Exception as exc:  # the broker's errors vary by transport
            failure = exc
        if sent:
            inbox.lease(connection, sent, until=utcnow() + lease)
    if failure is not None:
        raise SendFailed(
            f"{len(claimed) - len(sent)} of {len(claimed)} inbox events not sent: "
            f"{_first_line(failure)}"
        ) from failure
    return len(sent)


class Relay:
    """A thread that listens for new inbox rows and sends their tasks (see the module)."""

    def __init__(
        self,
        database_url: str,
        *,
        poll_seconds: float = POLL_SECONDS,
        batch: int = BATCH,
        lease: timedelta = LEASE,
    ) -> None:
        url = make_url(normalize_url(database_url))
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._url = url.render_as_string(hide_password=False)
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.lease = lease
        self._engine: Engine | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Events sent since start, for logs and tests.
        self.sent = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Relay:
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name="inbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Listen and relay until stopped; reconnect with backoff whatever fails."""
        delay = BACKOFF[0]
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {inbox.CHANNEL}")
                    log.info("inbox relay listening on %r", inbox.CHANNEL)
                    delay = BACKOFF[0]
                    self._listen(conn)
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning(
                    "inbox relay: the database is unreachable (%s); retrying in %.1f s",
                    _first_line(exc),
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
        log.info("inbox relay stopped after sending %d events", self.sent)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        # Relay at once: rows may have been committed while no relay ran.
        next_poll = 0.0
        send_delay = BACKOFF[0]
        while not self._stopping.is_set():
            wait = min(1.0, max(0.0, next_poll - time.monotonic()))
            woken = bool(list(conn.notifies(timeout=wait, stop_after=1)))
            if woken:
                # Every notification queued so far is answered by the one pass below.
                list(conn.notifies(timeout=0))
            elif time.monotonic() < next_poll:
                continue
            next_poll = time.monotonic() + self.poll_seconds
            try:
                self.relay_all()
                send_delay = BACKOFF[0]
            except SendFailed as exc:
                log.warning("inbox relay: %s; trying again in %.1f s", _first_line(exc), send_delay)
                self._stopping.wait(send_delay)
                send_delay = min(send_delay * 2, BACKOFF[1])
                next_poll = 0.0

    def relay_all(self) -> int:
        """Send every due row, a batch per transaction; returns how many were sent."""
        if self._engine is None:
            # A connection of the relay's own: never one that a forked pool child inherits.
            # No pre-ping: a poll on a dead connection fails and `run` reconnects.
            self._engine = make_engine(self._url, pool_size=1, max_overflow=0, pool_pre_ping=False)
        total = 0
        while not self._stopping.is_set():
            sent = send_due(self._engine, limit=self.batch, lease=self.lease)
            total += sent
            self.sent += sent
            if sent < self.batch:
                break
        if total:
            log.info("inbox relay sent %d events", total)
        return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def inbox_relay_step(database_url: str) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that runs a `Relay` on `database_url` while the worker runs:
    `app.steps["worker"].add(inbox_relay_step(url))`."""

    class InboxRelayStep(bootsteps.StartStopStep):
        """The inbox relay, in the worker's main process, started after the pool."""

        requires = ("celery.worker.components:Pool",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.relay: Relay | None = None

        def start(self, parent: Any) -> None:
            self.relay = Relay(database_url).start()

        def stop(self, parent: Any) -> None:
            if self.relay is not None:
                self.relay.stop()
                self.relay = None

        terminate = stop

    return InboxRelayStep


__all__ = ["BATCH", "LEASE", "Relay", "SendFailed", "inbox_relay_step", "send_due"]
