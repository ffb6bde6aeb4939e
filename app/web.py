"""Per-request plumbing: the database session, the authenticated key, Redis.

The request owns the transaction: routes call services with `db()`, and the
session commits once, after the view returned a success. A failed commit turns
into a 503 problem, never into a half-sent success.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, current_app, g
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.errors import problem
from commerce import runtime

log = logging.getLogger(__name__)


def db() -> Session:
    """The request's session, opened on first use."""
    if "db_session" not in g:
        g.db_session = runtime.sessions()()
    return g.db_session


def redis_client() -> redis.Redis:
    return current_app.extensions["chatledger.redis"]


def register(app: Flask) -> None:
    @app.after_request
    def commit_on_success(response: Response) -> Response:
        session: Session | None = g.pop("db_session", None)
        if session is None:
            return response
        try:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        except OperationalError:
            session.rollback()
            log.error("commit failed: database unavailable")
            return problem(
                503,
                "unavailable",
                "The service cannot reach its database; nothing was saved. Retry shortly.",
                headers={"Retry-After": "5"},
            )
        finally:
            session.close()
        return response

    @app.teardown_request
    def close_on_error(exc: BaseException | None) -> None:
        # Reached with a session still open only when the view raised past the handlers.
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.rollback()
            session.close()
