"""What the benchmarks in bench/ share: a fresh database, gunicorn in a subprocess, a
load generator with keep-alive connections spread evenly over gunicorn's workers, CPU
accounting per process group and a description of the machine.

Used by bench/run_touchpoints.py and bench/run_ingest.py (and, through the former,
bench/profile_touchpoints.py). The scripts import it as `common` (bench/ is the first
entry of sys.path when a script in it runs).

Only the standard library is imported at module level: the load-generating client
processes are started with `spawn` and re-import this module, and should start fast and
carry nothing of the application.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 4
HOST = "127.0.0.1"

# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One request, repeated by every client connection.

    With `generate` set, each request gets its body and headers from `generate()` instead of
    `body` and `headers` (for requests that must differ, such as signed webhook events with
    unique ids). It runs in the client processes, so it must pickle, and it is called once
    before the connections open, so that its imports are done before the clock starts.
    Its time is not part of the measured latency.
    """

    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    #: The path as shown in the report, without generated ids.
    shown_path: str = ""
    generate: Callable[[], tuple[bytes | None, dict[str, str]]] | None = None

    @property
    def label(self) -> str:
        return f"{self.name}: {self.method} {self.shown_path or self.path}"


@dataclass
class ClientReport:
    """What one client process measured inside the counted window."""

    latencies: bytes  # array("d") of seconds, every completed request
    errors: int  # non-2xx answers and failed connections
    statuses: dict[int, int]  # status -> count, 0 for a failed connection
    warmup_errors: int
    first_error: str | None
    cpu_seconds: float  # user + system CPU of the client process


@dataclass
class ScenarioResult:
    scenario: Scenario
    round: int
    duration: float
    latencies: array[float]
    errors: int
    statuses: Counter[int]
    warmup_errors: int
    first_error: str | None
    cpu: dict[str, float | None]  # process group -> CPU seconds in the counted window
    machine_busy: float  # share of all CPUs busy in the window, 0..1
    split: list[int]  # client connections held by each gunicorn worker

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.duration

    def percentile(self, p: int) -> float:
        """The p-th percentile latency in milliseconds (linear interpolation)."""
        if len(self.latencies) < 2:
            return float("nan")
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[p - 1] * 1000


# --------------------------------------------------------------------------- load generator


