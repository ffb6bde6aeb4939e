"""`chatledger run`: the web server, a Celery worker and Celery beat as one foreground service.

The three are separate child processes, each in its own session:

    gunicorn  --bind HOST:PORT --workers N --threads 4 wsgi:app
    celery -A app.worker:celery worker --concurrency 2
    celery -A app.worker:celery beat --schedule <data_dir>/celerybeat-schedule

This process supervises them: it waits until `/readyz` answers 200, then watches them. Ctrl-C,
SIGTERM or SIGHUP stop all three cleanly (SIGTERM, a grace period, then SIGKILL of whatever is
left in their process groups); a second Ctrl-C skips the grace period. If one of them dies on
its own, the others are stopped too and the exit status is non-zero, so a process manager or a
terminal user sees the failure instead of a half-running service.

Their output is not captured: it goes straight to our stdout/stderr (gunicorn's access log
and the Celery logs carry their own prefixes). No pipes means no pipe that fills up and
blocks a child when nobody reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

__all__ = ["run_service"]

#: How long the children get to finish after SIGTERM before they are killed. Longer than
#: gunicorn's default graceful timeout (30 s), so in-flight requests normally complete.
STOP_TIMEOUT = 35.0
#: How long the web server may take to answer /readyz 200 before start-up counts as failed.
READY_TIMEOUT = 120.0

_POLL_INTERVAL = 0.2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class _Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    #: Exit status once seen; the process stays unreaped (a zombie) until `_reap`.
    status: int | None = field(default=None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> bool:
        """Has it exited? Looks without reaping (WNOWAIT), see `_stop_all` for why."""
        if self.proc is None:
            return True
        if self.status is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped by someone else
            self.status = self.proc.returncode if self.proc.returncode is not None else -1
            return True
        if info is None:
            return False
        # waitid reports a signal death as CLD_KILLED/CLD_DUMPED with si_status = signal number.
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        self.status = -info.si_status if killed else info.si_status
        return True


class _Stop:
    """What the signal handlers record: how many stop signals arrived, and the first one."""

    def __init__(self) -> None:
        self.count = 0
        self.signal: int | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        # Only record: all the work happens in the main loop, never inside a signal handler.
        self.count += 1
        if self.signal is None:
            self.signal = signum


def run_service(
    *,
    host: str,
    port: int,
    env: dict[str, str],
    ready_timeout: float = READY_TIMEOUT,
    stop_timeout: float = STOP_TIMEOUT,
) -> int:
    """Run gunicorn, a Celery worker and Celery beat until a stop signal or a child's death.

    `env` is added to the children's environment (this process's own environment is the
    base). Returns 0 after a requested stop, non-zero if start-up failed or a child died.
    Must be called from the main thread (it installs signal handlers).
    """
    _check_main_thread()
    child_env = {**os.environ, **env}
    data_dir = Path(child_env.get("CHATLEDGER_DATA_DIR") or "./var").expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Absolute, so that every child agrees on it whatever its working directory.
    child_env["CHATLEDGER_DATA_DIR"] = str(data_dir)
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # log lines appear when they happen
    _add_project_root_to_path(child_env)

    children = _commands(host, port, data_dir, _web_workers(child_env))
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.handler) for sig in _STOP_SIGNALS}
    try:
        for child in children:
            child.proc = subprocess.Popen(
                child.argv,
                env=child_env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
                # Own session and process group: a Ctrl-C in the terminal reaches only this
                # process, which then stops the children in order instead of all of them
                # being interrupted at once (Celery would take a second SIGINT as "cold
                # shutdown"); and the whole group of a child (gunicorn's workers, Celery's
                # pool) can be killed with one killpg().
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
            _say(f"started {child.name} (pid {child.pid})")

        code = _wait_until_ready(children, stop, _ready_url(host, port), ready_timeout)
        if code is None:
            print(f"chatledger is ready on {_public_url(host, port)}", flush=True)
            code = _supervise(children, stop)
        return code
    finally:
        # Also reached on an exception (say, a Popen that failed half-way): never leave
        # children behind.
        _stop_all(children, stop, stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------


def _commands(host: str, port: int, data_dir: Path, workers: int) -> list[_Child]:
    python = sys.executable  # the venv's interpreter: `-m` runs the venv's gunicorn and celery
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    web = [python, "-m", "gunicorn", "--bind", bind, "--workers", str(workers)]
    web += ["--threads", "4", "--access-logfile", "-", "wsgi:app"]
    celery = [python, "-m", "celery", "-A", "app.worker:celery"]
    worker = [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2"]
    beat = [*celery, "beat", "--loglevel", "INFO"]
    beat += ["--schedule", str(data_dir / "celerybeat-schedule")]
    return [_Child("web", web), _Child("worker", worker), _Child("beat", beat)]


def _web_workers(env: dict[str, str]) -> int:
    """`CHATLEDGER_WEB_WORKERS`, else one per CPU, at least 2 and at most 8.

    Each worker runs 4 threads, and each holds its own database connection pool: 8 workers
    stay well inside PostgreSQL's default of 100 connections.
    """
    raw = env.get("CHATLEDGER_WEB_WORKERS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"CHATLEDGER_WEB_WORKERS must be a number, got {raw!r}") from None
        if value < 1:
            raise ValueError("CHATLEDGER_WEB_WORKERS must be at least 1")
        return value
    return max(2, min(8, os.cpu_count() or 1))


def _add_project_root_to_path(env: dict[str, str]) -> None:
    """Make `wsgi` importable whatever the working directory.

    gunicorn and `python -m celery` import from the working directory, which is the project
    root under `make run`; `chatledger run` started elsewhere should work as well.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "wsgi.py").is_file():
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(root) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies.

    Without it, a supervisor killed with SIGKILL (or by the OOM killer) leaves gunicorn
    holding the port and Celery consuming tasks, and the next `chatledger run` cannot bind.
    Caveats: the signal fires when the *thread* that forked the child exits, which is why
    run_service must stay in the thread that called it for the children's whole life (it
    does: it returns only after they are gone). And if we die between fork() and prctl(), no
    signal would ever come, so the child checks its parent right after and exits if orphaned.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:  # runs in the child between fork() and exec()
        libc.prctl(pr_set_pdeathsig, ctypes.c_ulong(signal.SIGTERM))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _ready_url(host: str, port: int) -> str:
    # A wildcard bind address cannot be dialled; probe through loopback instead.
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return _public_url(probe, port) + "/readyz"


