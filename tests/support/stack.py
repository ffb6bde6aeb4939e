"""A chatledger deployment a test owns end to end, so that it can restart, stop and kill it.

`Cluster` is the embedded PostgreSQL and Redis of `app.embedded` in a data dir of the test's
own (nothing on the machine's servers is touched); `Service` is what runs on one of its
databases: gunicorn instances (bench/common.py's `Gunicorn`), Celery workers and `celery
beat` (tests/support/faults.py's `CeleryProcess`). Everything is driven through the
product's public surface: the `chatledger` CLI, HTTP, and the worker processes.

Each process connects with its own PostgreSQL `application_name` (libpq reads PGAPPNAME), so
a test can tell from pg_stat_activity which worker a session belongs to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.embedded import start_postgres, start_redis, stop_postgres, stop_redis
from bench.common import Gunicorn
from tests.conftest import (
    CARD_KEYS,
    CHAT_APP_SECRET,
    CHAT_VERIFY_TOKEN,
    OPERATOR_KEY,
    REPO,
    STRIPE_KEY,
    STRIPE_WEBHOOK_SECRETS,
    settings_env,
)
from tests.support.faults import CeleryProcess


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def with_redis_db(url: str, db: int) -> str:
    """`unix:///.../redis.sock?db=0` with another database number."""
    return url.split("?")[0] + f"?db={db}"


class Cluster:
    """The embedded PostgreSQL and Redis in `data_dir`, with the faults a test inflicts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.postgres_url = ""
        self.redis_url = ""

    def start(self) -> Cluster:
        self.postgres_url = start_postgres(self.data_dir, database="postgres")
        self.redis_url = start_redis(self.data_dir)
        return self

    def stop(self) -> None:
        stop_redis(self.data_dir)
        stop_postgres(self.data_dir)

    def restart_postgres(self) -> None:
        """A fast shutdown (every session is ended, open transactions roll back), then start."""
        stop_postgres(self.data_dir)
        start_postgres(self.data_dir, database="postgres")

    def stop_redis(self) -> None:
        stop_redis(self.data_dir)

    def start_redis(self) -> None:
        start_redis(self.data_dir)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """A new database, empty or a copy of `template` (which nobody may be connected to)."""
        admin = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as connection:
                clause = f' TEMPLATE "{template}"' if template else ""
                connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        finally:
            admin.dispose()
        return with_database(self.postgres_url, name)

    def engine(self, database_url: str) -> Engine:
        """An engine for the test's own reads: no pool, so no connection outlives its use
        (a database can then be copied, and a restart leaves no broken connection behind)."""
        return create_engine(database_url, poolclass=NullPool)


def settings_for(
    *,
    database_url: str,
    redis_url: str,
    data_dir: Path,
    stripe_url: str,
    chat_url: str,
) -> Settings:
    """The suite's secrets and keys (tests/conftest.py) on these servers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings.from_env(
        {
            "CHATLEDGER_DATABASE_URL": database_url,
            "CHATLEDGER_REDIS_URL": redis_url,
            "CHATLEDGER_DATA_DIR": str(data_dir),
            "CHATLEDGER_OPERATOR_KEY": OPERATOR_KEY,
            "CHATLEDGER_STRIPE_API_KEY": STRIPE_KEY,
            "CHATLEDGER_STRIPE_API_BASE": stripe_url,
            "CHATLEDGER_RATE_LIMIT_PER_MINUTE": "1000000",
            "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": ",".join(STRIPE_WEBHOOK_SECRETS),
            "CHATLEDGER_CHAT_APP_SECRET": CHAT_APP_SECRET,
            "CHATLEDGER_CHAT_VERIFY_TOKEN": CHAT_VERIFY_TOKEN,
            "CHATLEDGER_CARD_KEYS": CARD_KEYS,
            "CHATLEDGER_CHAT_API_BASE": chat_url,
        }
    )


def chatledger(settings: Settings, *args: str) -> str:
    """Run the `chatledger` command on these settings; its standard output."""
    env = settings_env(settings)
    # This checkout's code, as the workers run it (tests/support/faults.py), not whichever
    # checkout the venv's console script was installed from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("chatledger")), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"chatledger {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def prepare_database(settings: Settings) -> str:
    """Migrate with `chatledger db upgrade` and create an operator key; the key's secret."""
    chatledger(settings, "db", "upgrade")
    # `chatledger keys create-operator` prints "<key id> <secret>".
    return chatledger(settings, "keys", "create-operator").split()[-1]