def _connect(port: int) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    connection.connect()
    # Small requests on a keep-alive connection: do not let Nagle hold them back.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _client_thread(
    port: int,
    scenario: Scenario,
    connection: http.client.HTTPConnection,
    go: threading.Event,
    schedule: list[float],
    out: dict[str, Any],
) -> None:
    """Send the scenario's request back to back on one keep-alive connection.

    A request counts when it starts after the warm-up and completes before the end; its
    latency is recorded whatever the answer, and a non-2xx answer is also an error.
    """
    latencies = array("d")
    statuses: Counter[int] = Counter()
    errors = warmup_errors = 0
    first_error: str | None = None
    go.wait()
    warm_end, end = schedule
    clock = time.monotonic
    generate = scenario.generate
    body, headers = scenario.body, scenario.headers
    while True:
        if generate is not None:
            body, headers = generate()
        started = clock()
        if started >= end:
            break
        try:
            connection.request(scenario.method, scenario.path, body, headers)
            response = connection.getresponse()
            payload = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status, payload = 0, repr(exc).encode()
            connection.close()
            with contextlib.suppress(OSError):
                connection = _connect(port)
        finished = clock()
        failed = not 200 <= status < 300
        if started < warm_end:
            warmup_errors += failed
            continue
        if finished > end:
            continue
        latencies.append(finished - started)
        statuses[status] += 1
        if failed:
            errors += 1
            if first_error is None:
                first_error = f"{status} {payload[:300].decode(errors='replace')}"
    connection.close()
    out.update(
        latencies=latencies,
        statuses=statuses,
        errors=errors,
        warmup_errors=warmup_errors,
        first_error=first_error,
    )


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_process(port: int, scenario: Scenario, threads: int, pipe: Connection) -> None:
    """One load-generating process: `threads` connections, each on a thread of its own.

    Protocol with the parent, over `pipe`:
    - we send ("ready", local ports of our connections) once they are open;
    - the parent may answer ("reconnect", ports): those connections are opened anew, and
      we send "ready" again (see `balance_connections`);
    - the parent sends ("go", warm_end, end), time.monotonic() values (one clock for all
      processes on Linux); we run and send back a ClientReport.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if scenario.generate is not None:
        scenario.generate()  # its imports and set-up, before any clock runs
    connections: dict[int, http.client.HTTPConnection] = {}
    for _ in range(threads):
        connection = _connect(port)
        connections[connection.sock.getsockname()[1]] = connection
    while True:
        pipe.send(("ready", list(connections)))
        message = pipe.recv()
        if message[0] == "go":
            _, warm_end, end = message
            break
        for local_port in message[1]:
            connections.pop(local_port).close()
            connection = _connect(port)
            connections[connection.sock.getsockname()[1]] = connection

    go = threading.Event()
    schedule = [warm_end, end]
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_client_thread,
            args=(port, scenario, connection, go, schedule, out),
            daemon=True,
        )
        for connection, out in zip(connections.values(), outs, strict=True)
    ]
    for worker in workers:
        worker.start()
    go.set()
    time.sleep(max(0.0, warm_end - time.monotonic()))
    cpu_start = _cpu_self()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu_end = _cpu_self()
    for worker in workers:
        worker.join()
    latencies = array("d")
    statuses: Counter[int] = Counter()
    for out in outs:
        latencies.extend(out["latencies"])
        statuses.update(out["statuses"])
    pipe.send(
        ClientReport(
            latencies=latencies.tobytes(),
            errors=sum(out["errors"] for out in outs),
            statuses=dict(statuses),
            warmup_errors=sum(out["warmup_errors"] for out in outs),
            first_error=next((o["first_error"] for o in outs if o["first_error"]), None),
            cpu_seconds=cpu_end - cpu_start,
        )
    )
    pipe.close()


# --------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process, from /proc (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields_ = stat[stat.rindex(")") + 2 :].split()
    return (int(fields_[11]) + int(fields_[12])) / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def connections_per_worker(master: int, port: int) -> dict[int, set[int]]:
    """The client ports of the established connections each gunicorn worker holds.

    Read from /proc: the server side of each connection to `port` (state 01, ESTABLISHED)
    gives the client's port and a socket inode, and the workers' open files name the inodes.
    A connection still waiting in the accept queue belongs to no worker yet.
    """
    peers: dict[int, int] = {}  # socket inode -> client port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    peers[int(cols[9])] = int(cols[2].rsplit(":", 1)[1], 16)
    held: dict[int, set[int]] = {}
    for pid in _children(master):
        held[pid] = set()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and int(target[8:-1]) in peers:
                        held[pid].add(peers[int(target[8:-1])])
    return held


def balance_connections(
    pipes: list[Connection], ready: list[list[int]], master: int, port: int, attempts: int = 30
) -> list[int]:
    """Reopen client connections until gunicorn's workers hold equal shares of them.

    A keep-alive connection stays with the worker that accepted it, and which worker
    accepts is a race: a fixed set of 16 connections was seen to land 16/0, leaving one
    worker (one GIL) to carry the whole load and the other idle, and the run measuring
    that lottery. Spread evenly they stand for many clients behind a load balancer.
    Connections above the even share are reopened, and land wherever they land, until the
    split is even or `attempts` runs out. Returns the connections per worker, busiest first.
    """
    owner = {local: i for i, ports in enumerate(ready) for local in ports}
    split: dict[int, set[int]] = {}
    for attempt in range(attempts + 1):
        deadline = time.monotonic() + 5
        while True:  # until every connection has been accepted by a worker
            split = connections_per_worker(master, port)
            if sum(map(len, split.values())) >= len(owner) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        share = -(-len(owner) // max(1, len(split)))  # ceiling division
        excess = [local for held in split.values() for local in sorted(held)[share:]]
        if not excess or attempt == attempts:
            break
        by_pipe: dict[int, list[int]] = {}
        for local in excess:
            by_pipe.setdefault(owner.pop(local), []).append(local)
        for i, ports in by_pipe.items():
            pipes[i].send(("reconnect", ports))
        for i in by_pipe:
            _, ports = pipes[i].recv()
            owner = {local: j for local, j in owner.items() if j != i}
            owner.update({local: i for local in ports})
    return sorted((len(held) for held in split.values()), reverse=True)


class CpuSampler:
    """Cumulative CPU seconds of the server-side process groups, sampled on demand.

    - gunicorn: the master and its workers;
    - postgres: the backends connected to the benchmark's database (read from /proc, so
      only when PostgreSQL runs on this machine; background writers are not counted);
    - redis: the whole Redis server (INFO cpu), so other clients of it count too.
    """

    def __init__(self, gunicorn_pid: int, database: str, admin_url: str, redis_url: str) -> None:
        import redis
        from sqlalchemy import create_engine

        self._gunicorn = gunicorn_pid
        self._database = database
        self._engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self._redis = redis.Redis.from_url(redis_url)

    def _postgres_pids(self) -> list[int]:
        from sqlalchemy import text

        with self._engine.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": self._database},
                ).scalars()
            )

    def sample(self) -> dict[str, Any]:
        gunicorn = [self._gunicorn, *_children(self._gunicorn)]
        info = self._redis.info("cpu")
        return {
            "gunicorn": {pid: _proc_cpu(pid) for pid in gunicorn},
            "postgres": {pid: _proc_cpu(pid) for pid in self._postgres_pids()},
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "machine": _machine_ticks(),
        }

    @staticmethod
    def difference(
        before: dict[str, Any], after: dict[str, Any]
    ) -> tuple[dict[str, float | None], float]:
        """CPU seconds per group between two samples, and the machine's busy share."""

        def per_pid(group: str) -> float | None:
            now = {pid: cpu for pid, cpu in after[group].items() if cpu is not None}
            if not now:
                return None
            # A process that started in between counts from zero.
            return sum(cpu - (before[group].get(pid) or 0.0) for pid, cpu in now.items())

        busy0, total0 = before["machine"]
        busy1, total1 = after["machine"]
        cpu = {
            "gunicorn": per_pid("gunicorn"),
            "postgres": per_pid("postgres"),
            "redis": after["redis"] - before["redis"],
            "machine": (busy1 - busy0) / _TICK,  # every process on the machine
        }
        return cpu, (busy1 - busy0) / max(1, total1 - total0)

    def close(self) -> None:
        self._engine.dispose()
        self._redis.close()


