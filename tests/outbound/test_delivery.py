"""Deliveries to a merchant's receiver: Standard Webhooks signatures checked by the receiver
with the `standardwebhooks` package, the retry schedule, Retry-After, 410, redirects, timeouts
and the address guard at delivery; time moves by an injected clock, never by sleeping."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from email.utils import format_datetime

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce import locks, runtime
from commerce.db import utcnow
from commerce.outbound import services
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import (
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from commerce.sales.services import apply_refund_result, record_event
from commerce.sales.states import EventKind
from tests.helpers import open_shop
from tests.outbound.conftest import Clock, Hooked, delivery, emit
from tests.outbound.receiver import Answer, Receiver
from tests.support.stripe_server import StripeServer


def attempts(db: Session, delivery_id: str) -> list[WebhookAttempt]:
    db.expire_all()
    return list(
        db.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        )
    )


def pay(client: FlaskClient, stripe: StripeServer, hooked: Hooked) -> str:
    shop = hooked.shop
    checkout = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    assert checkout.status_code == 201, checkout.json
    sale = checkout.json["sale"]
    stripe.succeed(sale["payment_intent_id"])
    synced = client.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers)
    assert synced.json["state"] == "paid", synced.json
    return sale["id"]


def deliveries_of(db: Session, endpoint_id: str) -> list[WebhookDelivery]:
    db.expire_all()
    return list(
        db.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at)
        )
    )


def test_a_sales_changes_reach_the_receiver_signed(
    client: FlaskClient,
    db: Session,
    stripe: StripeServer,
    hooked: Hooked,
    receiver: Receiver,
    policy: AddressPolicy,
) -> None:
    sale_id = pay(client, stripe, hooked)
    # The same Stripe news again (a sync after the webhook) records no second event.
    client.post(f"/v1/sales/{sale_id}/sync", headers=hooked.shop.headers)
    with runtime.sessions()() as session:
        sale = locks.lock_sale(session, sale_id)
        assert sale is not None
        apply_refund_result(session, sale, None, provider_id="re_1", status="succeeded", amount=250)
        apply_refund_result(session, sale, None, provider_id="re_2", status="succeeded", amount=250)
        apply_refund_result(session, sale, None, provider_id="re_2", status="succeeded", amount=250)
        record_event(
            session,
            sale,
            kind=EventKind.DISPUTE_OPENED,
            source="stripe",
            source_ref="dp_1",
            amount=750,
            occurred_at=utcnow(),
        )
        session.commit()

    rows = deliveries_of(db, hooked.endpoint.id)
    types = [db.get_one(OutboundEvent, d.event_id).type for d in rows]
    assert types == ["sale.paid", "sale.refunded", "sale.refunded", "sale.disputed"]
    for row in rows:
        assert services.deliver(runtime.sessions(), row.id, policy=policy) == "delivered"

    assert len(receiver.received) == 4
    for row, got in zip(rows, receiver.received, strict=True):
        # Verified by the receiver with standardwebhooks.Webhook(secret).verify.
        assert got.verified_with == [hooked.secret]
        assert got.headers["webhook-id"] == row.event_id == got.payload["id"]
        assert got.headers["content-type"] == "application/json"
        assert got.payload["data"]["id"] == sale_id
    assert [g.payload["data"]["state"] for g in receiver.received] == [
        "paid",
        "partially_refunded",
        "partially_refunded",
        "disputed",
    ]
    assert receiver.received[2].payload["data"]["amount_refunded"] == 500
    log = attempts(db, rows[0].id)
    assert [(a.status_code, a.outcome, a.error) for a in log] == [(200, "delivered", None)]
    assert log[0].latency_ms >= 0


def test_a_tampered_delivery_fails_the_receivers_check(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    """Control for the check above: the receiver's verification is real."""
    row = emit(hooked)
    receiver.secrets = ["whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="]
    services.deliver(runtime.sessions(), row.id, policy=policy)
    assert receiver.received[0].verified_with == []


