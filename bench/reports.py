"""Benchmark: `GET /v1/reports/sales` at scale, beside a plain GROUP BY over the raw sales.

    .venv/bin/python bench/reports.py [--sales 20000000] [--requests 200] [--plain-runs 15]

What it does, in order:

1. creates a database of its own (`chatledger_bench_<random>`) on the PostgreSQL named by
   CHATLEDGER_DATABASE_URL, migrates it and registers an operator key;
2. starts gunicorn (2 workers x 4 threads) on it and creates the largest merchant through
   the API (its key is the one the reports are asked with);
3. generates the data with set-based SQL (generate_series), in batches: 100 merchants, one
   of them (the API's) with a quarter of all sales, conversations, customers, one offer per
   sale, and the sales themselves over the last --days days, in USD (most), EUR and JPY,
   paid, partly or fully refunded, disputed or failed. The report triggers are off while it
   loads (`session_replication_role = replica`: bulk data, not a merchant's traffic), and
   `chatledger reports rebuild` (rollups.rebuild) then builds the rollups from scratch;
4. for windows of 30 and 365 days ending today, by day in America/New_York, measures
   - the API: `GET /v1/reports/sales` for the largest merchant, sequential requests on one
     keep-alive connection after a warm-up, every latency recorded (client side);
   - the plain query: the same figures by a GROUP BY over `sales` for that merchant and
     window (PostgreSQL picks its plan; parallel workers allowed), sequential runs;
   and checks that both give the same figures;
5. prints a Markdown report and writes it to bench/results/.

Gunicorn is stopped and the database dropped at the end, unless --keep. `--database NAME`
measures again on a database an earlier --keep run left, skipping steps 1 and 3 (a new key
is issued to its largest merchant). Nothing here asserts a speed.
"""

# ruff: noqa: S608 - the SQL text is built from constants and numbers, never from input
from __future__ import annotations