# --------------------------------------------------------------------------- one scenario


def run_scenario(
    scenario: Scenario,
    *,
    port: int,
    gunicorn_pid: int,
    connections: int,
    processes: int,
    warmup: float,
    duration: float,
    sampler: CpuSampler,
    round_: int,
) -> ScenarioResult:
    context = multiprocessing.get_context("spawn")
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    pipes: list[Connection] = []
    children = []
    try:
        for threads in share:
            parent, child = context.Pipe()
            process = context.Process(
                target=client_process, args=(port, scenario, threads, child), daemon=True
            )
            process.start()
            child.close()
            pipes.append(parent)
            children.append(process)
        ready: list[list[int]] = []
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a client process did not start")
            ready.append(pipe.recv()[1])
        split = balance_connections(pipes, ready, gunicorn_pid, port)

        warm_end = time.monotonic() + 0.05 + warmup
        end = warm_end + duration
        for pipe in pipes:
            pipe.send(("go", warm_end, end))
        time.sleep(max(0.0, warm_end - time.monotonic()))
        before = sampler.sample()
        time.sleep(max(0.0, end - time.monotonic()))
        after = sampler.sample()

        reports: list[ClientReport] = []
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a client process did not report")
            reports.append(pipe.recv())
        for process in children:
            process.join(10)
    finally:
        for process in children:
            if process.is_alive():
                process.terminate()
                process.join(5)

    latencies = array("d")
    statuses: Counter[int] = Counter()
    for report in reports:
        latencies.frombytes(report.latencies)
        statuses.update(report.statuses)
    cpu, busy = CpuSampler.difference(before, after)
    cpu["client"] = sum(report.cpu_seconds for report in reports)
    return ScenarioResult(
        scenario=scenario,
        round=round_,
        duration=duration,
        latencies=latencies,
        errors=sum(r.errors for r in reports),
        statuses=statuses,
        warmup_errors=sum(r.warmup_errors for r in reports),
        first_error=next((r.first_error for r in reports if r.first_error), None),
        cpu=cpu,
        machine_busy=busy,
        split=split,
    )


