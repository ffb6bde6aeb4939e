"""Benchmark: signed Stripe events accepted by `POST /webhooks/stripe` under gunicorn, beside a
bare endpoint of the same app, then events processed from the inbox by one Celery worker.

    .venv/bin/python bench/run_ingest.py [--duration S] [--concurrency N] [--events N]

What it does, in order:

1. creates a database of its own (`chatledger_bench_<random>`) on the PostgreSQL named by
   CHATLEDGER_DATABASE_URL, migrates it with Alembic, registers an operator key and creates
   the table `bench_raw` for the baseline;
2. starts the local Stripe stand-in of the tests (tests/support/stripe_server.py) and
   gunicorn (2 workers x 4 threads, as bench/run_touchpoints.py) serving
   `bench.ingest_app:app`: the product's app plus one route, `POST /bench/raw-insert`, that
   stores the body with one raw psycopg INSERT and COMMIT. Gunicorn gets a webhook secret of
   the run's own in CHATLEDGER_STRIPE_WEBHOOK_SECRETS and the Redis database 11 by default
   (flushed before, between and after the scenarios);
3. acceptance: drives `POST /bench/raw-insert` (baseline) and `POST /webhooks/stripe`
   (door) alternately, --rounds times, with N keep-alive connections spread evenly over
   the gunicorn workers, a warm-up (not counted) and a fixed duration. Every request is a
   new `payment_intent.succeeded` event, made from one the stand-in emitted: a unique `evt_`
   and `pi_` id, `created` now, the SDK's API version, serialized the way Stripe delivers
   events (indented JSON), and signed just before it is sent with
   `stripe.WebhookSignature.generate_signature_header`. Both scenarios send the same kind of
   request; the baseline ignores the signature. No worker runs, so the door is measured
   alone: it commits each event with a NOTIFY for the relays and sends no task, and the
   inbox (all `pending`) and the Redis queue (empty) are checked and emptied afterwards;
4. processing, once per worker configuration (--pools): --events sales made through the
   API (a merchant, a conversation, one offer and one checkout per sale, the checkouts
   creating their PaymentIntents at the stand-in), each paid at the stand-in, and their
   `payment_intent.succeeded` events delivered through the door while no worker runs. Then
   ONE worker (`celery -A app.worker:celery worker --pool P --concurrency C`) is started:
   its inbox relay (webhooks/relay.py) claims the stored events and sends their tasks, so
   the time and the worker's CPU include the sends the door no longer makes.
   The database is polled every 50 ms until no inbox row is pending (or failed); the time
   from the worker's "ready" line to the last event's `processed_at` gives the events per
   second. The inbox's and the sales' final states are reported (all should be
   `processed` and `paid`);
5. prints a Markdown report and writes it to bench/results/.

`--experiment no-pre-ping` measures a changed door instead of the product's
(see bench/ingest_app.py): for estimating a change before making it. The processing part is
skipped then, and the report's title says it is an experiment.

Gunicorn, the worker and the Stripe stand-in are stopped and the database dropped in every
case, Ctrl-C included. Nothing here asserts a speed: the script measures and reports.
The load generator, gunicorn and the CPU accounting are in bench/common.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DATABASE_URL,
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    HOST,
    REPO,
    RESULTS,
    CpuSampler,
    Gunicorn,
    Machine,
    Scenario,
    ScenarioResult,
    call,
    create_conversation,
    create_offer_in,
    created,
    fresh_database,
    machine_info,
    prepare_database,
    run_scenario,
    server_cpu,
    server_env,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
#: The stand-in accepts any test key; the product's settings require this shape.
STRIPE_API_KEY = "sk_test_chatledgerbench"
APP = "bench.ingest_app:app"
BASELINE_PATH = "/bench/raw-insert"
DOOR_PATH = "/webhooks/stripe"
DEFAULT_POOLS = "prefork:2,threads:4"
#: The goal of issue 3: the door's throughput at least this share of the baseline's.
GOAL = 0.5


# --------------------------------------------------------------------------- signed events


class SignedEvents:
    """Makes a new signed Stripe event for every call: (body, headers). Picklable, so it runs
    in the load generator's processes (see common.Scenario.generate).

    `template` is an event serialized as Stripe sends it, with `%(evt)s`, `%(pi)s` and
    `%(created)d` where the event id, the PaymentIntent id and the time go; any other `%`
    is doubled.
    """

    def __init__(self, template: str, secret: str) -> None:
        self.template = template
        self.secret = secret

    def __call__(self) -> tuple[bytes, dict[str, str]]:
        import stripe  # in the client process; a no-op after the first call

        now = int(time.time())
        text = self.template % {
            "evt": "evt_" + secrets.token_hex(12),
            "pi": "pi_" + secrets.token_hex(12),
            "created": now,
        }
        header = stripe.WebhookSignature.generate_signature_header(text, self.secret, now)
        return text.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def serialize(event: dict[str, Any], body_format: str) -> str:
    """An event's body as Stripe delivers it: indented JSON (or compact, on request)."""
    if body_format == "compact":
        return json.dumps(event, separators=(",", ":"))
    return json.dumps(event, indent=2)


