"""Reconciliation benchmark: the batch run beside a hand-written set-based SQL join.

Makes a database of its own, generates the ground-truth data set of
bench/reconcile_data.py (1,000,000 sales and about 1,050,000 card transactions by
default), then, in the same run and on the same data, times

- the engine's batch over the whole period as a run executes it
  (`engine.reconcile_period`: the merchants in chunks, `engine.BATCH_SESSIONS` chunks at a
  time, each in a session and transaction of its own), which writes every match and
  exception; `--sessions N` (repeatable) times it with N sessions instead, and
  `--sessions 1` is the batch in one session, chunk after chunk; and
- the reference: the card matching written by hand as set-based SQL, with nothing else,
  in one session (the usable card transactions at the merchants' MIDs, grouped into
  purchases; the candidate pairs by merchant, last four, brand and time window; then the
  exact pass, the tolerance pass and the time-window pass, each a greedy one-to-one
  assignment done as rounds of pairs that are each other's best by time apart, amount
  apart and ids);

checks that both give the same card matches (and that the engine's equal the ground
truth), and prints the timings as a Markdown table for docs/BENCHMARKS.md.

Usage: .venv/bin/python bench/reconcile.py [--sales 1000000] [--repeat 2]
       [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--keep]
       [--database NAME] [--sessions N ...] [--profile] [--engine-only]

`--database NAME` generates into a database of that name and keeps it, or, when it already
holds a generated data set, migrates it to the current schema and reuses it (generation
at 1,000,000 sales takes 7 to 35 minutes, with the machine's load). `--profile` prints the
batch's statements by time (summed over its sessions); `--engine-only` skips the
reference (for profiling, not for a result).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import sessionmaker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reconcile_data as data  # noqa: E402

import commerce.models  # noqa: E402, F401 - every table, for the engine's staging
import migrations  # noqa: E402
from commerce.reconciliation import engine as recon  # noqa: E402
from commerce.reconciliation.models import (  # noqa: E402
    DEFAULT_AMOUNT_TOLERANCE,
    DEFAULT_TIME_WINDOW_SECONDS,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Every match of the engine's: the stored card matches and Stripe's, read from the events.
ALL = recon.MATCHES
RESULTS = REPO / "bench" / "results"
#: Every line printed, written to bench/results/ at the end.
REPORT: list[str] = []


def say(*parts: object) -> None:
    line = " ".join(str(p) for p in parts)
    REPORT.append(line)
    print(line, flush=True)


REFERENCE = """
DROP TABLE IF EXISTS ref_sales, ref_purch, ref_cand, ref_match;
CREATE TEMP TABLE ref_sales AS
SELECT s.id, s.merchant_id, s.amount, s.currency, s.created_at, s.card_last4 AS last4,
       lower(s.card_brand) AS brand,
       coalesce(st.amount_tolerance, :default_tolerance) AS tol,
       make_interval(secs => coalesce(st.time_window_seconds, :default_window)) AS win
FROM sales s LEFT JOIN reconciliation_settings st ON st.merchant_id = s.merchant_id
WHERE s.card_last4 IS NOT NULL AND s.created_at >= :start AND s.created_at < :end;
CREATE TEMP TABLE ref_purch AS
SELECT DISTINCT ON (t.partner_id, t.transaction_id)
       t.partner_id || ':' || t.transaction_id AS pkey, mm.merchant_id, t.card_last4 AS last4,
       lower(t.card_brand) AS brand, t.amount, t.currency, t.occurred_at AS at
FROM card_transactions t JOIN merchant_mids mm ON mm.mid = t.mid
WHERE t.kind IN ('authorized', 'cleared')
  AND 'sales_attribution' = ANY(t.purposes)
  AND EXISTS (SELECT 1 FROM consents c
              WHERE c.partner_id = t.partner_id AND c.customer_ref = t.customer_ref
                AND c.status = 'granted' AND (c.expires_at IS NULL OR c.expires_at > now())
                AND 'transactions' = ANY(c.scopes) AND 'sales_attribution' = ANY(c.purposes))
  AND EXISTS (SELECT 1 FROM agreements a
              WHERE a.partner_id = t.partner_id AND a.status = 'active'
                AND a.starts_at <= now() AND (a.ends_at IS NULL OR a.ends_at > now())
                AND 'transactions' = ANY(a.scopes) AND 'sales_attribution' = ANY(a.purposes))
ORDER BY t.partner_id, t.transaction_id, t.kind <> 'authorized', t.occurred_at;
CREATE TEMP TABLE ref_cand AS
SELECT s.id AS sale_id, p.pkey,
       abs(extract(epoch FROM p.at - s.created_at)) AS dt, abs(p.amount - s.amount) AS da,
       CASE WHEN p.currency = s.currency AND p.amount = s.amount THEN 1
            WHEN p.currency = s.currency AND abs(p.amount - s.amount) <= s.tol THEN 2
            ELSE 3 END AS pass
