"""Load: 20 concurrent signed senders for two minutes against gunicorn and a Celery worker
running side by side, as in production (issue 8, part 4).

    .venv/bin/python bench/load.py [--seconds 120] [--stripe 16] [--partner 2] [--chat 2]

What it does, in order:

1. creates a database of its own (`chatledger_bench_<random>`) on the PostgreSQL named by
   CHATLEDGER_DATABASE_URL (or, with --embedded, on an embedded PostgreSQL and Redis
   started for the run), migrates it and registers an operator key; Redis database 13 by
   default, flushed before and after;
2. starts the local Stripe stand-in of the tests, gunicorn (2 workers x 4 threads, as the
   other benchmarks) and ONE Celery worker the way `chatledger run` starts it (`--pool
   prefork --concurrency 2`), all on the same two CPUs;
3. through the API: a merchant with a MID and a chat page, --sales sales (an offer and a
   checkout each, paid at the stand-in), and a partner with an agreement and a cardholder's
   consent;
4. the load: --stripe + --partner + --chat keep-alive connections (20 by default), each
   sending back to back, every request a new signed event:
   - Stripe: `payment_intent.succeeded` for one of the sales, picked at random, with a new
     `evt_` id, signed with `stripe.WebhookSignature.generate_signature_header` just before
     it is sent (the first for a sale pays it; the others are Stripe's retries and
     duplicates of the outcome, processed as no change);
   - partner: `transaction.authorized` at the merchant's MID for the consenting cardholder,
     a new transaction id each, signed with Standard Webhooks;
   - chat: a Messenger message to the merchant's page, signed with `X-Hub-Signature-256`;
   3 s of warm-up (counted apart), then --seconds counted. The latency of a request is the
   time to its acknowledgement (the door's 2xx), measured by the sender;
5. after the end, the time for the worker to drain the inbox: until no event is `pending`
   (the database is polled every 100 ms; the time is to the last event's `processed_at`);
6. prints a Markdown report and writes it to bench/results/load-<time>.md.

Valid events must all be acknowledged with a 2xx: the report counts every other answer.
Nothing is asserted about speed. Gunicorn, the worker and the stand-in are stopped and the
database dropped in every case, Ctrl-C included. The load generator, gunicorn and the CPU
accounting are in bench/common.py; the worker and the signed Stripe events are run_ingest's.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import json
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DATABASE_URL,
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    REPO,
    RESULTS,
    ClientReport,
    CpuSampler,
    Gunicorn,
    Scenario,
    balance_connections,
    call,
    client_process,
    created,
    fresh_database,
    machine_info,
    prepare_database,
    server_env,
)
from run_ingest import Database, SignedEvents, Worker, event_template, flush_redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
STRIPE_API_KEY = "sk_test_chatledgerload"
CUSTOMER_REF = "cust_load_1"


# --------------------------------------------------------------------------- signed events


class PaidSaleEvents(SignedEvents):
    """`payment_intent.succeeded` for one of `intents`, at random, with a new event id."""

    def __init__(self, template: str, secret: str, intents: list[str]) -> None:
        super().__init__(template, secret)
        self.intents = intents

    def __call__(self) -> tuple[bytes, dict[str, str]]:
        import stripe

        now = int(time.time())
        text = self.template % {
            "evt": "evt_" + secrets.token_hex(12),
            "pi": random.choice(self.intents),
            "created": now,
        }
        header = stripe.WebhookSignature.generate_signature_header(text, self.secret, now)
        return text.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


class PartnerEvents:
    """A partner's `transaction.authorized` at the merchant's MID, Standard Webhooks signed."""

    def __init__(self, secret: str, mid: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.mid = mid

    def __call__(self) -> tuple[bytes, dict[str, str]]:
        message_id, now = "evt_" + secrets.token_hex(12), int(time.time())
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = json.dumps(
            {
                "id": message_id,
                "type": "transaction.authorized",
                "created": stamp,
                "data": {
                    "transaction_id": "txn_" + secrets.token_hex(8),
                    "original_transaction_id": None,
                    "customer_ref": CUSTOMER_REF,
                    "card": {"token": "tok_load", "brand": "visa", "last4": "4242"},
                    "merchant": {"mid": self.mid, "name": "Load Coffee", "mcc": "5814"},
                    "amount": 1250,
                    "currency": "USD",
                    "occurred_at": stamp,
                    "auth_code": "A1B2C3",
                    "card_present": False,
                    "wallet": None,
                },
            }
        ).encode()
        mac = hmac.new(self.key, f"{message_id}.{now}.".encode() + body, hashlib.sha256)
        return body, {
            "webhook-id": message_id,
            "webhook-timestamp": str(now),
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
            "Content-Type": "application/json",
        }


class ChatEvents:
    """A Messenger message from a customer to the merchant's page, signed as Meta signs."""

    def __init__(self, app_secret: str, page_id: str) -> None:
        self.app_secret = app_secret.encode()
        self.page_id = page_id

    def __call__(self) -> tuple[bytes, dict[str, str]]:
        now_ms = int(time.time() * 1000)
        item = {
            "sender": {"id": "psid_" + secrets.token_hex(4)},
            "recipient": {"id": self.page_id},
            "timestamp": now_ms,
            "message": {"mid": "m_" + secrets.token_hex(12), "text": "Is the cold brew in?"},
        }
        body = json.dumps(
            {"object": "page", "entry": [{"id": self.page_id, "time": now_ms, "messaging": [item]}]}
        ).encode()
        digest = hmac.new(self.app_secret, body, hashlib.sha256).hexdigest()
        return body, {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


# --------------------------------------------------------------------------- set-up


@dataclass
class Shop:
    key: str
    mid: str
    page_id: str
    intents: list[str]
    partner_id: str
    partner_secret: str


def set_up(port: int, operator_key: str, stripe_server: Any, sales: int) -> Shop:
    """The merchant, its paid sales and a consenting cardholder's partner, through the API."""
    mid = "".join(secrets.choice("0123456789") for _ in range(15))
    page_id = secrets.token_hex(6)
    merchant = created(
        *call(
            port,
            "POST",
            "/v1/merchants",
            {
                "name": "Load Coffee",
                "mids": [mid],
                "chat_pages": [{"channel": "messenger", "page_id": page_id}],
            },
            operator_key,
        ),
        "merchant",
    )
    key = merchant["api_key"]["secret"]
    conversation = created(
        *call(
            port,
            "POST",
            "/v1/conversations",
            {"channel": "messenger", "thread_id": "t_load", "customer_user_id": "psid_load"},
            key,
        ),
        "conversation",
    )

    def one(_: int) -> str:
        offer = created(
            *call(
                port,
                "POST",
                f"/v1/conversations/{conversation['id']}/offers",
                {"title": "Cold brew, 1 L", "amount": 1250, "currency": "USD"},
                key,
            ),
            "offer",
        )
        sale = created(*call(port, "POST", f"/v1/offers/{offer['id']}/checkout", None, key), "sale")
        return sale["payment"]["payment_intent_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        intents = list(pool.map(one, range(sales)))
    for intent in intents:
        stripe_server.succeed(intent)

    partner = created(
        *call(port, "POST", "/v1/partners", {"name": "Load Bank"}, operator_key), "partner"
    )
    created(
        *call(
            port,
            "POST",
            f"/v1/partners/{partner['id']}/agreements",
            {
                "scopes": ["transactions"],
                "purposes": ["sales_attribution"],
                "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
                "retention_days": 30,
            },
            operator_key,
        ),
        "agreement",
    )
    created(
        *call(
            port,
            "POST",
            f"/v1/partners/{partner['id']}/consents",
            {
                "customer_ref": CUSTOMER_REF,
                "status": "granted",
                "scopes": ["transactions"],
                "purposes": ["sales_attribution"],
            },
            operator_key,
        ),
        "consent",
    )
    return Shop(key, mid, page_id, intents, partner["id"], partner["webhook_secret"])


# --------------------------------------------------------------------------- the load


@dataclass
class SenderResult:
    scenario: Scenario
    connections: int
    latencies: array[float]
    statuses: Counter[int]
    errors: int
    warmup_errors: int
    first_error: str | None


def run_load(
    scenarios: list[tuple[Scenario, int]],
    *,
    port: int,
    gunicorn_pid: int,
    warmup: float,
    duration: float,
    samplers: dict[str, CpuSampler],
) -> tuple[list[SenderResult], dict[str, Any], float, float, float]:
    """All senders at once, one client process per kind of sender (bench/common.py's client
    protocol). Returns the results, the CPU of each sampled group and the machine's busy
    share over the counted window, the senders' own CPU, and the time.time() at which the
    load ended."""
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    children = []
    try:
        for scenario, connections in scenarios:
            parent, child = context.Pipe()
            process = context.Process(
                target=client_process, args=(port, scenario, connections, child), daemon=True
            )
            process.start()
            child.close()
            pipes.append(parent)
            children.append(process)
        ready = []
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a client process did not start")
            ready.append(pipe.recv()[1])
        balance_connections(pipes, ready, gunicorn_pid, port)
        warm_end = time.monotonic() + 0.05 + warmup
        end = warm_end + duration
        for pipe in pipes:
            pipe.send(("go", warm_end, end))
        time.sleep(max(0.0, warm_end - time.monotonic()))
        before = {name: s.sample() for name, s in samplers.items()}
        time.sleep(max(0.0, end - time.monotonic()))
        after = {name: s.sample() for name, s in samplers.items()}
        ended = time.time()
        reports: list[ClientReport] = []
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a client process did not report")
            reports.append(pipe.recv())
        for process in children:
            process.join(10)
    finally:
        for process in children:
            if process.is_alive():
                process.terminate()
                process.join(5)
    results = []
    for (scenario, connections), report in zip(scenarios, reports, strict=True):
        latencies = array("d")
        latencies.frombytes(report.latencies)
        results.append(
            SenderResult(
                scenario,
                connections,
                latencies,
                Counter(report.statuses),
                report.errors,
                report.warmup_errors,
                report.first_error,
            )
        )
    cpu: dict[str, Any] = {}
    busy = 0.0
    for name in samplers:
        spent, busy = CpuSampler.difference(before[name], after[name])
        cpu[name] = spent
    return results, cpu, busy, sum(r.cpu_seconds for r in reports), ended


@dataclass
class Drain:
    """How the inbox emptied after the load: `to_last` seconds from the end of the load to
    the last event's processed_at, or, when `left` events were still pending at the
    timeout, the rate at which they were being processed."""

    to_last: float | None
    polled: float
    left: int
    rate: float | None


def drain(db: Database, worker: Worker, ended: float, timeout: float) -> Drain:
    """Wait until no inbox event is pending (polled every 100 ms), or the timeout."""
    deadline = time.monotonic() + timeout
    pending = "SELECT count(*) FROM inbox_events WHERE status = 'pending'"
    first_left, first_at = db.scalar(pending), time.monotonic()
    while True:
        left = db.scalar(pending)
        if left == 0:
            break
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            rate = (first_left - left) / max(1e-9, time.monotonic() - first_at)
            return Drain(None, time.time() - ended, left, rate)
        time.sleep(0.1)
    polled = time.time() - ended
    last = db.scalar("SELECT max(processed_at) FROM inbox_events")
    to_last = max(0.0, last.timestamp() - ended) if last else 0.0
    return Drain(to_last, polled, 0, None)


# --------------------------------------------------------------------------- report


def percentile(values: array[float], p: int) -> float:
    import statistics

    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] * 1000


def render(
    results: list[SenderResult],
    *,
    args: argparse.Namespace,
    command: str,
    machine: Any,
    cpu: dict[str, Any],
    busy: float,
    drained: Drain,
    inbox: dict[str, int],
    inbox_by_source: list[tuple[str, str, int]],
    sales: dict[str, int],
    worker_errors: int,
    client_cpu: float,
) -> str:
    machine_seconds = len(os.sched_getaffinity(0)) * args.seconds
    ours = sum(
        v or 0.0
        for v in (
            cpu["gunicorn"]["gunicorn"],
            cpu["worker"]["gunicorn"],
            cpu["gunicorn"]["postgres"],
            cpu["gunicorn"]["redis"],
            client_cpu,
        )
    )
    others = max(0.0, cpu["gunicorn"]["machine"] - ours) / machine_seconds
    out = [
        f"# Load ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`",
        "",
        f"gunicorn {GUNICORN_WORKERS} workers x {GUNICORN_THREADS} threads and one Celery worker "
        f"(`--pool {args.pool} --concurrency {args.concurrency}`) running at the same time; "
        f"{sum(r.connections for r in results)} keep-alive senders; {args.warmup:g} s warm-up "
        f"(not counted), then {args.seconds:g} s counted. Every request is a new signed event.",
        "",
        "| senders | connections | acknowledged | per s | p50 ms | p95 ms | p99 ms | non-2xx |",
        "| --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    every = array("d")
    total_errors = 0
    for r in results:
        every.extend(r.latencies)
        total_errors += r.errors
        ok = sum(n for status, n in r.statuses.items() if 200 <= status < 300)
        out.append(
            f"| {r.scenario.label} | {r.connections} | {ok} | {ok / args.seconds:.0f} | "
            f"{percentile(r.latencies, 50):.2f} | {percentile(r.latencies, 95):.2f} | "
            f"{percentile(r.latencies, 99):.2f} | {r.errors} |"
        )
    ok_all = len(every) - total_errors
    out.append(
        f"| **all** | {sum(r.connections for r in results)} | {ok_all} | "
        f"**{ok_all / args.seconds:.0f}** | {percentile(every, 50):.2f} | "
        f"**{percentile(every, 95):.2f}** | **{percentile(every, 99):.2f}** | **{total_errors}** |"
    )
    for r in results:
        if r.first_error or r.warmup_errors:
            out.append(
                f"\n{r.scenario.name}: {r.warmup_errors} non-2xx in the warm-up; first counted "
                f"error: {r.first_error}"
            )
    if drained.to_last is not None:
        drain_line = (
            f"Queue drained **{drained.to_last:.1f} s** after the end of the load (to the last "
            f"event's `processed_at`; the poll saw no event pending {drained.polled:.1f} s "
            "after the end)."
        )
    else:
        drain_line = (
            f"Queue **not drained** {drained.polled:.0f} s after the end of the load (the "
            f"--drain-timeout): {drained.left} events still pending, processed meanwhile at "
            f"{drained.rate:.1f} events/s."
        )
    out += [
        "",
        drain_line,
        "",
        f"Inbox at the end: {', '.join(f'{n} {s}' for s, n in sorted(inbox.items()))}; "
        f"the merchant's {sum(sales.values())} sales: "
        f"{', '.join(f'{n} {s}' for s, n in sorted(sales.items()))}. Worker log lines at "
        f"WARNING or ERROR: {worker_errors}.",
        "",
        "| source | status | events |",
        "| --- | --- | --: |",
        *(f"| {source} | {status} | {n} |" for source, status, n in inbox_by_source),
        "",
        "CPU seconds in the counted window: gunicorn "
        f"{cpu['gunicorn']['gunicorn'] or 0:.1f}, worker {cpu['worker']['gunicorn'] or 0:.1f}, "
        f"PostgreSQL backends of the run {cpu['gunicorn']['postgres'] or 0:.1f}, Redis "
        f"{cpu['gunicorn']['redis']:.1f}, senders {client_cpu:.1f}, every process on the machine "
        f"{cpu['gunicorn']['machine']:.1f} of {machine_seconds:.0f} available: the CPUs were "
        f"{busy:.0%} busy, {others:.0%} of them by processes outside the run.",
        "",
        "Machine:",
        "",
        machine.markdown(),
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="counted seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds first")
    parser.add_argument("--stripe", type=int, default=16, help="Stripe senders")
    parser.add_argument("--partner", type=int, default=2, help="partner senders")
    parser.add_argument("--chat", type=int, default=2, help="chat senders")
    parser.add_argument("--sales", type=int, default=200, help="paid sales the events are about")
    parser.add_argument("--pool", default="prefork", help="the worker's pool")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's concurrency")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=1200.0,
        help="seconds to wait for the inbox to drain; past it, report what is left",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="start an embedded PostgreSQL and Redis instead of using CHATLEDGER_*_URL",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.support.chat_server import ChatServer
    from tests.support.stripe_server import StripeServer

    command = " ".join([".venv/bin/python", "bench/load.py", *sys.argv[1:]])
    operator_key = "ck_op_bench_" + secrets.token_urlsafe(24)
    stripe_secret = "whsec_load_" + secrets.token_hex(16)
    chat_secret = "chat-load-" + secrets.token_hex(16)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    tmp = Path(tempfile.mkdtemp(prefix="chatledger-load-"))
    embedded = None
    if args.embedded:
        from app.embedded import EmbeddedServers

        embedded = EmbeddedServers(tmp / "embedded").start()
        base_url, redis_url = embedded.database_url, embedded.redis_url
    else:
        base_url = os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
        redis_url = os.environ.get("CHATLEDGER_REDIS_URL", DEFAULT_REDIS_URL)
    stripe_server = StripeServer().start()
    chat_server = ChatServer().start()
    flush_redis(redis_url)
    report = ""
    try:
        machine = machine_info(base_url, redis_url)
        with fresh_database(base_url) as (database, database_url):
            print(f"database {database}: migrating ...", file=sys.stderr)
            prepare_database(database_url, operator_key)
            db = Database(database_url)
            env = server_env(database_url, redis_url, operator_key, tmp)
            env.update(
                {
                    "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": stripe_secret,
                    "CHATLEDGER_STRIPE_API_KEY": STRIPE_API_KEY,
                    "CHATLEDGER_STRIPE_API_BASE": stripe_server.url,
                    "CHATLEDGER_CHAT_APP_SECRET": chat_secret,
                    "CHATLEDGER_CHAT_API_BASE": chat_server.url,
                }
            )
            server = Gunicorn(env, tmp / "gunicorn.log")
            worker = None
            samplers: dict[str, CpuSampler] = {}
            try:
                server.wait_ready()
                worker = Worker(env, args.pool, args.concurrency, tmp / "worker.log")
                worker.wait_ready()
                print(f"setting up {args.sales} paid sales ...", file=sys.stderr)
                shop = set_up(server.port, operator_key, stripe_server, args.sales)
                template, _ = event_template(stripe_server, "indented")
                headers = {"Content-Type": "application/json"}
                scenarios = [
                    (
                        Scenario(
                            "stripe",
                            "POST",
                            "/webhooks/stripe",
                            headers,
                            generate=PaidSaleEvents(template, stripe_secret, shop.intents),
                        ),
                        args.stripe,
                    ),
                    (
                        Scenario(
                            "partner",
                            "POST",
                            f"/webhooks/partners/{shop.partner_id}",
                            headers,
                            shown_path="/webhooks/partners/{id}",
                            generate=PartnerEvents(shop.partner_secret, shop.mid),
                        ),
                        args.partner,
                    ),
                    (
                        Scenario(
                            "chat",
                            "POST",
                            "/webhooks/chat/messenger",
                            headers,
                            generate=ChatEvents(chat_secret, shop.page_id),
                        ),
                        args.chat,
                    ),
                ]
                scenarios = [(s, n) for s, n in scenarios if n > 0]
                # Let the worker finish the set-up's events, so the drain measures the load's.
                drain(db, worker, time.time(), args.drain_timeout)
                samplers = {
                    "gunicorn": CpuSampler(server.process.pid, database, base_url, redis_url),
                    "worker": CpuSampler(worker.process.pid, database, base_url, redis_url),
                }
                print(
                    f"load: {sum(n for _, n in scenarios)} senders for {args.seconds:g} s ...",
                    file=sys.stderr,
                )
                results, cpu, busy, client_cpu, ended = run_load(
                    scenarios,
                    port=server.port,
                    gunicorn_pid=server.process.pid,
                    warmup=args.warmup,
                    duration=args.seconds,
                    samplers=samplers,
                )
                print("draining ...", file=sys.stderr)
                drained = drain(db, worker, ended, args.drain_timeout)
                inbox = db.statuses()
                by_source = [
                    (source, status, n)
                    for source, status, n in db.execute(
                        "SELECT split_part(source, ':', 1), status, count(*) FROM inbox_events"
                        " GROUP BY 1, 2 ORDER BY 1, 2"
                    )
                ]
                sales = dict(db.execute("SELECT state, count(*) FROM sales GROUP BY state"))
                log_text = (tmp / "worker.log").read_text(errors="replace")
                report = render(
                    results,
                    args=args,
                    command=command,
                    machine=machine,
                    cpu=cpu,
                    busy=busy,
                    drained=drained,
                    inbox=inbox,
                    inbox_by_source=by_source,
                    sales=sales,
                    worker_errors=log_text.count(" ERROR/") + log_text.count(" WARNING/"),
                    client_cpu=client_cpu,
                )
            finally:
                for sampler in samplers.values():
                    sampler.close()
                if worker is not None:
                    worker.stop()
                server.stop()
                db.close()
    except KeyboardInterrupt:
        print("interrupted; servers stopped and the database dropped", file=sys.stderr)
        return 130
    finally:
        stripe_server.stop()
        chat_server.stop()
        flush_redis(redis_url)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"load-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    print(f"written to {path.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
