"""How a batch over a period is dealt into chunks of whole merchants (`batch_chunks`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from commerce.ids import new_id
from commerce.merchants.models import Merchant
from commerce.reconciliation import engine
from commerce.reconciliation.engine import batch_chunks


def test_every_merchant_is_in_exactly_one_chunk_and_the_chunks_come_out_even():
    sizes = [(f"mer_{i:03d}", (i * 7919) % 5000) for i in range(200)]
    chunks = batch_chunks(sizes, sessions=2, chunk_sales=100_000)
    members = [m for chunk in chunks for m in chunk]
    assert sorted(members) == sorted(m for m, _ in sizes)
    assert len(members) == len(set(members))
    total = sum(n for _, n in sizes)
    assert len(chunks) == -(-total // 100_000)  # 497,5xx sales: five chunks
    weight = dict(sizes)
    loads = [sum(weight[m] for m in chunk) for chunk in chunks]
    assert loads == sorted(loads, reverse=True)  # the largest runs first
    assert max(loads) - min(loads) <= max(weight.values())  # no chunk a merchant too heavy


def test_there_is_a_chunk_for_each_session_even_for_a_small_period():
    chunks = batch_chunks([("mer_a", 10), ("mer_b", 3), ("mer_c", 0)], sessions=2)
    assert chunks == [("mer_a",), ("mer_b", "mer_c")]


def test_a_merchant_larger_than_a_chunk_is_a_chunk_of_its_own():
    chunks = batch_chunks(
        [("mer_big", 900), ("mer_x", 100), ("mer_y", 100)], sessions=1, chunk_sales=400
    )
    assert chunks[0] == ("mer_big",)
    assert sorted(m for chunk in chunks[1:] for m in chunk) == ["mer_x", "mer_y"]


def test_no_chunk_holds_more_merchants_than_its_share_of_locks():
    quiet = [(f"mer_q{i:04d}", 0) for i in range(1800)]  # merchants without a sale
    busy = [(f"mer_b{i:02d}", 1000 + i) for i in range(40)]
    chunks = batch_chunks(quiet + busy, sessions=2, chunk_merchants=500)
    assert len(chunks) == 4  # 1,840 merchants, 500 at most in each
    assert all(len(chunk) <= 500 for chunk in chunks)
    assert sorted(m for chunk in chunks for m in chunk) == sorted(m for m, _ in quiet + busy)
    busy_per_chunk = [sum(m.startswith("mer_b") for m in chunk) for chunk in chunks]
    assert busy_per_chunk == [10, 10, 10, 10]  # the sales spread over every chunk


def test_no_merchants_no_chunks_and_never_more_chunks_than_merchants():
    assert batch_chunks([], sessions=4) == []
    assert batch_chunks([("mer_a", 10**9)], sessions=4, chunk_sales=10) == [("mer_a",)]


class _Fault(Exception):
    pass


def test_a_failed_chunk_is_raised_and_the_chunks_not_begun_are_not_run(committed, monkeypatch):
    ids = sorted(new_id("merchant") for _ in range(3))
    with committed() as setup:
        setup.add_all(Merchant(id=m, name=m, timezone="UTC") for m in ids)
        setup.commit()
    ran: list[tuple[str, ...]] = []
    reconcile = engine.reconcile

    def failing_second(session, scope):
        ran.append(scope.merchant_ids)
        if len(ran) == 2:
            raise _Fault("the second chunk fails")
        return reconcile(session, scope)

    monkeypatch.setattr(engine, "batch_chunks", lambda sizes, sessions: [(m,) for m in ids])
    monkeypatch.setattr(engine, "reconcile", failing_second)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(_Fault):
        engine.reconcile_period(committed, start, start + timedelta(days=1), concurrency=1)
    assert ran == [(ids[0],), (ids[1],)]  # the third never began