FROM ref_sales s JOIN ref_purch p
  ON p.merchant_id = s.merchant_id AND p.last4 = s.last4
 AND p.at BETWEEN s.created_at - s.win AND s.created_at + s.win
 AND (s.brand IS NULL OR p.brand IS NULL OR s.brand = p.brand);
CREATE TEMP TABLE ref_match (sale_id text PRIMARY KEY, pkey text UNIQUE, rule text)
"""

#: One round of one pass: the remaining pairs that are each other's best.
ROUND = """
INSERT INTO ref_match (sale_id, pkey, rule)
SELECT sale_id, pkey, :rule
FROM (SELECT c.sale_id, c.pkey,
             row_number() OVER (PARTITION BY c.sale_id ORDER BY c.dt, c.da, c.pkey) AS by_sale,
             row_number() OVER (PARTITION BY c.pkey ORDER BY c.dt, c.da, c.sale_id) AS by_purch
      FROM ref_cand c WHERE c.pass <= :pass) AS ranked
WHERE by_sale = 1 AND by_purch = 1
"""
#: Pairs whose sale or purchase was just taken leave.
PRUNE = """
DELETE FROM ref_cand c USING ref_match m WHERE m.sale_id = c.sale_id OR m.pkey = c.pkey
"""


def reference(connection: Connection, start: datetime, end: datetime) -> dict[str, float]:
    """The hand-written matching; returns the seconds of each step."""
    steps: dict[str, float] = {}
    params = {
        "start": start,
        "end": end,
        "default_tolerance": DEFAULT_AMOUNT_TOLERANCE,
        "default_window": DEFAULT_TIME_WINDOW_SECONDS,
    }
    began = time.perf_counter()
    for statement in REFERENCE.strip().split(";\n"):
        connection.execute(text(statement), params)
    connection.execute(text("ANALYZE ref_cand"))
    steps["candidates"] = time.perf_counter() - began
    for number, rule in ((1, "card_exact"), (2, "card_tolerance"), (3, "card_time")):
        began = time.perf_counter()
        while True:
            taken = connection.execute(text(ROUND), {"rule": rule, "pass": number}).rowcount
            if not taken:
                break
            connection.execute(text(PRUNE))
        steps[rule] = time.perf_counter() - began
    return steps


class StatementClock:
    """Seconds spent in each statement the engine sends (by its text), while attached."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        #: Per thread: a batch's sessions run in threads of their own.
        self._began = threading.local()
        self._lock = threading.Lock()

    def _before(self, *_: object) -> None:
        self._began.at = time.perf_counter()

    def _after(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        spent = time.perf_counter() - self._began.at
        key = " ".join(statement.split())
        with self._lock:
            self.spent[key] = self.spent.get(key, 0.0) + spent
            self.calls[key] = self.calls.get(key, 0) + 1

    def __enter__(self) -> StatementClock:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def report(self, top: int = 25) -> None:
        total = sum(self.spent.values())
        say(f"  statements: {total:.1f}s in {sum(self.calls.values())} calls; the longest:")
        for key, spent in sorted(self.spent.items(), key=lambda kv: -kv[1])[:top]:
            say(f"  {spent:7.2f}s {self.calls[key]:4d}x  {key[:150]}")


def batch(engine: Engine, params: dict[str, str], *, sessions: int, profile: bool = False) -> float:
    if not profile:
        return _batch(engine, params, sessions)
    with engine.connect() as connection:
        wal = connection.execute(text("SELECT pg_current_wal_lsn()")).scalar()
    with StatementClock(engine) as clock:
        seconds = _batch(engine, params, sessions)
    clock.report()
    with engine.connect() as connection:
        written = connection.execute(
            text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :lsn)"), {"lsn": wal}
        ).scalar()
    say(f"  WAL written meanwhile (the whole server's): {written / 2**20:.0f} MiB")
    return seconds


def _batch(engine: Engine, params: dict[str, str], sessions: int) -> float:
    """The batch as a run executes it: `reconcile_period`, its chunks `sessions` at a time."""
    began = time.perf_counter()
    recon.reconcile_period(
        sessionmaker(engine),
        datetime.fromisoformat(params["period_start"]),
        datetime.fromisoformat(params["period_end"]),
        as_of=datetime.fromisoformat(params["as_of"]),
        concurrency=sessions,
    )
    return time.perf_counter() - began


def differences(connection: Connection, got: str, want: str) -> list[tuple]:
    rows = []
    for first, second in ((want, got), (got, want)):
        rows += connection.execute(
            text(f"SELECT * FROM (({first}) EXCEPT ALL ({second})) AS d LIMIT 10")  # noqa: S608
        ).all()
    return rows


