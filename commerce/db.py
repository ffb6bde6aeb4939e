"""Declarative base, engine and session helpers, and after-commit hooks.

Services receive a `Session` and never commit: the request or the task that owns
the transaction does. Work that must happen only once the data is durable (sending
a Celery task, calling out) is registered with `after_commit` and runs after the
COMMIT succeeds; a rollback drops it.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

#: Constraint names are derived, so Alembic migrations name them the same on every machine.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        int: BigInteger,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_url(url: str) -> str:
    """`postgresql://` URLs are driven by psycopg 3, the one driver chatledger uses."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for PostgreSQL with a pool, pre-ping and statement and lock timeouts."""
    url = normalize_url(url)
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 10,
        # A statement that runs this long is a bug or a lock pile-up; fail it rather than queue.
        "connect_args": {"options": "-c statement_timeout=30000 -c lock_timeout=10000"},
    }
    options.update(kwargs)
    return create_engine(url, **options)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: responses are serialized after the commit without a reload.
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def advisory_lock_key(*parts: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks, named by its parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


_AFTER_COMMIT = "chatledger.after_commit"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's current transaction has committed.

    Used to send Celery tasks: a task that reads a row must never run before the
    row is visible, and must never run at all if the transaction rolled back (a callback
    registered inside a SAVEPOINT that rolls back is dropped with it).
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    # SQLAlchemy reports a SAVEPOINT's release as a commit too; the work is durable only
    # when the outermost transaction commits, so the callbacks wait for that one.
    if session.in_nested_transaction():
        return
    callbacks = session.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        callback()


_SAVEPOINT_MARKS = "chatledger.after_commit.savepoints"


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: Any) -> None:
    # A SAVEPOINT remembers how many callbacks were waiting when it began, so that rolling
    # it back drops those registered inside it (their rows are gone) and keeps the others.
    if transaction.nested:
        marks = session.info.setdefault(_SAVEPOINT_MARKS, weakref.WeakKeyDictionary())
        marks[transaction] = len(session.info.get(_AFTER_COMMIT, ()))


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)
        session.info.pop(_SAVEPOINT_MARKS, None)
    elif previous_transaction.nested:
        mark = session.info.get(_SAVEPOINT_MARKS, {}).pop(previous_transaction, None)
        if mark is not None:
            del session.info.get(_AFTER_COMMIT, [])[mark:]


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "BigInteger",
    "advisory_lock_key",
    "after_commit",
    "make_engine",
    "make_session_factory",
    "transaction",
    "utcnow",
]