def event_template(stripe_server: Any, body_format: str) -> tuple[str, int]:
    """A `payment_intent.succeeded` as the stand-in emits it, for an intent no sale made
    (the worker would process it as ignored), as a template for SignedEvents, and its size."""
    import stripe

    client = stripe.StripeClient(STRIPE_API_KEY, base_addresses={"api": stripe_server.url})
    intent = client.v1.payment_intents.create(
        params={"amount": 1250, "currency": "usd", "description": "Cold brew, 1 L"}
    )
    stripe_server.succeed(intent.id)
    event = next(
        e
        for e in stripe_server.events
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == intent.id
    )
    assert event["api_version"] == stripe.api_version, event["api_version"]
    created_marker = "@@created@@"
    text = serialize(event, body_format).replace("%", "%%")
    text = text.replace(f'"{event["id"]}"', '"%(evt)s"')
    text = text.replace(intent.id, "%(pi)s")  # the object's id and its client_secret
    text = text.replace(f'"created": {event["created"]}', f'"created": "{created_marker}"')
    text = text.replace(f'"created":{event["created"]}', f'"created":"{created_marker}"')
    text = text.replace(f'"{created_marker}"', "%(created)d")
    sample = text % {"evt": "evt_x", "pi": "pi_x", "created": 1}
    assert json.loads(sample)["data"]["object"]["id"] == "pi_x"
    return text, len(SignedEvents(text, "whsec_x")()[0])


def check_signing(secret: str) -> None:
    """The door verifies what the SDK signs; fail early, not with 16 connections of 400s."""
    import stripe

    from webhooks.verify import verify_stripe

    body = b'{"id": "evt_check"}'
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    verify_stripe(body, header, [secret])


# --------------------------------------------------------------------------- the database


class Database:
    """The benchmark's own connection to its database, for set-up and checks."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)

    def execute(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            result = connection.execute(text(sql), params)
            return result.all() if result.returns_rows else []

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.execute(sql, **params)[0][0]

    def statuses(self) -> dict[str, int]:
        rows = self.execute("SELECT status, count(*) FROM inbox_events GROUP BY status")
        return {status: count for status, count in rows}

    def close(self) -> None:
        self.engine.dispose()


def create_bench_table(db: Database) -> None:
    """The baseline's table: an id, the body as it came, and the time it came."""
    db.execute(
        "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, body bytea NOT NULL,"
        " received_at timestamptz NOT NULL DEFAULT now())"
    )


