"""The process's database sessions, set up once at start by the web app or the worker.

Tasks and background code reach the database through `sessions()`; nothing in the
domain reads configuration from the environment itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from commerce.db import make_engine, make_session_factory, normalize_url

_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def configure_database(url: str, **engine_options: object) -> sessionmaker[Session]:
    """Set up the process's engine; the same URL again keeps the engine already there."""
    global _engine, _factory
    same_url = _engine is not None and _engine.url == make_url(normalize_url(url))
    if same_url and _factory is not None and not engine_options:
        return _factory
    if _engine is not None:
        _engine.dispose()
    _engine = make_engine(url, **engine_options)
    _factory = make_session_factory(_engine)
    return _factory


def engine() -> Engine:
    if _engine is None:
        raise RuntimeError("the database is not configured: call configure_database() at start")
    return _engine


@contextmanager
def connection() -> Iterator[Connection]:
    """A Core connection in a transaction that commits when the block ends (rolls back on an
    exception): for hot paths that need no ORM session."""
    with engine().begin() as conn:
        yield conn


def sessions() -> sessionmaker[Session]:
    if _factory is None:
        raise RuntimeError("the database is not configured: call configure_database() at start")
    return _factory