import argparse
import http.client
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from common import (
    DEFAULT_DATABASE_URL,
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    HOST,
    RESULTS,
    Gunicorn,
    bench_database,
    build_indexes,
    call,
    created,
    drop_secondary_indexes,
    machine_info,
    prepare_database,
    server_env,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
ZONE = "America/New_York"
LARGEST = "Largest merchant"
MERCHANTS = 100
BATCH = 2_000_000


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def _merchant_of(conversation: str) -> str:
    """SQL: the merchant of conversation number `conversation`: one in four is the big one."""
    return (
        f"CASE WHEN {conversation} % 4 = 0 THEN :big"
        f" ELSE 'mer_' || lpad(({conversation} % {MERCHANTS - 1} + 1)::text, 22, '0') END"
    )


def generate(engine: Any, big: str, sales: int, days: int) -> dict[str, float]:
    """Load the data set; the seconds each step took."""
    from sqlalchemy import text

    conversations = max(sales // 10, 10)
    customers = max(sales // 20, 10)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    timings: dict[str, float] = {}
    params = {"big": big, "start": start, "span": days * 86400}

    def step(name: str, sql: str, **extra: Any) -> None:
        began = time.monotonic()
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            connection.execute(text("SET LOCAL synchronous_commit = off"))
            connection.execute(text("SET LOCAL work_mem = '256MB'"))
            connection.execute(text(sql), {**params, **extra})
        timings[name] = timings.get(name, 0.0) + time.monotonic() - began

    # Secondary indexes and unique constraints of the big tables are dropped for the load and
    # built again after it (a sorted build beats millions of random inserts), exactly as the
    # migrations defined them.
    rebuilt: list[str] = []
    with engine.begin() as connection:
        for table in ("conversations", "offers", "sales"):
            for name, definition in connection.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = CAST(:t AS regclass) AND contype = 'u'"
                ),
                {"t": table},
            ).all():
                connection.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
                rebuilt.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            rebuilt += drop_secondary_indexes(connection, table)

    log(f"merchants, {customers:,} customers, {conversations:,} conversations")
    step(
        "merchants",
        f"""INSERT INTO merchants (id, name, timezone, created_at)
        SELECT 'mer_' || lpad(g::text, 22, '0'), 'Merchant ' || g, '{ZONE}', :start
        FROM generate_series(1, {MERCHANTS - 1}) AS g""",
    )
    step(
        "customers",
        f"""INSERT INTO customers (id, channel, channel_user_id, created_at)
        SELECT 'cus_' || lpad(g::text, 22, '0'), 'messenger', 'psid-' || g, :start
        FROM generate_series(1, {customers}) AS g""",
    )
    step(
        "conversations",
        f"""INSERT INTO conversations (id, merchant_id, customer_id, channel, thread_id, created_at)
        SELECT 'cnv_' || lpad(g::text, 22, '0'), {_merchant_of("g")},
               'cus_' || lpad((g % {customers} + 1)::text, 22, '0'), 'messenger', 't-' || g, :start
        FROM generate_series(1, {conversations}) AS g""",
    )
    # Each sale g: conversation c(g), a time spread over the window, an amount, a currency and
    # a state from a hash of g (deterministic, so offers and sales agree).
    per_sale = f"""
        FROM (SELECT g, (g * 7919) % {conversations} + 1 AS c,
                     abs(hashint4(g::int)::bigint) AS h,
                     abs(hashint4((g + 1)::int)::bigint) AS h2
              FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g) AS s"""
    for lo in range(1, sales + 1, BATCH):
        hi = min(lo + BATCH - 1, sales)
        log(f"offers and sales {lo:,}..{hi:,} of {sales:,}")
        step(
            "offers",
            f"""INSERT INTO offers (id, merchant_id, conversation_id, title, amount, currency,
                                    quantity, created_at)
            SELECT 'ofr_' || lpad(g::text, 22, '0'), {_merchant_of("c")},
                   'cnv_' || lpad(c::text, 22, '0'), 'Offer ' || g, 100 + h % 20000,
                   CASE WHEN h % 10 < 7 THEN 'USD' WHEN h % 10 < 9 THEN 'EUR' ELSE 'JPY' END, 1,
                   :start + make_interval(secs => h2 % :span)
            {per_sale}""",
            lo=lo,
            hi=hi,
        )
        step(
            "sales",
            f"""INSERT INTO sales (id, merchant_id, offer_id, conversation_id, customer_id, amount,
                currency, quantity, state, amount_captured, amount_refunded, amount_disputed,
                payment_provider, created_at, updated_at)
            SELECT 'sale_' || lpad(g::text, 22, '0'), {_merchant_of("c")},
                   'ofr_' || lpad(g::text, 22, '0'), 'cnv_' || lpad(c::text, 22, '0'),
                   'cus_' || lpad((c % {customers} + 1)::text, 22, '0'), amount, currency, 1,
                   state,
                   CASE WHEN state = 'failed' THEN 0 ELSE amount END,
                   CASE state WHEN 'refunded' THEN amount
                              WHEN 'partially_refunded' THEN amount / 2 ELSE 0 END,
                   CASE WHEN state IN ('disputed', 'dispute_lost', 'dispute_won')
                        THEN amount ELSE 0 END,
                   'stripe', at, at
            FROM (SELECT g, c, 100 + h % 20000 AS amount,
                         CASE WHEN h % 10 < 7 THEN 'USD' WHEN h % 10 < 9 THEN 'EUR'
                              ELSE 'JPY' END AS currency,
                         CASE WHEN h2 % 100 < 88 THEN 'paid'
                              WHEN h2 % 100 < 93 THEN 'partially_refunded'
                              WHEN h2 % 100 < 95 THEN 'refunded'
                              WHEN h2 % 100 < 96 THEN 'disputed'
                              WHEN h2 % 100 < 97 THEN 'dispute_lost'
                              WHEN h2 % 100 < 98 THEN 'dispute_won'
                              ELSE 'failed' END AS state,
                         :start + make_interval(secs => h2 % :span) AS at
                  {per_sale}) AS x""",
            lo=lo,
            hi=hi,
        )
    log(f"building {len(rebuilt)} indexes and unique constraints again")
    began = time.monotonic()
    build_indexes(engine, rebuilt)
    timings["indexes"] = time.monotonic() - began
    log("VACUUM ANALYZE")
    began = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("merchants", "customers", "conversations", "offers", "sales"):
            connection.execute(text(f"VACUUM ANALYZE {table}"))
    timings["vacuum analyze"] = time.monotonic() - began
    return timings


def rebuild(engine: Any) -> tuple[float, int]:
    from sqlalchemy import text

    from commerce.reports import rollups

    log("chatledger reports rebuild (rollups.rebuild)")
    began = time.monotonic()
    rows = rollups.rebuild(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in rollups.ROLLUP_TABLES:
            connection.execute(text(f"VACUUM ANALYZE {table}"))
    return time.monotonic() - began, rows


def largest_merchant_key(url: str) -> tuple[str, str]:
    """In a reused database: the largest merchant's id and a new key of its own."""
    from sqlalchemy import select

    from commerce import runtime
    from commerce.access.services import MERCHANT, issue_key
    from commerce.db import transaction
    from commerce.merchants.models import Merchant

    with transaction(runtime.configure_database(url)) as session:
        big = session.scalars(select(Merchant.id).where(Merchant.name == LARGEST)).one()
        _, secret = issue_key(session, role=MERCHANT, merchant_id=big)
    runtime.engine().dispose()
    return big, secret


# --------------------------------------------------------------------------- measuring


def percentile(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] * 1000


def measure_api(port: int, key: str, path: str, warmup: int, count: int) -> tuple[list[float], Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    latencies: list[float] = []
    body: Any = None
    try:
        for i in range(warmup + count):
            began = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            elapsed = time.perf_counter() - began
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}: {raw[:500]!r}")
            if i >= warmup:
                latencies.append(elapsed)
            body = raw
    finally:
        connection.close()
    return latencies, json.loads(body)


PLAIN = """
SELECT (created_at AT TIME ZONE :tz)::date AS day, currency,
       count(*) FILTER (WHERE amount_captured > 0) AS count,
       sum(amount_captured) AS gross, sum(amount_refunded) AS refunds,
       sum(CASE WHEN state IN ('disputed', 'dispute_lost') THEN amount_disputed ELSE 0 END)
           AS disputes,
       sum(amount_captured - amount_refunded
           - CASE WHEN state IN ('disputed', 'dispute_lost') THEN amount_disputed ELSE 0 END)
           AS net
FROM sales
WHERE merchant_id = :m AND created_at >= :start AND created_at < :end
GROUP BY 1, 2
HAVING count(*) FILTER (WHERE amount_captured > 0) > 0 OR sum(amount_refunded) > 0
ORDER BY 1, 2
"""


def measure_plain(
    engine: Any, merchant: str, start: datetime, end: datetime, runs: int
) -> tuple[list[float], list[Any]]:
    from sqlalchemy import text

    latencies: list[float] = []
    rows: list[Any] = []
    with engine.connect() as connection:
        for i in range(runs + 1):  # the first run warms the cache and is not counted
            began = time.perf_counter()
            rows = connection.execute(
                text(PLAIN), {"tz": ZONE, "m": merchant, "start": start, "end": end}
            ).all()
            elapsed = time.perf_counter() - began
            if i:
                latencies.append(elapsed)
            connection.rollback()
    return latencies, rows


def same_figures(api: dict[str, Any], plain: list[Any]) -> bool:
    figures = ("count", "gross", "refunds", "disputes", "net")
    from_api = {(r["period"], r["currency"]): tuple(r[f] for f in figures) for r in api["rows"]}
    from_plain = {
        (r.day.isoformat(), r.currency): tuple(int(getattr(r, f)) for f in figures) for r in plain
    }
    return from_api == from_plain


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=730, help="the sales span this many days")
    parser.add_argument("--requests", type=int, default=200, help="counted API requests")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted API requests first")
    parser.add_argument("--plain-runs", type=int, default=15, help="counted plain queries")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--database", help="reuse this database (kept by --keep), data and all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import os

    from sqlalchemy import text

    from commerce.db import make_engine

    args = parse_args(argv)
    base_url = args.database_url or os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
    command = "bench/reports.py " + " ".join(argv if argv is not None else sys.argv[1:])
    operator_key = "ck_op_bench_" + secrets.token_hex(16)
    machine = machine_info(base_url, args.redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-bench-reports-"))
    with bench_database(base_url, reuse=args.database, keep=args.keep) as (name, url, fresh):
        log(f"database {name}")
        prepare_database(url, operator_key)
        server = Gunicorn(server_env(url, args.redis_url, operator_key, tmp), tmp / "gunicorn.log")
        engine = make_engine(url, connect_args={}, pool_size=2)
        try:
            server.wait_ready()
            if fresh:
                merchant = created(
                    *call(
                        server.port,
                        "POST",
                        "/v1/merchants",
                        {"name": LARGEST, "timezone": ZONE},
                        operator_key,
                    ),
                    "merchant",
                )
                big, key = merchant["id"], merchant["api_key"]["secret"]
                timings = generate(engine, big, args.sales, args.days)
                timings["rebuild"], rollup_rows = rebuild(engine)
            else:
                big, key = largest_merchant_key(url)
                timings, rollup_rows = {}, 0
            with engine.connect() as connection:
                counts = {
                    t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("sales", "report_offer_rollups", "report_merchant_hours")
                }
                big_sales = connection.execute(
                    text("SELECT count(*) FROM sales WHERE merchant_id = :m"), {"m": big}
                ).scalar_one()
                sizes = {
                    t: connection.execute(
                        text("SELECT pg_size_pretty(pg_total_relation_size(:t))"), {"t": t}
                    ).scalar_one()
                    for t in ("sales", "report_offer_rollups", "report_merchant_hours")
                }
            today = datetime.now(ZoneInfo(ZONE)).date()
            results = []
            for days in (30, 365):
                first = today - timedelta(days=days - 1)
                path = f"/v1/reports/sales?timezone={ZONE}&from={first}&to={today}&group_by=day"
                log(f"API, {days} days: {args.warmup} + {args.requests} requests")
                api_lat, body = measure_api(server.port, key, path, args.warmup, args.requests)
                start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
                end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
                runs = args.plain_runs
                log(f"plain GROUP BY, {days} days: {runs} runs")
                plain_lat, plain_rows = measure_plain(engine, big, start, end, runs)
                rows_in_window = sum(r.count for r in plain_rows)
                results.append(
                    (
                        days,
                        first,
                        today,
                        api_lat,
                        plain_lat,
                        same_figures(body, plain_rows),
                        rows_in_window,
                    )
                )
        finally:
            server.stop()
            engine.dispose()
            if args.keep or not fresh:
                log(f"database {name} kept")
    shutil.rmtree(tmp, ignore_errors=True)

    report = render(
        results, timings, counts, sizes, big_sales, rollup_rows, machine.markdown(), args, command
    )
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"reports-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    log(f"written to {path}")
    return 0


def render(
    results: list[tuple[int, date, date, list[float], list[float], bool, int]],
    timings: dict[str, float],
    counts: dict[str, int],
    sizes: dict[str, str],
    big_sales: int,
    rollup_rows: int,
    machine: str,
    args: argparse.Namespace,
    command: str,
) -> str:
    out = [
        f"# Reports at scale ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        f"- sales: {counts['sales']:,} ({sizes['sales']} with indexes) over {args.days} days; "
        f"the largest merchant has {big_sales:,}",
        f"- rollups: {counts['report_offer_rollups']:,} offer rows "
        f"({sizes['report_offer_rollups']}), {counts['report_merchant_hours']:,} merchant-hour "
        f"rows ({sizes['report_merchant_hours']})"
        + (f"; {rollup_rows:,} rows written by the rebuild" if timings else ""),
        "- load: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        if timings
        else f"- data: reused (database {args.database}, made by an earlier --keep run)",
        f"- server: gunicorn {GUNICORN_WORKERS} workers x {GUNICORN_THREADS} threads; "
        "one client connection, sequential requests",
        "",
        "| window (by day, America/New_York) | sales in window | API p50 ms | API p95 ms | "
        "API p99 ms | plain GROUP BY p50 ms | plain p95 ms | p95 ratio plain/API | "
        "same figures |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --- |",
    ]
    for days, first, last, api, plain, same, rows in results:
        ratio = percentile(plain, 95) / percentile(api, 95)
        out.append(
            f"| {days} days ({first} to {last}) | {rows:,} | {percentile(api, 50):.2f} | "
            f"{percentile(api, 95):.2f} | {percentile(api, 99):.2f} | "
            f"{percentile(plain, 50):.1f} | {percentile(plain, 95):.1f} | {ratio:.0f}x | "
            f"{'yes' if same else 'NO'} |"
        )
    out += [
        "",
        f"API: {args.requests} counted requests after {args.warmup} uncounted, latency measured "
        f"by the client (HTTP included). Plain query: {args.plain_runs} counted runs after one "
        "uncounted, measured by the client (psycopg), same server.",
        "",
        "Machine:",
        "",
        machine,
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