def flush_redis(redis_url: str) -> int:
    """Empty the benchmark's Redis database; returns the length of Celery's queue before."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        queued = int(client.llen("celery"))
        client.flushdb()
        return queued
    finally:
        client.close()


def queue_length(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen("celery"))
    finally:
        client.close()


# --------------------------------------------------------------------------- processing


def make_sales(port: int, operator_key: str, count: int, threads: int = 8) -> list[tuple[str, str]]:
    """`count` sales through the API, each with its PaymentIntent at the stand-in:
    [(sale id, payment intent id)]. One offer per sale: a checkout of an offer that already
    has a sale answers that sale."""

    key, conversation_id = create_conversation(port, operator_key)

    def one(_: int) -> tuple[str, str]:
        offer_id = create_offer_in(port, key, conversation_id)
        paid = created(*call(port, "POST", f"/v1/offers/{offer_id}/checkout", None, key), "sale")
        return paid["sale"]["id"], paid["payment"]["payment_intent_id"]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def deliver(port: int, bodies: list[str], secret: str, threads: int = 8) -> list[str]:
    """POST each body to the Stripe door, signed when sent, on `threads` keep-alive
    connections; returns the problems (an answer other than a new event stored)."""
    import stripe

    problems: list[str] = []

    def run(chunk: list[str]) -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            for text in chunk:
                header = stripe.WebhookSignature.generate_signature_header(text, secret)
                connection.request(
                    "POST",
                    DOOR_PATH,
                    text.encode(),
                    {"Stripe-Signature": header, "Content-Type": "application/json"},
                )
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200 or json.loads(payload).get("duplicate"):
                    problems.append(f"{response.status} {payload[:300].decode(errors='replace')}")
        finally:
            connection.close()

    workers = [
        threading.Thread(target=run, args=(bodies[i::threads],), daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return problems


class Worker:
    """One Celery worker, started the way `chatledger run` starts it (app/runner.py: INFO
    logging, no --without-* flags), with the pool and concurrency given."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int, log_path: Path) -> None:
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.launched = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "app.worker:celery",
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, size: int = 4000) -> str:
        return self._log_path.read_text(errors="replace")[-size:]

    def wait_ready(self, timeout: float = 120) -> float:
        """The time.monotonic() at which its "ready." line was seen (polled every 10 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self._log_path.read_bytes():
                return time.monotonic()
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{self.log_tail()}")
            time.sleep(0.01)
        raise RuntimeError(f"the worker not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@dataclass
class ProcessingResult:
    pool: str
    concurrency: int
    events: int
    setup_seconds: float  # making the sales, paying them, delivering the events
    startup_seconds: float  # worker launched -> "ready."
    first_seconds: float  # "ready." -> first event processed
    seconds: float  # "ready." -> last event processed
    polled_seconds: float  # "ready." -> the poll that saw no pending row
    statuses: dict[str, int]
    sale_states: dict[str, int]
    cpu: dict[str, float | None]
    machine_busy: float
    errors_in_log: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def steady_rate(self) -> float:
        """Between the first and the last event processed: without the worker's first task."""
        span = self.seconds - self.first_seconds
        return (self.events - 1) / span if span > 0 else float("nan")


def run_processing(
    *,
    pool: str,
    concurrency: int,
    events: int,
    port: int,
    operator_key: str,
    secret: str,
    stripe_server: Any,
    body_format: str,
    env: dict[str, str],
    db: Database,
    database: str,
    base_url: str,
    redis_url: str,
    tmp: Path,
    timeout: float,
) -> ProcessingResult:
    db.execute("TRUNCATE inbox_events")
    flush_redis(redis_url)
    started = time.monotonic()
    print(f"  making {events} sales through the API ...", file=sys.stderr)
    sales = make_sales(port, operator_key, events)
    intents = {intent for _, intent in sales}
    for intent in intents:
        stripe_server.succeed(intent)
    bodies = [
        serialize(e, body_format)
        for e in stripe_server.events
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] in intents
    ]
    if len(bodies) != events:
        raise RuntimeError(f"{len(bodies)} payment_intent.succeeded events for {events} sales")
    print(f"  delivering {events} events with no worker running ...", file=sys.stderr)
    problems = deliver(port, bodies, secret)
    if problems:
        raise RuntimeError(f"{len(problems)} deliveries failed; first: {problems[0]}")
    stored = db.statuses()
    queued = queue_length(redis_url)
    # The door sends no task: the worker's relay sends them once it runs.
    if stored != {"pending": events} or queued != 0:
        raise RuntimeError(f"before the worker: inbox {stored}, {queued} tasks queued")
    setup = time.monotonic() - started

    print(f"  one worker, --pool {pool} --concurrency {concurrency} ...", file=sys.stderr)
    worker = Worker(env, pool, concurrency, tmp / f"worker-{pool}-{concurrency}.log")
    sampler: CpuSampler | None = None
    try:
        ready = worker.wait_ready()
        ready_wall = time.time() - (time.monotonic() - ready)
        sampler = CpuSampler(worker.process.pid, database, base_url, redis_url)
        before = sampler.sample()
        deadline = ready + timeout
        while True:
            unfinished = db.scalar(
                "SELECT count(*) FROM inbox_events WHERE status IN ('pending', 'failed')"
            )
            if unfinished == 0:
                break
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{unfinished} events still unfinished after {timeout:.0f} s")
            time.sleep(0.05)
        polled = time.monotonic() - ready
        after = sampler.sample()
    finally:
        if sampler is not None:
            sampler.close()
        worker.stop()
    first, last = db.execute("SELECT min(processed_at), max(processed_at) FROM inbox_events")[0]
    states = db.execute(
        "SELECT state, count(*) FROM sales WHERE id = ANY(:ids) GROUP BY state",
        ids=[sale for sale, _ in sales],
    )
    log_text = (tmp / f"worker-{pool}-{concurrency}.log").read_text(errors="replace")
    cpu, busy = CpuSampler.difference(before, after)
    return ProcessingResult(
        pool=pool,
        concurrency=concurrency,
        events=events,
        setup_seconds=setup,
        startup_seconds=ready - worker.launched,
        first_seconds=first.timestamp() - ready_wall,
        seconds=last.timestamp() - ready_wall,
        polled_seconds=polled,
        statuses=db.statuses(),
        sale_states={state: count for state, count in states},
        cpu={"worker": cpu["gunicorn"], "postgres": cpu["postgres"], "redis": cpu["redis"]},
        machine_busy=busy,
        errors_in_log=log_text.count(" ERROR/") + log_text.count(" WARNING/"),
    )


