"""One run of the stream under faults, and the checks every such run must pass.

While the stream is delivered over about a minute:

* (c) at about 5 s, a worker is SIGKILLed in the middle of a task: the test holds the row locks
  of all sales, waits until a worker's session is blocked on one (its transaction open, the
  inbox row locked, the handler half-way), kills that worker's whole process group, lets go
  of the locks and starts a new worker;
* (a) at about 18 s, PostgreSQL is restarted (a fast shutdown ends every session);
* (b) at about 25 s, Redis is stopped, and started again 30 s later.

Then every delivery that got no 2xx is sent again, as its sender would, and the run waits
until every event has reached a final status in the inbox.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.support.stack import Cluster, Service
from tests.support.stream import (
    Answer,
    Books,
    Stream,
    deliver,
    effects_per_event,
    inbox_rows,
    wait_until_settled,
)

DURATION = 60.0
KILL_AT = 5.0
POSTGRES_RESTART_AT = 18.0
REDIS_DOWN_AT = 25.0
REDIS_DOWN_FOR = 30.0


@dataclass
class Run:
    answers: list[Answer]
    resent: list[Answer]
    faults: list[str] = field(default_factory=list)
    settled_after: float = 0.0
    delivered_in: float = 0.0

    def statuses(self) -> Counter[int]:
        return Counter(answer.status for answer in self.answers)


def _blocked_by(engine: Engine, holder_pid: int) -> list[tuple[str, str]]:
    """(application name, query) of the sessions waiting for a lock `holder_pid` holds."""
    with engine.connect() as connection:
        return [
            (row.application_name, row.query)
            for row in connection.execute(
                text(
                    "SELECT application_name, query FROM pg_stat_activity"
                    " WHERE :holder = ANY(pg_blocking_pids(pid))"
                ),
                {"holder": holder_pid},
            )
        ]


def kill_a_worker_mid_task(service: Service, engine: Engine, note: Callable[[str], None]) -> None:
    """Hold every sale's row lock until a worker blocks on one, then SIGKILL that worker.

    The next Stripe event a worker takes up about a sale blocks in `lock_sale`, with its
    transaction open, the inbox row locked and the handler half-way: the middle of a task,
    however far behind the stream the worker is.
    """
    holder = engine.connect()
    try:
        transaction = holder.begin()
        locked = holder.execute(text("SELECT id FROM sales FOR UPDATE")).all()
        pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        note(f"holding the row locks of all {len(locked)} sales")
        deadline = time.monotonic() + 180
        while True:
            blocked = [
                (name, query)
                for name, query in _blocked_by(engine, pid)
                if name.startswith("worker-")
            ]
            if blocked:
                break
            if time.monotonic() > deadline:
                with engine.connect() as connection:
                    sessions = connection.execute(
                        text(
                            "SELECT application_name, state, wait_event_type, left(query, 120)"
                            " FROM pg_stat_activity WHERE datname = current_database()"
                        )
                    ).all()
                raise AssertionError(f"no worker blocked on a sale within 180 s: {sessions}")
            time.sleep(0.02)
        victim = int(blocked[0][0].removeprefix("worker-"))
        # Within the worker's lock_timeout (10 s): no warm shutdown, no acknowledgement.
        service.kill_worker(victim)
        note(f"worker-{victim} SIGKILLed while blocked in: {' '.join(blocked[0][1].split())[:70]}")
        transaction.rollback()
    finally:
        holder.close()
    service.restart_worker(victim)
    note(f"worker-{victim} started again")


def run_under_faults(cluster: Cluster, service: Service, stream: Stream, engine: Engine) -> Run:
    faults: list[str] = []
    start = time.monotonic()

    def note(what: str) -> None:
        faults.append(f"{time.monotonic() - start:5.1f} s  {what}")

    def at(second: float) -> None:
        time.sleep(max(0.0, start + second - time.monotonic()))

    delivered: dict[str, Any] = {}

    def send() -> None:
        delivered["answers"] = deliver(service.urls, stream, stream.order, duration=DURATION)
        delivered["at"] = time.monotonic() - start

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        at(KILL_AT)
        kill_a_worker_mid_task(service, engine, note)

        at(POSTGRES_RESTART_AT)
        note("PostgreSQL stopping")
        cluster.restart_postgres()
        note("PostgreSQL started again")

        at(REDIS_DOWN_AT)
        cluster.stop_redis()
        note("Redis stopped")
        at(REDIS_DOWN_AT + REDIS_DOWN_FOR)
        cluster.start_redis()
        note("Redis started again")
        for n, status in service.revive_exited_workers():
            note(f"worker-{n} had exited on the outage (status {status}); supervisor started it")
    finally:
        sender.join()
    answers: list[Answer] = delivered["answers"]
    note(f"stream delivered ({len(answers)} deliveries)")

    # What got no 2xx is sent again, now that everything is up.
    again = [answer.event for answer in answers if not answer.ok]
    resent = deliver(service.urls, stream, again, duration=0, threads=4) if again else []
    note(f"{len(resent)} deliveries without a 2xx sent again")
    settled = wait_until_settled(engine, len(stream.events), timeout=600)
    note("every event in a final status")
    return Run(answers, resent, faults, settled, delivered["at"])


def check_exactly_once(stream: Stream, run: Run, engine: Engine, clean: Books) -> Books:
    """The guarantees; returns the run's books."""
    # Every event that got a non-2xx is accepted when resent.
    assert all(answer.ok for answer in run.resent), [
        (a.status, a.body) for a in run.resent if not a.ok
    ][:5]

    # Every event is in the inbox exactly once, under the id every 2xx answer gave for it.
    rows = inbox_rows(engine)
    with engine.connect() as connection:
        twice = connection.execute(
            text(
                "SELECT source, event_id FROM inbox_events"
                " GROUP BY source, event_id HAVING count(*) > 1"
            )
        ).all()
    assert not twice, twice[:5]
    assert len(rows) == len(stream.events)
    for answer in [*run.answers, *run.resent]:
        if answer.ok:
            event = stream.events[answer.event]
            assert answer.inbox_ids() == [rows[event.key]["id"]], (event.key, answer.body)

    # ... and processed exactly once: a final status, the processing on record (attempts
    # counts the attempts that committed, the failed ones too) ...
    for key, row in rows.items():
        assert row["status"] in ("processed", "ignored"), (key, row)
        assert row["attempts"] >= 1, (key, row)
        assert row["processed_at"] is not None, (key, row)
    # ... and no effect twice: one card transaction per partner event, one touchpoint per
    # postback, one fact per (sale, kind, provider object), whatever the redeliveries.
    for kind, counts in effects_per_event(engine).items():
        twice = {key: n for key, n in counts.items() if n != 1}
        assert not twice, (kind, list(twice.items())[:5])
    partner_rows = {
        row["id"]
        for key, row in rows.items()
        if key[0].startswith("partner:") and row["status"] == "processed"
    }
    assert set(effects_per_event(engine)["card_transactions"]) == partner_rows

    # The books equal those of the same stream delivered cleanly.
    books = Books.read(engine)
    assert not books.differences(clean), books.differences(clean)
    return books


def report(name: str, stream: Stream, run: Run, engine: Engine) -> str:
    attempts = Counter(row["attempts"] for row in inbox_rows(engine).values())
    lines = [
        f"{name}: {len(stream.order)} deliveries of {len(stream.events)} events "
        f"({dict(stream.kinds())}), {stream.duplicates} duplicates, {stream.reordered} reordered",
        f"  answers: {dict(sorted(run.statuses().items()))}; resent: {len(run.resent)}",
        f"  delivered in {run.delivered_in:.1f} s; settled {run.settled_after:.1f} s later",
        f"  inbox attempts per event: {dict(sorted(attempts.items()))}",
        *(f"  {fault}" for fault in run.faults),
    ]
    return "\n".join(lines)