def test_webhook_id_is_stable_and_timestamp_and_signature_are_new_per_attempt(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy, monkeypatch
) -> None:
    row = emit(hooked)
    clock = Clock()
    receiver.answers = [Answer(503)]
    ticks = iter([1_900_000_000, 1_900_000_100])
    monkeypatch.setattr(services, "wallclock", lambda: next(ticks))
    assert services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock) == "pending"
    clock.now = delivery(db, row.id).next_attempt_at
    assert services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock) == "delivered"
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == row.event_id
    assert first.body == second.body
    assert (first.headers["webhook-timestamp"], second.headers["webhook-timestamp"]) == (
        "1900000000",
        "1900000100",
    )
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


def test_failures_are_retried_with_exponential_backoff_and_jitter_for_about_three_days(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    receiver.default = Answer(500, body=b"upstream down")
    row = emit(hooked)
    clock = Clock()
    start = clock.now
    waits = []
    for _ in range(60):
        # Not yet due: an early task does nothing.
        if waits:
            clock.now -= timedelta(seconds=1)
            before = len(receiver.received)
            assert services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock)
            assert len(receiver.received) == before
            clock.now += timedelta(seconds=1)
        status = services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock)
        current = delivery(db, row.id)
        if status != "pending":
            break
        waits.append((current.next_attempt_at - clock.now).total_seconds())
        clock.now = current.next_attempt_at
    assert status == "failed"
    assert current.next_attempt_at is None
    for n, wait in enumerate(waits, start=1):
        ceiling = min(10 * 2 ** (n - 1), 6 * 3600)
        assert ceiling / 2 <= wait <= ceiling, (n, wait)
    assert len(set(waits)) > len(waits) // 2, "no jitter"
    span = clock.now - start
    assert timedelta(days=2, hours=12) < span <= timedelta(days=3), span
    assert len(receiver.received) == len(waits) + 1 == current.attempts
    log = attempts(db, row.id)
    assert {a.outcome for a in log[:-1]} == {"retry"}
    assert log[-1].outcome == "failed"
    assert log[0].error == "HTTP 500: upstream down"


@pytest.mark.parametrize("kind", ["seconds", "http-date"])
def test_retry_after_is_honoured(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy, kind: str
) -> None:
    clock = Clock()
    value = "7200" if kind == "seconds" else format_datetime(clock.now + timedelta(hours=2), True)
    receiver.answers = [Answer(429, {"Retry-After": value})]
    row = emit(hooked)
    services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock, rng=lambda: 0.0)
    assert delivery(db, row.id).next_attempt_at == clock.now + timedelta(hours=2)
    # Shorter than our own backoff: the backoff wins.
    receiver.answers = [Answer(503, {"Retry-After": "1"})]
    clock.now += timedelta(hours=2)
    services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock, rng=lambda: 1.0)
    assert delivery(db, row.id).next_attempt_at == clock.now + timedelta(seconds=20)
    # Longer than a day: capped at a day.
    receiver.answers = [Answer(503, {"Retry-After": str(10 * 86400)})]
    clock.now += timedelta(seconds=20)
    services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock)
    assert delivery(db, row.id).next_attempt_at == clock.now + timedelta(days=1)