# --------------------------------------------------------------------------- acceptance


@dataclass
class AcceptanceCheck:
    """What the scenarios left behind, read after the last round."""

    inbox: dict[str, int]
    queued: int
    raw_rows: int
    answered: dict[str, int] = field(default_factory=dict)  # counted 2xx per scenario


# --------------------------------------------------------------------------- report

GROUPS = ("gunicorn", "postgres", "redis", "client")
#: A round in which other processes took more than this share of the machine is flagged.
DISTURBED = 0.10


def all_cpu(result: ScenarioResult) -> float:
    """CPU seconds of every process group of the run (server side and client)."""
    return sum(result.cpu[k] or 0.0 for k in GROUPS)


def others_share(result: ScenarioResult) -> float:
    """The share of the machine's CPUs taken by processes outside the run's groups."""
    cpus = len(os.sched_getaffinity(0))
    spent = max(0.0, (result.cpu["machine"] or 0.0) - all_cpu(result))
    return spent / (cpus * result.duration)


def render(
    results: list[ScenarioResult],
    check: AcceptanceCheck | None,
    processing: list[ProcessingResult],
    machine: Machine,
    args: argparse.Namespace,
    command: str,
    body_size: int,
) -> str:
    def ms(value: float) -> str:
        return f"{value:.2f}"

    out = [
        f"# Webhook ingest ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`",
        "",
    ]
    if args.experiment:
        out += [
            f"**Experiment `{','.join(args.experiment)}`: the door measured here is NOT the "
            "product's** (see bench/ingest_app.py); it estimates a change.",
            "",
        ]
    if results:
        out += [
            "## Acceptance: signed Stripe events stored durably",
            "",
            f"gunicorn {GUNICORN_WORKERS} workers x {GUNICORN_THREADS} threads (gthread) "
            f"serving `{APP}`; {args.concurrency} keep-alive client connections in "
            f"{args.client_processes} client process(es); {args.warmup:g} s warm-up (not "
            f"counted), then {args.duration:g} s counted per scenario. Every request is a new "
            f"signed `payment_intent.succeeded` event of {body_size} bytes "
            f"({args.body_format} JSON); no worker runs.",
            "",
            "| scenario | round | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
            "| --- | --: | --: | --: | --: | --: | --: | --: |",
        ]
        for r in results:
            out.append(
                f"| {r.scenario.label} | {r.round} | {r.requests} | {r.rate:.0f} | "
                f"{ms(r.percentile(50))} | {ms(r.percentile(95))} | {ms(r.percentile(99))} | "
                f"{r.errors} |"
            )
        by_round: dict[int, dict[str, ScenarioResult]] = {}
        for r in results:
            by_round.setdefault(r.round, {})[r.scenario.name] = r
        if all({"baseline", "door"} <= pair.keys() for pair in by_round.values()):
            out += ["", "Ratio door / baseline:", ""]
            for round_, pair in sorted(by_round.items()):
                base, door = pair["baseline"], pair["door"]
                out.append(
                    f"- round {round_}: throughput {door.rate / base.rate:.2f}x, "
                    f"p50 latency {door.percentile(50) / base.percentile(50):.2f}x, "
                    f"p99 latency {door.percentile(99) / base.percentile(99):.2f}x, "
                    f"server CPU per request {server_cpu(door) / server_cpu(base):.2f}x"
                )
            total = {
                name: sum(r.requests for r in results if r.scenario.name == name)
                / sum(r.duration for r in results if r.scenario.name == name)
                for name in ("baseline", "door")
            }
            ratio = total["door"] / total["baseline"]
            verdict = "met" if ratio >= GOAL else "NOT met"
            out.append(
                f"- all rounds: throughput {ratio:.2f}x ({total['door']:.0f} / "
                f"{total['baseline']:.0f} req/s); goal at least {GOAL:g}x: **{verdict}**"
            )
            cost = {
                name: sum(all_cpu(r) for r in results if r.scenario.name == name)
                / sum(r.requests for r in results if r.scenario.name == name)
                for name in ("baseline", "door")
            }
            out.append(
                f"- CPU per request of everything in the run (gunicorn, PostgreSQL, Redis, "
                f"client): baseline {cost['baseline'] * 1000:.3f} ms, door "
                f"{cost['door'] * 1000:.3f} ms; on a machine both saturate, the throughput "
                f"ratio tends to their inverse ratio, {cost['baseline'] / cost['door']:.2f}x"
            )
            disturbed = [r for r in results if others_share(r) > DISTURBED]
            if disturbed:
                out.append(
                    "- disturbed: other processes took more than "
                    f"{DISTURBED:.0%} of the machine in "
                    + ", ".join(f"{r.scenario.name} round {r.round}" for r in disturbed)
                    + " (column `others` below): their throughput is lowered by it, their "
                    "CPU per request much less"
                )

        out += [
            "",
            "CPU time per counted request (ms) of each process group, in the counted window. "
            '"machine busy" is the share of all CPUs busy, "others" the part of it spent by '
            "processes outside these groups; "
            '"split" is the client connections each gunicorn worker held.',
            "",
            "| scenario | round | gunicorn | postgres | redis | client | total | machine busy "
            "| others | split |",
            "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
        ]
        for r in results:
            per = {
                k: spent * 1000 / max(1, r.requests)
                for k in GROUPS
                if (spent := r.cpu[k]) is not None
            }
            cells = [f"{per[k]:.3f}" if k in per else "n/a" for k in GROUPS]
            others = others_share(r)
            out.append(
                f"| {r.scenario.name} | {r.round} | {' | '.join(cells)} | "
                f"{sum(per.values()):.3f} | {r.machine_busy:.0%} | {others:.0%} | "
                f"{'/'.join(map(str, r.split))} |"
            )
        problems = [r for r in results if r.errors or r.warmup_errors]
        if problems:
            out += ["", "Errors:", ""]
            for r in problems:
                out.append(
                    f"- {r.scenario.name} round {r.round}: {r.errors} counted, "
                    f"{r.warmup_errors} in warm-up; statuses {dict(r.statuses)}; "
                    f"first: {r.first_error}"
                )
        if check is not None:
            answered = ", ".join(f"{k} {v}" for k, v in check.answered.items())
            out += [
                "",
                "Left behind, after the last round (warm-up requests included): "
                f"inbox rows by status {check.inbox}, {check.queued} tasks queued "
                f"in Redis (the door sends none), {check.raw_rows} rows in `bench_raw`; "
                f"2xx answers in the counted windows: {answered}.",
            ]

    if processing:
        out += [
            "",
            "## Processing: inbox to sale state, one worker",
            "",
            f"{processing[0].events} sales made through the API and paid at the Stripe "
            "stand-in; their `payment_intent.succeeded` events delivered through the door "
            "with no worker running; then one worker started "
            "(`celery -A app.worker:celery worker --loglevel INFO --pool P --concurrency C`), "
            "whose inbox relay sends the stored events' tasks. "
            "Times are from its `ready.` line; the last event's time is its `processed_at`.",
            "",
            "| pool | concurrency | events | worker start s | to first event s | "
            "to last event s | events/s | events/s after the first | inbox after | sales |",
            "| --- | --: | --: | --: | --: | --: | --: | --: | --- | --- |",
        ]
        for p in processing:
            out.append(
                f"| {p.pool} | {p.concurrency} | {p.events} | {p.startup_seconds:.2f} | "
                f"{p.first_seconds:.2f} | {p.seconds:.2f} | {p.rate:.0f} | "
                f"{p.steady_rate:.0f} | {p.statuses} | {p.sale_states} |"
            )
        out += [
            "",
            "CPU time per event (ms), from `ready.` to the poll that found no pending row:",
            "",
            "| pool | concurrency | worker | postgres | redis | total | machine busy | "
            "warnings in the worker's log |",
            "| --- | --: | --: | --: | --: | --: | --: | --: |",
        ]
        for p in processing:
            per = {k: (v or 0.0) * 1000 / p.events for k, v in p.cpu.items()}
            out.append(
                f"| {p.pool} | {p.concurrency} | {per['worker']:.3f} | {per['postgres']:.3f} "
                f"| {per['redis']:.3f} | {sum(per.values()):.3f} | {p.machine_busy:.0%} | "
                f"{p.errors_in_log} |"
            )

    out += ["", "Machine:", "", machine.markdown(), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def versions() -> list[tuple[str, str]]:
    from importlib.metadata import version

    return [
        (name, version(name)) for name in ("celery", "stripe", "psycopg", "SQLAlchemy", "Flask")
    ]


def parse_pools(text: str) -> list[tuple[str, int]]:
    pools = []
    for item in text.split(","):
        pool, _, concurrency = item.strip().partition(":")
        if pool not in ("prefork", "threads", "solo") or not concurrency.isdigit():
            raise argparse.ArgumentTypeError(f"not POOL:CONCURRENCY: {item!r}")
        pools.append((pool, int(concurrency)))
    return pools


#: `no-task-send` is gone: since the relay, the product's door sends no task.
EXPERIMENTS = ("no-pre-ping",)


def parse_experiments(text: str) -> list[str]:
    chosen = [x for x in text.split(",") if x]
    for x in chosen:
        if x not in EXPERIMENTS:
            raise argparse.ArgumentTypeError(f"{x!r}: one of {', '.join(EXPERIMENTS)}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds first")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="processes the connections are spread over (see docs/BENCHMARKS.md)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="baseline+door pairs")
    parser.add_argument(
        "--only",
        choices=("baseline", "door", "acceptance", "processing"),
        help="run one part only (for exploring; the report's ratio needs both scenarios, "
        "which `acceptance` runs without the processing part)",
    )
    parser.add_argument(
        "--events", type=int, default=2000, help="events (sales) per processing run"
    )
    parser.add_argument(
        "--pools",
        type=parse_pools,
        default=parse_pools(DEFAULT_POOLS),
        help=f"worker configurations to measure, POOL:CONCURRENCY,... ({DEFAULT_POOLS})",
    )
    parser.add_argument(
        "--body-format",
        choices=("indented", "compact"),
        default="indented",
        help="event bodies indented as Stripe sends them, or compact JSON",
    )
    parser.add_argument(
        "--processing-timeout", type=float, default=600.0, help="seconds per processing run"
    )
    parser.add_argument(
        "--experiment",
        type=parse_experiments,
        default=[],
        help="measure a changed door (no-pre-ping), not the product's; skips the processing part",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.events < 1:
        parser.error("--duration, --rounds and --events must be positive, --warmup not negative")
    if not 1 <= args.client_processes <= args.concurrency:
        parser.error("--client-processes must be between 1 and --concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The application is imported from the tree this script is in, ahead of any installed copy.
    sys.path.insert(0, str(REPO))
    from tests.support.stripe_server import StripeServer

    command = " ".join([".venv/bin/python", "bench/run_ingest.py", *sys.argv[1:]])
    base_url = os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("CHATLEDGER_REDIS_URL", DEFAULT_REDIS_URL)
    operator_key = "ck_op_bench_" + secrets.token_urlsafe(24)
    secret = "whsec_bench_" + secrets.token_hex(16)
    check_signing(secret)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    machine = machine_info(base_url, redis_url)
    machine.lines += versions()
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-bench-"))
    results: list[ScenarioResult] = []
    check: AcceptanceCheck | None = None
    processing: list[ProcessingResult] = []
    stripe_server = StripeServer().start()
    flush_redis(redis_url)
    try:
        with fresh_database(base_url) as (database, database_url):
            print(f"database {database}: migrating ...", file=sys.stderr)
            prepare_database(database_url, operator_key)
            db = Database(database_url)
            create_bench_table(db)
            env = server_env(database_url, redis_url, operator_key, tmp)
            env.update(
                {
                    "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": secret,
                    "CHATLEDGER_STRIPE_API_KEY": STRIPE_API_KEY,
                    "CHATLEDGER_STRIPE_API_BASE": stripe_server.url,
                }
            )
            env.pop("BENCH_INGEST_EXPERIMENT", None)
            if args.experiment:
                env["BENCH_INGEST_EXPERIMENT"] = ",".join(args.experiment)
            server = Gunicorn(env, tmp / "gunicorn.log", app=APP)
            sampler: CpuSampler | None = None
            try:
                server.wait_ready()
                template, body_size = event_template(stripe_server, args.body_format)
                events = SignedEvents(template, secret)
                headers = {"Content-Type": "application/json"}
                scenarios = [
                    Scenario("baseline", "POST", BASELINE_PATH, headers, generate=events),
                    Scenario("door", "POST", DOOR_PATH, headers, generate=events),
                ]
                if args.only in ("baseline", "door"):
                    scenarios = [s for s in scenarios if s.name == args.only]
                elif args.only == "processing":
                    scenarios = []
                sampler = CpuSampler(server.process.pid, database, base_url, redis_url)
                for round_ in range(1, args.rounds + 1) if scenarios else ():
                    for scenario in scenarios:
                        print(f"round {round_}: {scenario.label} ...", file=sys.stderr)
                        result = run_scenario(
                            scenario,
                            port=server.port,
                            gunicorn_pid=server.process.pid,
                            connections=args.concurrency,
                            processes=args.client_processes,
                            warmup=args.warmup,
                            duration=args.duration,
                            sampler=sampler,
                            round_=round_,
                        )
                        results.append(result)
                        print(
                            f"  {result.requests} requests, {result.rate:.0f} req/s, "
                            f"p50 {result.percentile(50):.2f} ms, "
                            f"p99 {result.percentile(99):.2f} ms, {result.errors} errors",
                            file=sys.stderr,
                        )
                if scenarios:
                    check = AcceptanceCheck(
                        inbox=db.statuses(),
                        queued=flush_redis(redis_url),
                        raw_rows=db.scalar("SELECT count(*) FROM bench_raw"),
                        answered={
                            s.name: sum(
                                n
                                for r in results
                                if r.scenario.name == s.name
                                for status, n in r.statuses.items()
                                if 200 <= status < 300
                            )
                            for s in scenarios
                        },
                    )
                    db.execute("TRUNCATE inbox_events, bench_raw")
                if args.only in (None, "processing") and not args.experiment:
                    for pool, concurrency in args.pools:
                        print(
                            f"processing, --pool {pool} --concurrency {concurrency}:",
                            file=sys.stderr,
                        )
                        p = run_processing(
                            pool=pool,
                            concurrency=concurrency,
                            events=args.events,
                            port=server.port,
                            operator_key=operator_key,
                            secret=secret,
                            stripe_server=stripe_server,
                            body_format=args.body_format,
                            env=env,
                            db=db,
                            database=database,
                            base_url=base_url,
                            redis_url=redis_url,
                            tmp=tmp,
                            timeout=args.processing_timeout,
                        )
                        processing.append(p)
                        print(
                            f"  {p.events} events in {p.seconds:.2f} s: {p.rate:.0f} events/s; "
                            f"inbox {p.statuses}, sales {p.sale_states}",
                            file=sys.stderr,
                        )
            finally:
                if sampler is not None:
                    sampler.close()
                server.stop()
                db.close()
    except KeyboardInterrupt:
        print("interrupted; gunicorn stopped and the database dropped", file=sys.stderr)
        return 130
    finally:
        stripe_server.stop()
        flush_redis(redis_url)
        shutil.rmtree(tmp, ignore_errors=True)

    report = render(results, check, processing, machine, args, command, body_size)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    print(f"written to {path.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
