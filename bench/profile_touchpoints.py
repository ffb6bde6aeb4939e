"""Where a touchpoint's time goes inside a gunicorn worker, sampled with py-spy.

    .venv/bin/python bench/profile_touchpoints.py [--py-spy PATH] [--duration S]

py-spy is not a dependency of the project; install it anywhere, for instance
`pip install --target /tmp/pyspy py-spy` and pass `--py-spy /tmp/pyspy/bin/py-spy`.
It attaches to running processes, so it needs root or ptrace permission.

Same setup as bench/run_touchpoints.py (fresh database, gunicorn 2 x 4, an offer made
through the API), then two measurements of `POST /v1/offers/{id}/touchpoints`:

- **CPU under load**: 16 connections, both workers sampled only while a thread holds
  the GIL (`--gil`), i.e. Python code running. The shares are turned into milliseconds
  with the workers' CPU time per request read from /proc in the same window.
- **Wall time of one request at a time**: 1 connection, samples of the thread handling
  the request, waiting included (`--idle`): database and Redis round trips show here.

Each sample is put in the category of its innermost frame that names one (below), so
the categories add up to 100 %. Sampling runs `--nonblocking` (the workers are never
paused), at the price of some failed samples, which are left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import run_touchpoints as rt

#: (category, function name, file fragment): a sample belongs to the category of the
#: innermost frame that matches. Stack frames look like "name (path/file.py:line)".
CATEGORIES: list[tuple[str, str, str]] = [
    ("connection checkout (pool, pre-ping)", "Pool.connect", "sqlalchemy/pool/"),
    ("key lookup: authenticate()", "authenticate", "commerce/access/services.py"),
    ("rate limit: Redis INCR + EXPIRE", "_rate_limit", "app/auth.py"),
    ("offer lookup: get_offer()", "get_offer", "commerce/offers/services.py"),
    ("insert: rest of record_touchpoint()", "record_touchpoint", "commerce/offers/services.py"),
    ("commit and session close", "commit_on_success", "app/web.py"),
    ("body parsing (webargs, marshmallow)", "Parser.parse", "webargs/core.py"),
    ("response serialization (marshmallow)", "Schema.dump", "marshmallow/schema.py"),
    ("metrics (prometheus_client)", "observe", "app/api/health.py"),
    ("Flask, flask-smorest, rest of the view", "Flask.__call__", "flask/app.py"),
    ("gunicorn: HTTP parsing, writing, dispatch", "ThreadWorker.handle", "gunicorn/"),
]
OUTSIDE = "gunicorn: main loop (poll, accept)"


def categorize(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        for category, function, fragment in CATEGORIES:
            # Nested functions show as "outer.<locals>.name".
            if (name == function or name.endswith("." + function)) and fragment in where:
                return category
    return OUTSIDE


def read_samples(paths: list[Path]) -> Counter[str]:
    """py-spy's raw (collapsed) output: one 'frame;frame;... count' line per stack."""
    counts: Counter[str] = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[categorize(stack)] += int(count)
    return counts


@dataclass
class Profile:
    title: str
    samples: Counter[str]
    result: rt.ScenarioResult


def profile(
    *,
    py_spy: str,
    server: rt.Gunicorn,
    scenario: rt.Scenario,
    sampler: rt.CpuSampler,
    connections: int,
    warmup: float,
    duration: float,
    wall: bool,
    out: Path,
    title: str,
) -> Profile:
    """Drive `scenario` and sample every worker with py-spy during the counted window."""
    holder: dict[str, rt.ScenarioResult] = {}
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            holder["result"] = rt.run_scenario(
                scenario,
                port=server.port,
                gunicorn_pid=server.process.pid,
                connections=connections,
                processes=1,
                warmup=warmup,
                duration=duration,
                sampler=sampler,
                round_=1,
            )
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    load = threading.Thread(target=drive)
    load.start()
    time.sleep(warmup + 2)  # client start-up and warm-up; sampling stays inside the window
    workers = rt._children(server.process.pid)
    paths = [out / f"{'wall' if wall else 'cpu'}-{pid}.txt" for pid in workers]
    spies = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(duration) - 3)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--idle" if wall else "--gil",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, path in zip(workers, paths, strict=True)
    ]
    for spy in spies:
        spy.wait()
    load.join()
    if errors:
        raise errors[0]
    samples = read_samples(paths)
    if wall:
        # Only the thread serving the request: idle pool threads and the poll loop are
        # waiting for work, not for a dependency.
        samples.pop(OUTSIDE, None)
    return Profile(title, samples, holder["result"])