# --------------------------------------------------------------------------- database


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(base_url: str) -> Iterator[tuple[str, str]]:
    """A new, empty database on the server of `base_url`: yields (name, url); dropped after.

    The administrative connection goes to the database `base_url` names, as the test
    suite's does; only the database name of the yielded URL differs.
    """
    with bench_database(base_url) as (name, url, _):
        yield name, url


@contextlib.contextmanager
def bench_database(
    base_url: str, *, reuse: str | None = None, keep: bool = False
) -> Iterator[tuple[str, str, bool]]:
    """The benchmark's database: (name, url, fresh).

    `reuse` names a database an earlier `keep` run left, data and all (fresh is False); it is
    left as it is. Otherwise a new one is made, dropped at the end unless `keep` (a kept
    database is still dropped if the run fails, since its data would be incomplete).
    """
    if reuse:
        yield reuse, with_database(base_url, reuse), False
        return
    from sqlalchemy import create_engine, text

    name = f"chatledger_bench_{secrets.token_hex(4)}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield name, with_database(base_url, name), True
        except BaseException:
            drop()
            raise
        if not keep:
            drop()
    finally:
        admin.dispose()


def drop_secondary_indexes(connection: Any, table: str) -> list[str]:
    """Drop `table`'s indexes that are neither its primary key nor behind a constraint, for a
    bulk load, and return their definitions so the caller can build them again after it."""
    from sqlalchemy import text

    definitions = []
    for name, definition in connection.execute(
        text(
            "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index AS x"
            " JOIN pg_class AS i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c"
            " WHERE c.conindid = x.indexrelid)"
        ),
        {"t": table},
    ).all():
        connection.execute(text(f'DROP INDEX "{name}"'))
        definitions.append(definition)
    return definitions


