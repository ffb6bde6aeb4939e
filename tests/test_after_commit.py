"""Tasks are sent only after the transaction that created their data commits."""

from __future__ import annotations

import pytest

from commerce.db import after_commit, transaction


def test_callbacks_run_after_commit_only(committed):
    ran: list[str] = []
    with transaction(committed) as session:
        after_commit(session, lambda: ran.append("sent"))
        assert ran == []
    assert ran == ["sent"]


def test_callbacks_are_dropped_on_rollback(committed):
    ran: list[str] = []

    def failing_request() -> None:
        with transaction(committed) as session:
            after_commit(session, lambda: ran.append("sent"))
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    assert ran == []
    # The next transaction on a new session starts clean.
    with transaction(committed):
        pass
    assert ran == []


def test_a_savepoint_rollback_keeps_the_outer_callbacks(committed):
    ran: list[str] = []
    with transaction(committed) as session:
        after_commit(session, lambda: ran.append("outer"))
        nested = session.begin_nested()
        nested.rollback()
    assert ran == ["outer"]


def test_a_savepoint_rollback_drops_the_callbacks_registered_inside_it(committed):
    ran: list[str] = []

    def failing_savepoint(session) -> None:
        with session.begin_nested():
            after_commit(session, lambda: ran.append("rolled back"))
            with session.begin_nested():
                after_commit(session, lambda: ran.append("released, then rolled back"))
            raise RuntimeError("the savepoint fails")

    with transaction(committed) as session:
        after_commit(session, lambda: ran.append("before"))
        with pytest.raises(RuntimeError):
            failing_savepoint(session)
        with session.begin_nested():
            after_commit(session, lambda: ran.append("released"))
        after_commit(session, lambda: ran.append("after"))
    assert ran == ["before", "released", "after"]
