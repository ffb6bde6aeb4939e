"""The test foundation every suite uses: real PostgreSQL, real Redis, a real Celery worker.

- The servers are the ones named by CHATLEDGER_DATABASE_URL / CHATLEDGER_REDIS_URL when
  both are set (CI points them at the machine's own), and embedded ones started for the run
  otherwise. Either way the run gets a database of its own, created and migrated once with
  Alembic (never `create_all`), and dropped at the end.
- Each test runs inside a transaction that is rolled back; the application's commits
  release SAVEPOINTs in it (`db` fixture). Tests that need data a worker can see use the
  `committed` fixture instead, which commits for real and truncates afterwards.
- Stripe is a local server (tests/support/stripe_server.py) reached by the real `stripe`
  SDK through CHATLEDGER_STRIPE_API_BASE.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from psycopg.errors import DeadlockDetected
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

import migrations as migrate
from app.config import Settings
from commerce import runtime
from commerce.access.services import ensure_operator_key
from commerce.db import make_session_factory
from tests.support.chat_server import ChatServer, page_tokens_setting
from tests.support.stripe_server import StripeServer

REPO = Path(__file__).resolve().parents[1]
OPERATOR_KEY = "ck_op_tests_" + "o" * 32
STRIPE_KEY = "sk_test_chatledgertests"
#: Two active Stripe webhook secrets, as during a rotation.
STRIPE_WEBHOOK_SECRETS = ("whsec_current_chatledger_tests", "whsec_previous_chatledger_tests")
CHAT_APP_SECRET = "chat-app-secret-for-tests"
CHAT_VERIFY_TOKEN = "chat-verify-token-for-tests"
CARD_KEYS = (
    "v2:"
    + "Y2hhdGxlZGdlci10ZXN0cy1jYXJkLWtleS12ZXJzaW9uLTI="
    + ",v1:"
    + ("Y2hhdGxlZGdlci10ZXN0cy1jYXJkLWtleS12ZXJzaW9uLTE=")
)
#: The Redis database the suite uses on a shared server, flushed at the start of the run
#: (CHATLEDGER_TEST_REDIS_DB lets two checkouts on one machine test side by side).
TEST_REDIS_DB = int(os.environ.get("CHATLEDGER_TEST_REDIS_DB", "15"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that need the Celery worker run last: once started, the worker consumes every
    # task the later tests queue, and would race the committed tests that truncate tables.
    items.sort(key=lambda item: item.get_closest_marker("worker") is not None)


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return url.split("?")[0] + f"?db={db}"
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base_db = os.environ.get("CHATLEDGER_DATABASE_URL")
    base_redis = os.environ.get("CHATLEDGER_REDIS_URL")
    embedded = None
    if not (base_db and base_redis):
        from app.embedded import EmbeddedServers

        embedded = EmbeddedServers(tmp_path_factory.mktemp("embedded")).start()
        base_db, base_redis = embedded.database_url, embedded.redis_url

    # A database of the run's own, so parallel runs and leftovers never meet.
    name = f"chatledger_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base_db, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    redis_url = _with_redis_db(base_redis, TEST_REDIS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    try:
        yield Servers(_with_database(base_db, name), redis_url)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeServer]:
    server = StripeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chat_server() -> Iterator[ChatServer]:
    """The chat platform's send API, standing in locally (tests/support/chat_server.py)."""
    server = ChatServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings(
    servers: Servers, stripe_server: StripeServer, chat_server: ChatServer, tmp_path_factory
) -> Settings:
    return Settings.from_env(
        {
            "CHATLEDGER_DATABASE_URL": servers.database_url,
            "CHATLEDGER_REDIS_URL": servers.redis_url,
            "CHATLEDGER_DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "CHATLEDGER_OPERATOR_KEY": OPERATOR_KEY,
            "CHATLEDGER_STRIPE_API_KEY": STRIPE_KEY,
            "CHATLEDGER_STRIPE_API_BASE": stripe_server.url,
            "CHATLEDGER_RATE_LIMIT_PER_MINUTE": "100000",
            "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": ",".join(STRIPE_WEBHOOK_SECRETS),
            "CHATLEDGER_CHAT_APP_SECRET": CHAT_APP_SECRET,
            "CHATLEDGER_CHAT_VERIFY_TOKEN": CHAT_VERIFY_TOKEN,
            "CHATLEDGER_CARD_KEYS": CARD_KEYS,
            "CHATLEDGER_CHAT_API_BASE": chat_server.url,
            "CHATLEDGER_CHAT_PAGE_TOKENS": page_tokens_setting(),
        }
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process (worker, gunicorn) these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
    env.update(
        {
            "CHATLEDGER_DATABASE_URL": settings.database_url or "",
            "CHATLEDGER_REDIS_URL": settings.redis_url or "",
            "CHATLEDGER_DATA_DIR": str(settings.data_dir),
            "CHATLEDGER_OPERATOR_KEY": settings.operator_key or "",
            "CHATLEDGER_STRIPE_API_KEY": settings.stripe_api_key or "",
            "CHATLEDGER_STRIPE_API_BASE": settings.stripe_api_base or "",
            "CHATLEDGER_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
            "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": ",".join(STRIPE_WEBHOOK_SECRETS),
            "CHATLEDGER_CHAT_APP_SECRET": CHAT_APP_SECRET,
            "CHATLEDGER_CHAT_VERIFY_TOKEN": CHAT_VERIFY_TOKEN,
            "CHATLEDGER_CARD_KEYS": CARD_KEYS,
            "CHATLEDGER_CHAT_API_BASE": settings.chat_api_base or "",
            "CHATLEDGER_CHAT_PAGE_TOKENS": page_tokens_setting(dict(settings.chat_page_tokens)),
        }
    )
    return env


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[Flask]:
    """The application, on a database migrated once for the run with Alembic."""
    assert settings.database_url is not None
    migrate.upgrade(settings.database_url)
    # create_app configures the process's engine (commerce.runtime) from the settings.
    application = create_test_app(settings)
    with runtime.sessions()() as session:
        ensure_operator_key(session, OPERATOR_KEY)
        session.commit()
    yield application
    runtime.engine().dispose()


@pytest.fixture(scope="session")
def engine(app: Flask) -> Engine:
    return runtime.engine()


def create_test_app(settings: Settings) -> Flask:
    from app import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def db(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test.

    The application's own sessions join the same connection and turn their commits
    into SAVEPOINT releases, so a request's commit boundary is still exercised.
    """
    connection: Connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    monkeypatch.setattr(runtime, "_factory", factory)

    @contextmanager
    def nested_connection() -> Iterator[Connection]:
        with connection.begin_nested():
            yield connection

    monkeypatch.setattr(runtime, "connection", nested_connection)
    session = factory()
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def committed(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Real commits, visible to the worker; every table is emptied afterwards."""
    factory = make_session_factory(engine)
    yield factory
    tables = ", ".join(f'"{t.name}"' for t in migrate.metadata().sorted_tables)
    for attempt in range(5):
        try:
            with engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {tables}"))
            break
        except OperationalError as exc:
            # A worker task still finishing (a refund recording its webhook events) can hold
            # one table and want another that TRUNCATE already locked; PostgreSQL then ends
            # one of the two. If it ended the TRUNCATE, the task has finished by now: again.
            if not isinstance(exc.orig, DeadlockDetected) or attempt == 4:
                raise
    with factory() as session:
        ensure_operator_key(session, OPERATOR_KEY)
        session.commit()


@pytest.fixture
def client(app: Flask, db: Session) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def stripe(stripe_server: StripeServer) -> StripeServer:
    stripe_server.reset()
    return stripe_server


@pytest.fixture(scope="session")
def worker(settings: Settings, engine: Engine) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process on the test database and Redis."""
    log = open(settings.data_dir / "worker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "app.worker:celery",
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
        ],
        cwd=REPO,
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"ready." not in (settings.data_dir / "worker.log").read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            output = (settings.data_dir / "worker.log").read_text(errors="replace")
            process.kill()
            raise RuntimeError(f"the Celery worker did not start:\n{output[-3000:]}")
        time.sleep(0.2)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_for(predicate: Any, *, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; the truthy value is returned. Fails on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


__all__ = ["OPERATOR_KEY", "Servers", "create_test_app", "replace", "settings_env", "wait_for"]