def _public_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _probe(url: str) -> str:
    """'' when `url` answers 200, otherwise a short reason."""
    # An empty ProxyHandler: an http_proxy in the environment must not capture a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return "" if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason)


def _wait_until_ready(
    children: Sequence[_Child], stop: _Stop, url: str, timeout: float
) -> int | None:
    """None once `url` answers 200; an exit status if start-up is abandoned."""
    started = time.monotonic()
    next_note = started + 15.0
    reason = "no answer yet"
    while True:
        if stop.count:
            _say(f"{signal.Signals(stop.signal or signal.SIGINT).name} during start-up; stopping")
            return 0
        dead = _first_dead(children)
        if dead is not None:
            _say(f"{dead.name} exited during start-up ({_describe(dead.status)}); stopping")
            return _failure_code(dead.status)
        reason = _probe(url)
        if not reason:
            return None
        now = time.monotonic()
        if now - started > timeout:
            _say(f"{url} did not answer 200 within {timeout:.0f} s (last: {reason}); stopping")
            return 1
        if now >= next_note:
            _say(f"waiting for {url} ({reason})")
            next_note = now + 15.0
        time.sleep(0.5)


def _supervise(children: Sequence[_Child], stop: _Stop) -> int:
    while True:
        if stop.count:
            _say(f"{signal.Signals(stop.signal or signal.SIGINT).name} received; stopping")
            return 0
        dead = _first_dead(children)
        if dead is not None:
            _say(f"{dead.name} exited unexpectedly ({_describe(dead.status)}); stopping the rest")
            return _failure_code(dead.status)
        time.sleep(_POLL_INTERVAL)


def _first_dead(children: Sequence[_Child]) -> _Child | None:
    return next((child for child in children if child.exited()), None)


def _stop_all(children: Sequence[_Child], stop: _Stop, timeout: float) -> None:
    """SIGTERM every running child, wait up to `timeout`, SIGKILL what is left, reap.

    Process-lifecycle races handled here:

    * A child is never reaped (waited for) before its process group has been swept. Until it
      is reaped its PID stays allocated (a zombie), so its PID, which is also its process
      group id, cannot be recycled for an unrelated process that we would then killpg().
    * Leaders that exited may leave members behind (a gunicorn worker whose master crashed,
      a Celery pool process): the final killpg() takes them too.
    * A further Ctrl-C while waiting means "now": the grace period ends at once.
    """
    started = [child for child in children if child.proc is not None]
    if not started:
        return
    running = [child for child in started if not child.exited()]
    for child in running:
        # gunicorn: graceful stop (finish in-flight requests); Celery worker: warm shutdown
        # (finish running tasks, requeue prefetched ones); beat: save the schedule and exit.
        _signal_pid(child.pid, signal.SIGTERM)
    if running:
        _say("stopping " + ", ".join(child.name for child in running) + " ...")

    signals_before = stop.count
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline and stop.count == signals_before:
        time.sleep(0.1)
        running = [child for child in running if not child.exited()]
    for child in running:
        reason = "second signal" if stop.count != signals_before else f"{timeout:.0f} s passed"
        _say(f"{child.name} still running ({reason}); killing it")

    for child in started:
        _signal_group(child.pid, signal.SIGKILL)  # leader and any stragglers of its group
    for child in started:
        _reap(child)


def _reap(child: _Child) -> None:
    assert child.proc is not None
    try:
        child.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # cannot happen after SIGKILL, short of a kernel hang
        _say(f"{child.name} (pid {child.pid}) did not go away after SIGKILL")


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def _failure_code(status: int | None) -> int:
    """The status to return when a child died: its own if it failed, else 1 (dying is failing)."""
    if status is None or status == 0:
        return 1
    return 128 - status if status < 0 else status


def _say(message: str) -> None:
    print(f"chatledger: {message}", file=sys.stderr, flush=True)


# Signal handlers can only be installed from the main thread; fail early with a clear message
# rather than with signal.signal()'s ValueError half-way through start-up.
def _check_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_service must be called from the main thread")