def reused(url: str) -> data.DataSet | None:
    """The data set already generated in the database at `url`, if any."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if connection.execute(text("SELECT to_regclass('truth.params')")).scalar() is None:
                return None
            p = data.params(connection)
    finally:
        engine.dispose()
    if "as_of" not in p:  # generation did not finish
        raise SystemExit("the database holds an unfinished data set: drop it or name another")
    return data.DataSet(
        **{k: int(p[k]) for k in ("sales", "card_transactions", "sale_events", "merchants")},
        cases=int(p["cases"]),
        facts=int(p["facts"]),
        period_start=datetime.fromisoformat(p["period_start"]),
        period_end=datetime.fromisoformat(p["period_end"]),
        as_of=datetime.fromisoformat(p["as_of"]),
        seconds=0.0,
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs ({cpu}), load average {load[0]:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--sales", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--database", help="a database to generate into and keep, or to reuse if generated"
    )
    parser.add_argument("--profile", action="store_true", help="the batch's statements by time")
    parser.add_argument("--engine-only", action="store_true", help="skip the reference")
    parser.add_argument(
        "--sessions",
        type=int,
        action="append",
        help="sessions the batch runs its chunks in (repeat to measure several;"
        f" default: {recon.BATCH_SESSIONS})",
    )
    args = parser.parse_args()

    name = args.database or f"chatledger_bench_reconcile_{secrets.token_hex(3)}"
    keep = args.keep or args.database is not None
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        server = connection.execute(text("SHOW server_version")).scalar()
    url = make_url(args.url).set(database=name).render_as_string(hide_password=False)
    say(f"database {name}; {machine()}; PostgreSQL {server}")
    try:
        migrations.upgrade(url)
        made = reused(url) if exists else None
        if made is None:
            made = data.generate(url, sales=args.sales, seed=args.seed, log=say)
        say(made)
        engine = create_engine(url)
        with engine.connect() as connection:
            params = data.params(connection)
        start = datetime.fromisoformat(params["period_start"])
        end = datetime.fromisoformat(params["period_end"])

        widths = args.sessions or [recon.BATCH_SESSIONS]
        engine_times: dict[int, list[float]] = {n: [] for n in widths}
        reference_times: list[float] = []
        reference_steps: list[dict[str, float]] = []
        for run in range(args.repeat):
            for sessions in widths:
                with engine.begin() as connection:
                    connection.execute(
                        text("TRUNCATE reconciliation_matches, reconciliation_exceptions")
                    )
                seconds = batch(engine, params, sessions=sessions, profile=args.profile)
                engine_times[sessions].append(seconds)
                say(f"run {run + 1}: engine batch, {sessions} session(s), {seconds:.1f}s")
            if args.engine_only:
                continue
            with engine.begin() as connection:
                began = time.perf_counter()
                reference_steps.append(reference(connection, start, end))
                reference_times.append(time.perf_counter() - began)
                say(
                    f"run {run + 1}: reference {reference_times[-1]:.1f}s "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in reference_steps[-1].items())
                )
                same = differences(
                    connection,
                    "SELECT sale_id, source_key, rule FROM reconciliation_matches"
                    " WHERE kind = 'card_purchase'",
                    "SELECT sale_id, pkey, rule FROM ref_match",
                )
                card_matches = connection.execute(
                    text("SELECT count(*) FROM ref_match")
                ).scalar_one()
                truth = differences(
                    connection,
                    f"SELECT sale_id, kind, source_key, rule, confidence FROM ({ALL}) m",  # noqa: S608
                    "SELECT sale_id, kind, source_key, rule, confidence FROM truth.matches",
                )
                counts = connection.execute(
                    text(
                        "SELECT (SELECT count(*) FROM reconciliation_matches),"  # noqa: S608
                        f" (SELECT count(*) FROM ({ALL}) m),"
                        " (SELECT count(*) FROM reconciliation_exceptions)"
                    )
                ).one()
            say(
                f"run {run + 1}: card matches {card_matches}, engine = reference: {not same}"
                f", engine = truth: {not truth}; engine wrote {counts[0]} card matches"
                f" ({counts[1]} with Stripe's, read from the events), {counts[2]} exceptions"
            )
            if same:
                say("  engine vs reference differ, first:", same)
            if truth:
                say("  engine vs truth differ, first:", truth)
        if args.engine_only:
            for sessions, times in engine_times.items():
                say(f"engine only, {sessions} session(s): {', '.join(f'{t:.1f}' for t in times)}")
            say(machine())
            return
        best_reference = min(reference_times)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        say("")
        say(f"| {made.sales:,} sales, {made.card_transactions:,} card transactions | seconds |")
        say("| --- | --- |")
        say(
            "| generation (bench/reconcile_data.py) | "
            + (f"{made.seconds:.0f} |" if made.seconds else "(reused database) |")
        )

        def runs(times: list[float]) -> str:
            listed = ", ".join(f"{t:.1f}" for t in times)
            return f"{listed} (median {statistics.median(times):.1f})"

        for sessions, times in engine_times.items():
            say(f"| engine batch, {sessions} session(s), runs | {runs(times)} |")
        say(f"| reference join (one session), runs | {runs(reference_times)} |")
        for sessions, times in engine_times.items():
            ratio = min(times) / best_reference
            say(f"| ratio, {sessions} session(s), best of each | {ratio:.2f}x |")
        say(f"\ncommit {commit}; {machine()}")
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        (RESULTS / f"reconcile-{stamp}.md").write_text("\n".join(REPORT) + "\n")
        engine.dispose()
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
