"""Per-key rate limits in Redis (SPEC section 5): 429 problem with `Retry-After`.

A second application is built with a limit of 5 requests a minute. The limiter counts
in fixed one-minute windows (`int(time.time() // 60)`), so a test that happens to
straddle a minute boundary would see its count reset: that is detected, and the test
body is run once more rather than flake.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from commerce import runtime
from commerce.offers.models import Offer
from tests.conftest import create_test_app
from tests.helpers import Shop, open_shop

LIMIT = 5
PREFIX = "chatledger:ratelimit:"


class WindowChanged(Exception):
    """A minute boundary fell between the first and the last counted request."""


def window() -> int:
    return int(time.time() // 60)


def clear_counters(client: redis.Redis) -> None:
    names = list(client.scan_iter(match=PREFIX + "*", count=1000))
    if names:
        client.delete(*names)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url)
    clear_counters(client)
    try:
        yield client
    finally:
        clear_counters(client)
        client.close()


@pytest.fixture
def limited_app(settings: Settings, db: Session) -> Iterator[Flask]:
    """The app with a limit of 5 a minute, on the test's rolled-back connection.

    create_app configures the process's database (commerce.runtime) afresh; the
    previous engine and the `db` fixture's session factory are put back at once, so
    this app's requests join the test's transaction like the `client` fixture's do.
    """
    engine, factory = runtime._engine, runtime._factory
    application = create_test_app(dataclasses.replace(settings, rate_limit_per_minute=LIMIT))
    new_engine = runtime._engine
    runtime._engine, runtime._factory = engine, factory
    try:
        yield application
    finally:
        if new_engine is not None and new_engine is not engine:
            new_engine.dispose()


@pytest.fixture
def shops(client: FlaskClient) -> tuple[Shop, Shop]:
    """Two merchants, set up through the unlimited app."""
    return open_shop(client), open_shop(client)


def assert_rate_limited(response: Any, observed_at: float) -> int:
    text = response.get_data(as_text=True)
    assert response.status_code == 429, (response.status_code, text[:300])
    assert response.mimetype == "application/problem+json", response.mimetype
    body = json.loads(text)
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == 429
    assert body["type"].endswith("rate-limited"), body
    raw = response.headers.get("Retry-After")
    assert raw is not None, dict(response.headers)
    assert raw.isdigit(), raw  # delay-seconds (RFC 9110): an integer, not a date
    retry_after = int(raw)
    assert 1 <= retry_after <= 60, retry_after
    # Waiting that long from when the answer came lands in the next window, not before it.
    next_window_starts = (int(observed_at // 60) + 1) * 60
    assert observed_at + retry_after >= next_window_starts, (observed_at, retry_after)
    return retry_after


def run_once(
    limited: FlaskClient, redis_client: redis.Redis, db: Session, a: Shop, b: Shop
) -> None:
    clear_counters(redis_client)
    start = window()
    offers_before = db.scalar(select(func.count()).select_from(Offer))

    for n in range(1, LIMIT + 1):
        ok = limited.get("/v1/sales", headers=a.headers)
        assert ok.status_code == 200, (n, ok.status_code, ok.get_data(as_text=True)[:300])

    # The 6th request in the minute: refused before it does anything.
    sixth = limited.post(
        f"/v1/conversations/{a.conversation['id']}/offers",
        json={"title": "One too many", "amount": 100, "currency": "USD"},
        headers=a.headers,
    )
    observed = time.time()
    seventh = limited.get("/v1/sales", headers=a.headers)
    observed_seventh = time.time()
    # Another key is counted on its own: its full allowance (4 reads and a write) goes through.
    other = [limited.get("/v1/sales", headers=b.headers) for _ in range(LIMIT - 1)]
    other_post = limited.post(
        f"/v1/conversations/{b.conversation['id']}/offers",
        json={"title": "Still fine", "amount": 100, "currency": "USD"},
        headers=b.headers,
    )
    if window() != start:
        raise WindowChanged

    assert_rate_limited(sixth, observed)
    assert_rate_limited(seventh, observed_seventh)
    assert [r.status_code for r in other] == [200] * (LIMIT - 1)
    assert other_post.status_code == 201, other_post.get_data(as_text=True)
    # Only B's offer was created; A's refused one was not.
    assert db.scalar(select(func.count()).select_from(Offer)) == offers_before + 1


def test_the_sixth_request_in_a_minute_is_429_and_other_keys_are_not_limited(
    limited_app: Flask, redis_client: redis.Redis, db: Session, shops: tuple[Shop, Shop]
) -> None:
    a, b = shops
    limited = limited_app.test_client()
    try:
        run_once(limited, redis_client, db, a, b)
    except WindowChanged:
        # A minute boundary reset the window mid-test; the next minute is a full one.
        run_once(limited, redis_client, db, a, b)


def test_the_unlimited_app_is_not_limited_by_the_same_traffic(
    client: FlaskClient, redis_client: redis.Redis, shops: tuple[Shop, Shop]
) -> None:
    """Control: the suite's own app (a limit of 100000) lets the same burst through."""
    a, _ = shops
    clear_counters(redis_client)
    statuses = [client.get("/v1/sales", headers=a.headers).status_code for _ in range(LIMIT + 3)]
    assert statuses == [200] * (LIMIT + 3)
