"""Where the Stripe door's time goes inside a gunicorn worker, sampled with py-spy, and what
its CPU-only steps cost when timed alone.

    .venv/bin/python bench/profile_ingest.py [--py-spy PATH] [--duration S]

py-spy is not a dependency of the project; install it anywhere, for instance
`pip install --target /tmp/pyspy py-spy` and pass `--py-spy /tmp/pyspy/bin/py-spy`.
It attaches to running processes, so it needs root or ptrace permission.

Same setup as bench/run_ingest.py (fresh database, the Stripe stand-in, gunicorn 2 x 4
serving `bench.ingest_app:app`, a new signed event per request, no worker), then:

- **CPU under load**, door and baseline: 16 connections, both workers sampled only while a
  thread holds the GIL (`--gil`), as bench/profile_touchpoints.py does (same sampling, same
  rule: a sample goes to the category of its innermost frame that names one);
- **Wall time of one request at a time**, door: 1 connection, `--idle`;
- **The CPU-only steps alone**: signature check, strict JSON parsing and scrubbing of one of
  the benchmark's event bodies, timed in this process with `timeit` (best of 5), beside a
  plain `json.loads` of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import timeit
from collections import Counter
from pathlib import Path
from typing import Any

import profile_touchpoints as pt
import run_ingest as ri
from common import (
    DEFAULT_DATABASE_URL,
    REPO,
    CpuSampler,
    Gunicorn,
    Scenario,
    fresh_database,
    prepare_database,
    server_env,
)

#: (category, function name, file fragment), innermost match wins (profile_touchpoints rule).
CATEGORIES: list[tuple[str, str, str]] = [
    ("signature: verify_stripe()", "verify_stripe", "webhooks/verify.py"),
    ("strict JSON: loads_strict()", "loads_strict", "commerce/strictjson.py"),
    ("scrub()", "scrub", "commerce/cards/scrub.py"),
    ("connection checkout (pool, pre-ping)", "Pool.connect", "sqlalchemy/pool/"),
    ("task send after the commit: apply_async()", "Task.apply_async", "celery/app/task.py"),
    ("rest of inbox.send()", "send", "webhooks/inbox.py"),
    # The door's Core transaction (commerce.runtime.connection(), engine.begin()).
    ("COMMIT", "Connection._commit_impl", "sqlalchemy/engine/base.py"),
    ("connection close (return to the pool)", "Connection.close", "sqlalchemy/engine/base.py"),
    ("rest of runtime.connection() (begin, exit)", "connection", "commerce/runtime.py"),
    # The ORM session the door used before commit eb35581 (kept for older commits).
    ("COMMIT", "Session.commit", "sqlalchemy/orm/session.py"),
    ("session close", "Session.close", "sqlalchemy/orm/session.py"),
    ("INSERT: inbox.insert_event()", "insert_event", "webhooks/inbox.py"),
    ("INSERT: inbox.store()", "store", "webhooks/inbox.py"),
    ("rest of accept_stripe_event()", "accept_stripe_event", "webhooks/receive.py"),
    ("rest of stripe_door()", "stripe_door", "webhooks/receive.py"),
    ("baseline: raw psycopg INSERT + COMMIT", "raw_insert", "ingest_app.py"),
    ("metrics (prometheus_client)", "observe", "app/api/health.py"),
    ("Flask, rest of the request", "Flask.__call__", "flask/app.py"),
    ("gunicorn: HTTP parsing, writing, dispatch", "ThreadWorker.handle", "gunicorn/"),
]

#: A sample whose stack does not start at a thread's or the program's first frame: py-spy
#: (`--nonblocking`) read only its innermost frames. profile_touchpoints counts these in the
#: main loop; here they get their own line, so that the main loop is the main loop.
PARTIAL = "stack cut short by py-spy (innermost frames only)"
ROOTS = ("_run_module_as_main ", "Thread._bootstrap ", "<module> ")

#: Inside the two largest categories of the door: (category, part, function, file fragment),
#: the innermost matching frame wins; samples of the category that match none are "rest".
DETAILS: list[tuple[str, str, str, str]] = [
    (
        "task send after the commit: apply_async()",
        "redis-py: the LPUSH (Redis.execute_command)",
        "Redis.execute_command",
        "redis/client.py",
    ),
    (
        "task send after the commit: apply_async()",
        "kombu: a new Redis client per message (Channel._create_client)",
        "Channel._create_client",
        "kombu/transport/redis.py",
    ),
    (
        "task send after the commit: apply_async()",
        "kombu: rest of Producer.publish()",
        "Producer.publish",
        "kombu/messaging.py",
    ),
    (
        "task send after the commit: apply_async()",
        "celery: message building (AMQP.as_task_v2)",
        "AMQP.as_task_v2",
        "celery/app/amqp.py",
    ),
    (
        "INSERT: inbox.insert_event()",
        "psycopg: Cursor.execute()",
        "Cursor.execute",
        "psycopg/cursor.py",
    ),
    (
        "INSERT: inbox.insert_event()",
        "SQLAlchemy: rest of Connection.execute()",
        "Connection.execute",
        "sqlalchemy/engine/base.py",
    ),
    (
        "INSERT: inbox.insert_event()",
        "result: scalar_one_or_none()",
        "Result.scalar_one_or_none",
        "sqlalchemy/engine/result.py",
    ),
    ("INSERT: inbox.insert_event()", "new_id()", "new_id", "commerce/ids.py"),
]


def _matches(frame: str, function: str, fragment: str) -> bool:
    name, _, where = frame.partition(" (")
    return (name == function or name.endswith("." + function)) and fragment in where


def categorize(stack: str) -> str:
    category = _categorize(stack)
    if category == pt.OUTSIDE and not stack.startswith(ROOTS):
        return PARTIAL
    return category


_categorize = pt.categorize


def details(path_glob: list[Path]) -> Counter[tuple[str, str]]:
    """Samples of the DETAILS categories, by (category, part)."""
    counts: Counter[tuple[str, str]] = Counter()
    wanted = {category for category, _, _, _ in DETAILS}
    for path in path_glob:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not (stack and count.isdigit()):
                continue
            category = categorize(stack)
            if category not in wanted:
                continue
            part = "rest"
            for frame in reversed(stack.split(";")):
                found = [
                    p for c, p, f, frag in DETAILS if c == category and _matches(frame, f, frag)
                ]
                if found:
                    part = found[0]
                    break
            counts[(category, part)] += int(count)
    return counts


def render_details(profile: Any, counts: Counter[tuple[str, str]]) -> str:
    r = profile.result
    total = sum(profile.samples.values()) or 1
    cpu_ms = (r.cpu["gunicorn"] or 0.0) * 1000 / max(1, r.requests)
    lines = [
        f"### Inside the largest parts ({profile.title})",
        "",
        "| category | part | share of all samples | ms per request |",
        "| --- | --- | --: | --: |",
    ]
    order = list(dict.fromkeys([(c, p) for c, p, _, _ in DETAILS]))
    for category in dict.fromkeys(c for c, _, _, _ in DETAILS):
        for key in [k for k in order if k[0] == category] + [(category, "rest")]:
            share = counts[key] / total
            lines.append(f"| {key[0]} | {key[1]} | {share:.1%} | {share * cpu_ms:.3f} |")
    lines.append("")
    return "\n".join(lines)


def time_steps(template: str, secret: str) -> list[tuple[str, float]]:
    """Microseconds per call of the door's CPU-only steps on one benchmark body."""
    from commerce.cards.scrub import scrub
    from commerce.strictjson import _check_tree, loads_strict
    from webhooks.verify import verify_stripe

    body, headers = ri.SignedEvents(template, secret)()
    document = json.loads(body)
    signature = headers["Stripe-Signature"]
    steps = [
        ("verify_stripe(): the SDK's HMAC check", lambda: verify_stripe(body, signature, [secret])),
        ("json.loads() of the same bytes, for scale", lambda: json.loads(body)),
        ("loads_strict(), all of it", lambda: loads_strict(body)),
        ("  of which _check_tree() on the parsed event", lambda: _check_tree(document)),
        ("scrub(event, hasher=None)", lambda: scrub(document, hasher=None)),
    ]
    out = []
    for name, step in steps:
        runs = 2000
        best = min(timeit.repeat(step, number=runs, repeat=5)) / runs
        out.append((name, best * 1e6))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary")
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16, help="connections, CPU runs")
    parser.add_argument("--body-format", choices=("indented", "compact"), default="indented")
    parser.add_argument(
        "--raw-dir", type=Path, help="keep py-spy's raw samples there (default: thrown away)"
    )
    args = parser.parse_args()
    if not args.py_spy:
        parser.error("py-spy not found: install it and pass --py-spy PATH")
    sys.path.insert(0, str(REPO))
    from tests.support.stripe_server import StripeServer

    # profile_touchpoints' sampling and report, with the door's categories.
    pt.CATEGORIES[:] = [*CATEGORIES, (PARTIAL, "", "\0")]  # PARTIAL: listed, never matched
    pt.categorize = categorize

    base_url = os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("CHATLEDGER_REDIS_URL", ri.DEFAULT_REDIS_URL)
    operator_key = "ck_op_bench_" + os.urandom(18).hex()
    secret = "whsec_bench_" + os.urandom(16).hex()
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-profile-"))
    profiles: list[Any] = []
    door_details: Counter[tuple[str, str]] = Counter()
    detail_profile: Any = None
    steps: list[tuple[str, float]] = []
    stripe_server = StripeServer().start()
    ri.flush_redis(redis_url)
    try:
        with fresh_database(base_url) as (database, database_url):
            prepare_database(database_url, operator_key)
            db = ri.Database(database_url)
            ri.create_bench_table(db)
            db.close()
            env = server_env(database_url, redis_url, operator_key, tmp)
            env.pop("BENCH_INGEST_EXPERIMENT", None)  # the product's door, always
            env.update(
                {
                    "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": secret,
                    "CHATLEDGER_STRIPE_API_KEY": ri.STRIPE_API_KEY,
                    "CHATLEDGER_STRIPE_API_BASE": stripe_server.url,
                }
            )
            server = Gunicorn(env, tmp / "gunicorn.log", app=ri.APP)
            sampler: CpuSampler | None = None
            try:
                server.wait_ready()
                template, _ = ri.event_template(stripe_server, args.body_format)
                events = ri.SignedEvents(template, secret)
                headers = {"Content-Type": "application/json"}
                door = Scenario("door", "POST", ri.DOOR_PATH, headers, generate=events)
                baseline = Scenario("baseline", "POST", ri.BASELINE_PATH, headers, generate=events)
                sampler = CpuSampler(server.process.pid, database, base_url, redis_url)
                runs = [
                    (f"Door, CPU under load ({args.concurrency} connections)", door, False),
                    (f"Baseline, CPU under load ({args.concurrency} connections)", baseline, False),
                    ("Door, wall time, one connection", door, True),
                ]
                for n, (title, scenario, wall) in enumerate(runs, 1):
                    print(f"{title} ...", file=sys.stderr)
                    out = (args.raw_dir or tmp) / f"run{n}"
                    out.mkdir(parents=True, exist_ok=True)
                    profiles.append(
                        profile := pt.profile(
                            py_spy=args.py_spy,
                            server=server,
                            scenario=scenario,
                            sampler=sampler,
                            connections=1 if wall else args.concurrency,
                            warmup=args.warmup,
                            duration=args.duration,
                            wall=wall,
                            out=out,
                            title=title,
                        )
                    )
                    if wall:
                        # As with the main loop: cut stacks of idle threads are not waits.
                        profile.samples.pop(PARTIAL, None)
                    elif scenario is door:
                        door_details = details(sorted(out.glob("cpu-*.txt")))
                        detail_profile = profile
                    ri.flush_redis(redis_url)  # the door's tasks: no worker runs
                steps = time_steps(template, secret)
            finally:
                if sampler is not None:
                    sampler.close()
                server.stop()
    except KeyboardInterrupt:
        return 130
    finally:
        stripe_server.stop()
        ri.flush_redis(redis_url)
        shutil.rmtree(tmp, ignore_errors=True)
    print(pt.render(profiles))
    if detail_profile is not None:
        print(render_details(detail_profile, door_details))
    print("### The door's CPU-only steps, timed alone (one body, best of 5 x 2000 calls)")
    print()
    print("| step | µs per call |")
    print("| --- | --: |")
    for name, micros in steps:
        print(f"| {name} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