def build_indexes(engine: Any, statements: list[str]) -> None:
    """Run the definitions `drop_secondary_indexes` returned, outside a transaction."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET maintenance_work_mem = '1GB'"))
        for statement in statements:
            connection.execute(text(statement))


def prepare_database(url: str, operator_key: str) -> None:
    """Apply the migrations and register the operator key, as `chatledger run` does."""
    import migrations
    from commerce import runtime
    from commerce.access.services import ensure_operator_key
    from commerce.db import transaction

    migrations.upgrade(url)
    with transaction(runtime.configure_database(url)) as session:
        ensure_operator_key(session, operator_key)
    runtime.engine().dispose()


# --------------------------------------------------------------------------- gunicorn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Gunicorn:
    """The application under gunicorn, in a session of its own (Ctrl-C reaches only us).

    `app` is the WSGI application gunicorn serves, as `module:variable` from the repository
    root: the product's `wsgi:app` unless a benchmark wraps it.
    """

    def __init__(self, env: dict[str, str], log_path: Path, app: str = "wsgi:app") -> None:
        self.port = free_port()
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"{HOST}:{self.port}",
                "--workers",
                str(GUNICORN_WORKERS),
                "--threads",
                str(GUNICORN_THREADS),
                app,
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, size: int = 4000) -> str:
        return self._log_path.read_text(errors="replace")[-size:]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if call(self.port, "GET", "/readyz")[0] == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: workers finish their requests
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def call(
    port: int, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    """One request on a fresh connection; the status and the decoded JSON answer."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def server_env(database_url: str, redis_url: str, operator_key: str, tmp: Path) -> dict[str, str]:
    """The environment of the gunicorn process: ours replaces any CHATLEDGER_* inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHATLEDGER_")
        and k not in ("GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR")
    }
    metrics = tmp / "prometheus"
    metrics.mkdir()
    env.update(
        {
            "CHATLEDGER_DATABASE_URL": database_url,
            "CHATLEDGER_REDIS_URL": redis_url,
            "CHATLEDGER_OPERATOR_KEY": operator_key,
            "CHATLEDGER_DATA_DIR": str(tmp / "data"),
            "CHATLEDGER_RATE_LIMIT_PER_MINUTE": "100000000",  # the limiter never refuses
            "CHATLEDGER_LOG_LEVEL": "WARNING",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }
    )
    return env


# --------------------------------------------------------------------------- report


@dataclass
class Machine:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join(f"- {name}: {value}" for name, value in self.lines)


def machine_info(database_url: str, redis_url: str) -> Machine:
    import gunicorn
    import redis
    from sqlalchemy import create_engine, text

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            pg_version = connection.execute(text("SHOW server_version")).scalar_one()
            pg_settings = ", ".join(
                f"{name}={connection.execute(text(f'SHOW {name}')).scalar_one()}"
                for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections")
            )
    finally:
        engine.dispose()
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()

    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return Machine(
        [
            (
                "CPUs (nproc)",
                f"{len(os.sched_getaffinity(0))}, shared by the load generator, "
                "gunicorn, PostgreSQL and Redis",
            ),
            ("CPU model", cpu_model),
            ("memory", memory),
            ("kernel", f"{platform.system()} {platform.release()}"),
            ("Python", platform.python_version()),
            ("gunicorn", gunicorn.__version__),
            ("PostgreSQL", f"{pg_version} ({pg_settings})"),
            ("Redis", redis_version),
            ("load average before the run", load),
            ("commit", f"{revision}{' with uncommitted changes' if dirty else ''}"),
        ]
    )


def server_cpu(result: ScenarioResult) -> float:
    """CPU seconds per request of gunicorn, PostgreSQL and Redis together.

    Unlike throughput, this hardly moves when other processes take CPU from the run.
    """
    spent = sum(result.cpu[group] or 0.0 for group in ("gunicorn", "postgres", "redis"))
    return spent / max(1, result.requests)


# --------------------------------------------------------------------------- API fixtures


def created(status: int, answer: Any, what: str) -> Any:
    """The answer of a creating call, or an error naming what could not be created."""
    if status != 201:
        raise RuntimeError(f"creating the {what} answered {status}: {answer}")
    return answer


def create_conversation(port: int, operator_key: str) -> tuple[str, str]:
    """A merchant and a conversation made through the API: (merchant key, conversation id)."""
    merchant = created(
        *call(
            port,
            "POST",
            "/v1/merchants",
            {
                "name": "Benchmark Coffee",
                "mids": ["".join(secrets.choice("0123456789") for _ in range(15))],
                "chat_pages": [{"channel": "messenger", "page_id": secrets.token_hex(6)}],
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
            {
                "channel": "messenger",
                "thread_id": "t_" + secrets.token_hex(6),
                "customer_user_id": secrets.token_hex(8),
            },
            key,
        ),
        "conversation",
    )
    return key, conversation["id"]


def create_offer_in(port: int, key: str, conversation_id: str) -> str:
    """An offer posted in the conversation; its id."""
    offer = created(
        *call(
            port,
            "POST",
            f"/v1/conversations/{conversation_id}/offers",
            {"title": "Cold brew, 1 L", "amount": 1250, "currency": "USD"},
            key,
        ),
        "offer",
    )
    return offer["id"]