@contextlib.contextmanager
def _application_name(name: str) -> Iterator[None]:
    """PGAPPNAME for the child started inside (settings_env copies this process's env)."""
    previous = os.environ.get("PGAPPNAME")
    os.environ["PGAPPNAME"] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PGAPPNAME", None)
        else:
            os.environ["PGAPPNAME"] = previous


@dataclass
class Service:
    """gunicorn instances, Celery workers and (optionally) beat on one database and Redis db.

    Process `web-N` is the N-th gunicorn, `worker-N` the N-th worker (their PostgreSQL
    application names too); logs are in `root`.
    """

    name: str
    root: Path
    settings: Settings
    web_count: int = 1
    worker_count: int = 1
    beat: bool = True

    def __post_init__(self) -> None:
        self.webs: list[Gunicorn] = []
        self.workers: list[CeleryProcess] = []
        self.beat_process: CeleryProcess | None = None
        self.kills = 0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{web.port}" for web in self.webs]

    def start(self) -> Service:
        try:
            for n in range(self.web_count):
                env = {**settings_env(self.settings), "PGAPPNAME": f"web-{n}"}
                env["CHATLEDGER_LOG_LEVEL"] = "WARNING"
                self.webs.append(Gunicorn(env, self.root / f"web-{n}.log"))
            for n in range(self.worker_count):
                self.workers.append(self._worker(n))
            if self.beat:
                with _application_name("beat"):
                    self.beat_process = CeleryProcess(
                        "beat", self.settings, self.root / "beat.log"
                    ).start()
            for web in self.webs:
                web.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _worker(self, n: int) -> CeleryProcess:
        with _application_name(f"worker-{n}"):
            return CeleryProcess("worker", self.settings, self.root / f"worker-{n}.log").start()

    def kill_worker(self, n: int) -> None:
        """SIGKILL worker n with everything it started (no warm shutdown, no ack)."""
        self.workers[n].kill()
        self.kills += 1

    def restart_worker(self, n: int) -> None:
        self.workers[n] = self._worker(n)

    def revive_exited_workers(self) -> list[tuple[int, int | None]]:
        """Start again every worker that exited on its own, as the process supervisor of a
        deployment does (systemd's `Restart=always`, a container's restart policy): the
        Redis transport can end a worker when the broker goes away with a task unacked
        (kombu's restore of unacked messages on a closed connection). Returns the number
        and exit status of each one started again."""
        revived = []
        for n, worker in enumerate(self.workers):
            status = worker.process.poll() if worker.process is not None else None
            if status is not None:
                assert worker.process is not None
                # What it started goes with it, and its log is closed before the next opens.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
                worker.stop()
                self.workers[n] = self._worker(n)
                revived.append((n, status))
        return revived

    def logs(self) -> str:
        return "\n".join(
            f"----- {path.name} (last 3000 characters)\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        """Workers and beat first (a warm shutdown), then gunicorn; never leaves one behind."""
        for process in [*self.workers, self.beat_process]:
            if process is not None:
                with contextlib.suppress(Exception):
                    process.stop(timeout=20)
        for web in self.webs:
            try:
                web.stop()
            except Exception:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(web.process.pid, signal.SIGKILL)
                web.process.wait(30)
        self.webs, self.workers, self.beat_process = [], [], None


__all__ = [
    "Cluster",
    "Service",
    "chatledger",
    "prepare_database",
    "settings_for",
    "with_database",
    "with_redis_db",
]
