"""Faults a test can inflict on servers and processes of its own.

`CeleryProcess` runs a real `celery worker` or `celery beat` in a session (process group) of
its own, so a test can SIGKILL it with everything it started, by its id, without touching
any other process on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.config import Settings
from tests.conftest import REPO, settings_env

#: The worker's options are the `worker` fixture's (tests/conftest.py).
WORKER_ARGS = (
    "worker",
    "--pool",
    "threads",
    "--concurrency",
    "2",
    "--loglevel",
    "INFO",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
)


class CeleryProcess:
    """`celery -A app.worker:celery worker|beat` on `settings`, logging to `log_path`."""

    def __init__(self, kind: str, settings: Settings, log_path: Path) -> None:
        if kind not in ("worker", "beat"):
            raise ValueError(kind)
        self.kind = kind
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    def _command(self) -> list[str]:
        base = [sys.executable, "-m", "celery", "-A", "app.worker:celery"]
        if self.kind == "worker":
            return [*base, *WORKER_ARGS]
        data_dir = self.settings.data_dir
        # The schedule database and no pid file, both out of the repository.
        return [
            *base,
            "beat",
            "--schedule",
            str(data_dir / "celerybeat-schedule"),
            "--loglevel",
            "INFO",
        ]

    def start(self, *, timeout: float = 60.0) -> CeleryProcess:
        env = settings_env(self.settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._log_start = self._log.tell()
        self.process = subprocess.Popen(
            self._command(),
            cwd=REPO if self.kind == "worker" else self.settings.data_dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A process group of its own: kill() ends the process and anything it started.
            start_new_session=True,
        )
        marker = b"ready." if self.kind == "worker" else b"beat: Starting..."
        try:
            self.wait_for_log(marker, timeout=timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def output(self) -> str:
        """What this process (this start of it) has written so far."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, marker: bytes, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while marker.decode() not in self.output():
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"celery {self.kind} exited:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery {self.kind} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no warm shutdown: the process and its group vanish mid-work."""
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._close()

    def stop(self, *, timeout: float = 30.0) -> None:
        """A warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def sessions_waiting_for_a_lock(engine: Engine, *, exclude_pid: int | None = None) -> list[str]:
    """The queries of other sessions on this database blocked on a heavyweight lock."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT query FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND pid <> pg_backend_pid() AND pid <> coalesce(:exclude, 0)"
                ),
                {"exclude": exclude_pid},
            ).scalars()
        )


__all__ = ["CeleryProcess", "sessions_waiting_for_a_lock"]
