"""Benchmark: `POST /v1/offers/{id}/touchpoints` under gunicorn, beside `GET /healthz`.

    .venv/bin/python bench/run_touchpoints.py [--duration S] [--concurrency N]

What it does, in order:

1. creates a database of its own (`chatledger_bench_<random>`) on the PostgreSQL named by
   CHATLEDGER_DATABASE_URL, migrates it with Alembic and registers an operator key;
2. starts gunicorn (2 workers x 4 threads) on a free port, on that database and on the
   Redis named by CHATLEDGER_REDIS_URL, with the rate limit raised out of the way;
3. creates a merchant, a conversation and an offer through the HTTP API;
4. drives each scenario with N keep-alive connections for a warm-up (not counted) and a
   fixed duration, alternating baseline and touchpoints (--rounds times) so drift shows;
5. prints a Markdown report (throughput, latency percentiles, non-2xx answers, CPU time per
   request of each process group, machine description) and writes it to bench/results/.

Gunicorn is stopped and the database dropped in every case, Ctrl-C included. Nothing here
asserts a speed: the script measures and reports.

The load generator, gunicorn and the CPU accounting are in bench/common.py, shared with
the other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import (
    DEFAULT_DATABASE_URL,
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    REPO,
    RESULTS,
    CpuSampler,
    Gunicorn,
    Machine,
    Scenario,
    ScenarioResult,
    _children,  # noqa: F401 - used as rt._children by bench/profile_touchpoints.py
    create_conversation,
    create_offer_in,
    fresh_database,
    machine_info,
    prepare_database,
    run_scenario,
    server_cpu,
    server_env,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


# --------------------------------------------------------------------------- the offer


def create_offer(port: int, operator_key: str) -> tuple[str, str]:
    """A merchant, a conversation and an offer made through the API: (merchant key, offer id)."""
    key, conversation_id = create_conversation(port, operator_key)
    return key, create_offer_in(port, key, conversation_id)


# --------------------------------------------------------------------------- report


def render(
    results: list[ScenarioResult], machine: Machine, args: argparse.Namespace, command: str
) -> str:
    def ms(value: float) -> str:
        return f"{value:.2f}"

    out = [
        f"# Touchpoints under gunicorn ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`",
        "",
        f"gunicorn {GUNICORN_WORKERS} workers x {GUNICORN_THREADS} threads (gthread); "
        f"{args.concurrency} keep-alive client connections in {args.client_processes} client "
        f"process(es); {args.warmup:g} s warm-up (not counted), then {args.duration:g} s "
        "counted per scenario.",
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

    out += ["", "Ratio touchpoints / baseline:", ""]
    by_round: dict[int, dict[str, ScenarioResult]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.scenario.name] = r
    for round_, pair in sorted(by_round.items()):
        base, touch = pair["baseline"], pair["touchpoints"]
        out.append(
            f"- round {round_}: throughput {touch.rate / base.rate:.2f}x, "
            f"p50 latency {touch.percentile(50) / base.percentile(50):.2f}x, "
            f"server CPU per request {server_cpu(touch) / server_cpu(base):.2f}x"
        )
    total = {
        name: sum(r.requests for r in results if r.scenario.name == name)
        / sum(r.duration for r in results if r.scenario.name == name)
        for name in ("baseline", "touchpoints")
    }
    out.append(
        f"- all rounds: throughput {total['touchpoints'] / total['baseline']:.2f}x "
        f"({total['touchpoints']:.0f} / {total['baseline']:.0f} req/s)"
    )

    out += [
        "",
        "CPU time per counted request (ms) of each process group, in the counted window. "
        '"machine busy" is the share of all CPUs busy, "others" the part of it spent by '
        "processes outside these groups (anything else running on the machine); "
        '"split" is the client connections each gunicorn worker held.',
        "",
        "| scenario | round | gunicorn | postgres | redis | client | total | machine busy "
        "| others | split |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    groups = ("gunicorn", "postgres", "redis", "client")
    cpus = len(os.sched_getaffinity(0))
    for r in results:
        per = {
            k: spent * 1000 / max(1, r.requests) for k in groups if (spent := r.cpu[k]) is not None
        }
        cells = [f"{per[k]:.3f}" if k in per else "n/a" for k in groups]
        ours = sum(r.cpu[k] or 0.0 for k in groups)
        others = max(0.0, (r.cpu["machine"] or 0.0) - ours) / (cpus * r.duration)
        out.append(
            f"| {r.scenario.name} | {r.round} | {' | '.join(cells)} | {sum(per.values()):.3f} "
            f"| {r.machine_busy:.0%} | {others:.0%} | {'/'.join(map(str, r.split))} |"
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

    out += ["", "Machine:", "", machine.markdown(), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds first")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections")
    parser.add_argument(
        "--client-processes",
        type=int,
        # One process was measured to be enough: see docs/BENCHMARKS.md.
        default=1,
        help="processes the connections are spread over (see docs/BENCHMARKS.md)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="baseline+touchpoints pairs")
    parser.add_argument(
        "--only",
        choices=("baseline", "touchpoints"),
        help="run one scenario only (for exploring; the report's ratio needs both)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration must be positive, --warmup not negative, --rounds at least 1")
    if not 1 <= args.client_processes <= args.concurrency:
        parser.error("--client-processes must be between 1 and --concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The application is imported from the tree this script is in, ahead of any installed copy.
    sys.path.insert(0, str(REPO))
    command = " ".join([".venv/bin/python", "bench/run_touchpoints.py", *sys.argv[1:]])
    base_url = os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("CHATLEDGER_REDIS_URL", DEFAULT_REDIS_URL)
    operator_key = "ck_op_bench_" + secrets.token_urlsafe(24)

    # Ctrl-C and SIGTERM (e.g. a CI timeout) unwind through the finally blocks below. SIGINT
    # is set explicitly: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    machine = machine_info(base_url, redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-bench-"))
    results: list[ScenarioResult] = []
    try:
        with fresh_database(base_url) as (database, database_url):
            print(f"database {database}: migrating ...", file=sys.stderr)
            prepare_database(database_url, operator_key)
            server = Gunicorn(
                server_env(database_url, redis_url, operator_key, tmp), tmp / "gunicorn.log"
            )
            sampler: CpuSampler | None = None
            try:
                server.wait_ready()
                key, offer_id = create_offer(server.port, operator_key)
                sampler = CpuSampler(server.process.pid, database, base_url, redis_url)
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                scenarios = [
                    Scenario("baseline", "GET", "/healthz", headers),
                    Scenario(
                        "touchpoints",
                        "POST",
                        f"/v1/offers/{offer_id}/touchpoints",
                        headers,
                        b'{"kind": "viewed"}',
                        shown_path="/v1/offers/{id}/touchpoints",
                    ),
                ]
                if args.only:
                    scenarios = [s for s in scenarios if s.name == args.only]
                for round_ in range(1, args.rounds + 1):
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
                            f"p50 {result.percentile(50):.2f} ms, {result.errors} errors",
                            file=sys.stderr,
                        )
            finally:
                if sampler is not None:
                    sampler.close()
                server.stop()
    except KeyboardInterrupt:
        print("interrupted; gunicorn stopped and the database dropped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.only:
        for r in results:
            print(
                f"{r.scenario.label} round {r.round}: {r.rate:.0f} req/s, "
                f"p50 {r.percentile(50):.2f} ms, p99 {r.percentile(99):.2f} ms, "
                f"client CPU {(r.cpu['client'] or 0.0) / r.duration:.2f} cores, "
                f"connections per worker {r.split}"
            )
        return 0
    report = render(results, machine, args, command)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"touchpoints-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    print(f"written to {path.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