def test_410_disables_the_endpoint_and_cancels_what_was_pending(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    first, second = emit(hooked, "a"), emit(hooked, "b")
    receiver.answers = [Answer(410)]
    assert services.deliver(runtime.sessions(), first.id, policy=policy) == "canceled"
    endpoint = db.get_one(WebhookEndpoint, hooked.endpoint.id, populate_existing=True)
    assert endpoint.status == "disabled"
    assert "410" in (endpoint.disabled_reason or "")
    assert delivery(db, second.id).status == "canceled"
    assert services.deliver(runtime.sessions(), second.id, policy=policy) == "canceled"
    assert len(receiver.received) == 1
    assert [a.outcome for a in attempts(db, first.id)] == ["disabled"]
    with runtime.sessions()() as session:
        assert (
            services.emit(
                session,
                merchant_id=hooked.shop.merchant["id"],
                event_type="sale.paid",
                data={},
                dedupe_key="c",
            )
            is None
        )


def test_redirects_are_failures_and_are_not_followed(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    elsewhere = f"http://127.0.0.1:{receiver.port}/elsewhere"
    receiver.answers = [Answer(302, {"Location": elsewhere})]
    row = emit(hooked)
    assert services.deliver(runtime.sessions(), row.id, policy=policy) == "pending"
    assert [r.path for r in receiver.received] == ["/hooks"]
    (attempt,) = attempts(db, row.id)
    assert (attempt.status_code, attempt.outcome) == (302, "retry")
    assert "redirect" in (attempt.error or "")
    assert "not followed" in (attempt.error or "")


def test_a_receiver_that_does_not_answer_in_time_is_a_failure(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    def too_slow(destination, body, headers):
        raise requests.ReadTimeout("read timed out")

    row = emit(hooked)
    assert services.deliver(runtime.sessions(), row.id, policy=policy, sender=too_slow) == "pending"
    (attempt,) = attempts(db, row.id)
    assert attempt.status_code is None
    assert attempt.error == "No answer within 15 seconds."


def test_the_request_times_out_at_15_seconds_and_never_follows_redirects(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy, monkeypatch
) -> None:
    seen = {}
    original = requests.Session.post

    def spy(self, url, **kwargs):
        seen.update(kwargs, trust_env=self.trust_env)
        return original(self, url, **kwargs)

    monkeypatch.setattr(requests.Session, "post", spy)
    services.deliver(runtime.sessions(), emit(hooked).id, policy=policy)
    assert seen["timeout"] == 15
    assert seen["allow_redirects"] is False
    assert seen["trust_env"] is False


def test_a_real_socket_timeout_is_recorded(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    receiver.hang = True
    row = emit(hooked)

    def quick(destination, body, headers):
        return services.send_pinned(destination, body, headers, timeout=0.2)

    assert services.deliver(runtime.sessions(), row.id, policy=policy, sender=quick) == "pending"
    (attempt,) = attempts(db, row.id)
    assert attempt.error == "No answer within 15 seconds."


def test_the_address_is_checked_again_at_delivery_and_pinned(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    """A name that resolved to a public address at registration and to a private one now
    (DNS rebinding) is refused, and nothing is sent; a name that passes is connected to at
    the address that was checked, with its own name in the Host header."""
    with runtime.sessions()() as session:
        endpoint = session.get_one(WebhookEndpoint, hooked.endpoint.id)
        endpoint.url = f"http://hooks.merchant.test:{receiver.port}/hooks"
        session.commit()
    row = emit(hooked)
    answers = {"now": ["10.0.0.7"]}
    resolver = lambda host, port: answers["now"]  # noqa: E731
    status = services.deliver(runtime.sessions(), row.id, policy=policy, resolver=resolver)
    assert status == "pending"
    assert receiver.received == []
    (attempt,) = attempts(db, row.id)
    assert attempt.status_code is None
    assert "refused" in (attempt.error or "")
    assert "10.0.0.7" in (attempt.error or "")

    answers["now"] = ["127.0.0.1"]
    clock = Clock()
    clock.now = delivery(db, row.id).next_attempt_at
    status = services.deliver(
        runtime.sessions(), row.id, policy=policy, resolver=resolver, clock=clock
    )
    assert status == "delivered"
    assert receiver.received[0].headers["host"] == f"hooks.merchant.test:{receiver.port}"


def test_during_a_rotation_both_secrets_sign_and_the_old_one_stops_after_24_hours(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    old = hooked.secret
    with runtime.sessions()() as session:
        new = services.rotate_secret(
            session, merchant_id=hooked.shop.merchant["id"], endpoint_id=hooked.endpoint.id
        )
        session.commit()
    assert new != old
    assert new.startswith("whsec_")
    receiver.secrets = [old, new]
    services.deliver(runtime.sessions(), emit(hooked, "a").id, policy=policy)
    got = receiver.received[-1]
    assert sorted(got.verified_with) == sorted([old, new])
    assert len(got.headers["webhook-signature"].split(" ")) == 2

    clock = Clock()
    clock.advance(hours=24, minutes=1)
    services.deliver(runtime.sessions(), emit(hooked, "b").id, policy=policy, clock=clock)
    got = receiver.received[-1]
    assert got.verified_with == [new]
    assert len(got.headers["webhook-signature"].split(" ")) == 1


def test_card_numbers_in_a_receivers_answer_are_masked_in_the_log(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    receiver.answers = [Answer(400, body=b'{"error": "bad card 4242 4242 4242 4242"}')]
    row = emit(hooked)
    services.deliver(runtime.sessions(), row.id, policy=policy)
    (attempt,) = attempts(db, row.id)
    assert "4242 4242 4242 4242" not in (attempt.error or "")
    assert "4242" in (attempt.error or "")


def test_the_sweep_sends_what_is_due_once(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    row = emit(hooked)
    with runtime.sessions()() as session:
        # Within the grace left to the task sent at commit: not the sweep's yet.
        assert row.id not in services.due(session, now=utcnow())
        later = utcnow() + services.SWEEP_GRACE + timedelta(seconds=1)
        assert row.id in services.due(session, now=later)
        assert row.id not in services.due(session, now=later)
        session.commit()
    # Claimed by an attempt in flight: not due either.
    receiver.answers = [Answer(500)]
    clock = Clock()
    clock.now = later + services.QUEUE_LEASE
    services.deliver(runtime.sessions(), row.id, policy=policy, clock=clock, rng=lambda: 0)
    with runtime.sessions()() as session:
        assert row.id not in services.due(session, now=clock.now + timedelta(seconds=4))
        assert row.id in services.due(session, now=clock.now + timedelta(seconds=5))


def test_one_delivery_per_endpoint_and_event_with_a_stable_event_id(
    client: FlaskClient, db: Session, hooked: Hooked, policy: AddressPolicy, receiver: Receiver
) -> None:
    with runtime.sessions()() as session:
        services.create_endpoint(
            session,
            merchant_id=hooked.shop.merchant["id"],
            url=receiver.url,
            event_types=["sale.paid"],
            policy=policy,
        )
        services.create_endpoint(
            session,
            merchant_id=hooked.shop.merchant["id"],
            url=receiver.url,
            event_types=["sale.refunded"],
            policy=policy,
        )
        session.commit()
    row = emit(hooked, "once")
    with runtime.sessions()() as session:
        again = services.emit(
            session,
            merchant_id=hooked.shop.merchant["id"],
            event_type="sale.paid",
            data={},
            dedupe_key="once",
        )
        assert again is None
    rows = db.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == row.event_id))
    assert len(list(rows)) == 2
    event = db.get_one(OutboundEvent, row.event_id)
    assert event.payload["id"] == event.id
    # Another merchant's sale is not this merchant's news.
    other = open_shop(client)
    with runtime.sessions()() as session:
        assert (
            services.emit(
                session,
                merchant_id=other.merchant["id"],
                event_type="sale.paid",
                data={},
                dedupe_key="x",
            )
            is None
        )


def test_the_body_is_the_stored_event(
    db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    row = emit(hooked)
    services.deliver(runtime.sessions(), row.id, policy=policy)
    body = json.loads(receiver.received[0].body)
    assert body == db.get_one(OutboundEvent, row.event_id).payload
    assert body["created"].endswith("Z")
    assert body["type"] == "sale.paid"
    assert utcnow().tzinfo is UTC