def render(profiles: list[Profile]) -> str:
    lines: list[str] = []
    for p in profiles:
        r = p.result
        total = sum(p.samples.values()) or 1
        cpu_ms = (r.cpu["gunicorn"] or 0.0) * 1000 / max(1, r.requests)
        mean_ms = sum(r.latencies) * 1000 / max(1, r.requests)
        lines += [
            f"### {p.title}",
            "",
            f"{r.requests} requests, {r.rate:.0f} req/s, p50 {r.percentile(50):.2f} ms, "
            f"mean {mean_ms:.2f} ms, {r.errors} errors; gunicorn CPU {cpu_ms:.3f} ms/request; "
            f"{total} samples.",
            "",
            "| category | share | ms per request |"
            if "CPU" in p.title
            else "| category | share | share x client mean latency, ms |",
            "| --- | --: | --: |",
        ]
        # CPU shares scale the measured CPU per request; wall shares the client's mean latency.
        scale = cpu_ms if "CPU" in p.title else mean_ms
        order = list(dict.fromkeys([c for c, _, _ in CATEGORIES] + [OUTSIDE]))
        for category in order:
            if category in p.samples:
                share = p.samples[category] / total
                lines.append(f"| {category} | {share:.1%} | {share * scale:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary")
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16, help="connections, CPU run")
    args = parser.parse_args()
    if not args.py_spy:
        parser.error("py-spy not found: install it and pass --py-spy PATH")
    sys.path.insert(0, str(rt.REPO))

    base_url = os.environ.get("CHATLEDGER_DATABASE_URL", rt.DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("CHATLEDGER_REDIS_URL", rt.DEFAULT_REDIS_URL)
    operator_key = "ck_op_bench_" + os.urandom(18).hex()
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-profile-"))
    profiles: list[Profile] = []
    try:
        with rt.fresh_database(base_url) as (database, database_url):
            rt.prepare_database(database_url, operator_key)
            server = rt.Gunicorn(
                rt.server_env(database_url, redis_url, operator_key, tmp), tmp / "gunicorn.log"
            )
            sampler: rt.CpuSampler | None = None
            try:
                server.wait_ready()
                key, offer_id = rt.create_offer(server.port, operator_key)
                sampler = rt.CpuSampler(server.process.pid, database, base_url, redis_url)
                scenario = rt.Scenario(
                    "touchpoints",
                    "POST",
                    f"/v1/offers/{offer_id}/touchpoints",
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                    b'{"kind": "viewed"}',
                    shown_path="/v1/offers/{id}/touchpoints",
                )
                for title, connections, wall in (
                    (f"CPU under load ({args.concurrency} connections)", args.concurrency, False),
                    ("Wall time, one connection", 1, True),
                ):
                    print(f"{title} ...", file=sys.stderr)
                    profiles.append(
                        profile(
                            py_spy=args.py_spy,
                            server=server,
                            scenario=scenario,
                            sampler=sampler,
                            connections=connections,
                            warmup=args.warmup,
                            duration=args.duration,
                            wall=wall,
                            out=tmp,
                            title=title,
                        )
                    )
            finally:
                if sampler is not None:
                    sampler.close()
                server.stop()
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
