"""Part 1 of issue 8, concurrency: a checkout racing its own `payment_intent.succeeded`.

Each of 200 rounds is a fresh sale: a checkout through the API, whose PaymentIntent the
customer pays at once, and Stripe's `payment_intent.succeeded` (with `charge.succeeded`,
which records the same payment, in a random order and sometimes twice) delivered to the
door at a moment drawn at random among three:

* `before`: while the checkout is still waiting for Stripe to answer, so before the sale can
  have committed; the Stripe stand-in answers only once the worker has processed the event
  and left it `waiting` for its PaymentIntent;
* `racing`: from another thread, after a random pause of up to 30 ms from the intent's
  creation, racing the checkout's commit;
* `after`: once the checkout has answered.

The rounds run three at a time, against a real gunicorn, a real Celery worker and beat.
Whatever the interleaving, each sale ends paid with its amount counted once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from random import Random
from typing import Any

import pytest
import requests
from sqlalchemy import text

from tests.conftest import STRIPE_WEBHOOK_SECRETS
from tests.reliability.conftest import SEED, Prepared, Suite
from tests.support.signing import body_of, stripe_headers
from tests.support.stream import Api, wait_until_settled
from tests.support.stripe_server import StripeServer

pytestmark = pytest.mark.reliability

ROUNDS = 200
MODES = ("before", "racing", "after")


class HookedStripe(StripeServer):
    """The local Stripe, running `on_intent_created(intent)` once a PaymentIntent exists and
    before the request that created it is answered (the server's lock is held: the hook may
    drive the server itself, from this thread)."""

    on_intent_created: Callable[[dict[str, Any]], None] | None = None

    def _create_payment_intent(self, ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        answer = super()._create_payment_intent(ctx, params)
        if self.on_intent_created is not None:
            self.on_intent_created(answer)
        return answer


class Customer:
    """Pays a PaymentIntent at the Stripe stand-in and delivers Stripe's events about it."""

    def __init__(self, stripe: HookedStripe, door: str, rng: Random) -> None:
        self.stripe, self.door, self.rng = stripe, door, rng
        self.http = requests.Session()
        self.http.trust_env = False
        self.lock = threading.Lock()
        self.delivered: dict[str, list[str]] = {}  # intent -> event ids

    def pay_and_deliver(self, intent_id: str) -> None:
        self.stripe.succeed(intent_id)
        events = [
            event
            for event in self.stripe.events
            if (event["type"], _intent_of(event))
            in {("payment_intent.succeeded", intent_id), ("charge.succeeded", intent_id)}
        ]
        with self.lock:
            self.rng.shuffle(events)
            if self.rng.random() < 0.3:
                events.append(self.rng.choice(events))  # a retried delivery
        for event in events:
            body = body_of(event)
            answer = self.http.post(
                self.door,
                data=body,
                headers=stripe_headers(body, STRIPE_WEBHOOK_SECRETS[0]),
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        self.delivered[intent_id] = [event["id"] for event in events]


def _intent_of(event: dict[str, Any]) -> str | None:
    obj = event["data"]["object"]
    return obj["id"] if obj["object"] == "payment_intent" else obj.get("payment_intent")


def test_a_checkout_racing_its_payment_webhook_counts_the_amount_once(
    suite: Suite, prepared: Prepared
):
    rng = Random(SEED + 2)
    stripe = HookedStripe(clock=lambda: time.time() - 3600).start()
    service = suite.service("race", stripe_url=stripe.url)
    engine = suite.cluster.engine(service.settings.database_url)
    try:
        service.start()
        customer = Customer(stripe, service.urls[0] + "/webhooks/stripe", rng)
        api = Api(service.urls[0])
        merchant = prepared.world.merchants[0]
        conversation = api.call(
            "POST",
            "/v1/conversations",
            merchant.key,
            {"channel": "messenger", "thread_id": "t_race", "customer_user_id": "4242"},
        )
        offers = {}
        for n in range(ROUNDS):
            offer = api.call(
                "POST",
                f"/v1/conversations/{conversation['id']}/offers",
                merchant.key,
                {"title": f"Race {n}", "amount": 1000 + 50 * n, "currency": "USD"},
            )
            offers[offer["id"]] = rng.choice(MODES)

        def waiting(event_id: str) -> bool:
            with engine.connect() as connection:
                return (
                    connection.execute(
                        text(
                            "SELECT status FROM inbox_events"
                            " WHERE source = 'stripe' AND event_id = :id"
                        ),
                        {"id": event_id},
                    ).scalar()
                    == "waiting"
                )

        failures: list[BaseException] = []
        racers: list[threading.Thread] = []

        def on_intent_created(intent: dict[str, Any]) -> None:
            mode = offers[intent["metadata"]["offer_id"]]
            if mode == "before":
                customer.pay_and_deliver(intent["id"])
                succeeded = [
                    e["id"]
                    for e in stripe.events
                    if e["type"] == "payment_intent.succeeded" and _intent_of(e) == intent["id"]
                ]
                deadline = time.monotonic() + 60
                while not waiting(succeeded[0]):
                    assert time.monotonic() < deadline, "the event was not processed early"
                    time.sleep(0.02)
            elif mode == "racing":
                pause = rng.uniform(0, 0.03)

                def later() -> None:
                    try:
                        time.sleep(pause)
                        customer.pay_and_deliver(intent["id"])
                    except BaseException as exc:
                        failures.append(exc)

                racer = threading.Thread(target=later, daemon=True)
                racers.append(racer)
                racer.start()

        stripe.on_intent_created = on_intent_created
        sales: dict[str, dict[str, Any]] = {}
        queue = list(offers)
        lock = threading.Lock()

        def checkout_rounds() -> None:
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        offer_id = queue.pop()
                    paid = api.call("POST", f"/v1/offers/{offer_id}/checkout", merchant.key)
                    sales[paid["sale"]["id"]] = {
                        "offer": offer_id,
                        "amount": paid["sale"]["amount"],
                        "intent": paid["payment"]["payment_intent_id"],
                        "mode": offers[offer_id],
                    }
                    if offers[offer_id] == "after":
                        customer.pay_and_deliver(paid["payment"]["payment_intent_id"])
            except BaseException as exc:
                failures.append(exc)

        # Three at a time: a checkout holds a gunicorn thread while the Stripe stand-in holds
        # its answer, and each of gunicorn's two processes has four threads, so a door always
        # has one free for the event the held answer waits for.
        rounds = [threading.Thread(target=checkout_rounds) for _ in range(3)]
        for thread in rounds:
            thread.start()
        for thread in rounds:
            thread.join()
        for thread in racers:  # all started by now: every checkout has answered
            thread.join()
        assert not failures, failures
        assert len(sales) == ROUNDS

        # The early events are applied once their sale exists: woken by the checkout's
        # commit, or found by the sweep.
        def paid_sales() -> int:
            with engine.connect() as connection:
                return connection.execute(
                    text("SELECT count(*) FROM sales WHERE id = ANY(:ids) AND state = 'paid'"),
                    {"ids": list(sales)},
                ).scalar_one()

        deadline = time.monotonic() + 240
        while paid_sales() < ROUNDS:
            assert time.monotonic() < deadline, f"{paid_sales()} of {ROUNDS} sales paid"
            time.sleep(1)

        delivered = {e for events in customer.delivered.values() for e in events}
        wait_until_settled(engine, len(delivered), timeout=300)
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT s.id, s.amount, s.amount_captured, s.state,"
                    " (SELECT count(*) FROM sale_events e WHERE e.sale_id = s.id"
                    "   AND e.kind = 'payment_succeeded') AS payments,"
                    " (SELECT coalesce(sum(e.amount), 0) FROM sale_events e"
                    "   WHERE e.sale_id = s.id AND e.kind = 'payment_succeeded') AS counted"
                    " FROM sales s WHERE s.id = ANY(:ids)"
                ),
                {"ids": list(sales)},
            ).all()
            inbox = {
                row.event_id: row
                for row in connection.execute(
                    text("SELECT event_id, status, attempts FROM inbox_events")
                )
            }
        for row in rows:
            assert (row.state, row.amount_captured, row.payments, row.counted) == (
                "paid",
                row.amount,
                1,
                row.amount,
            ), (sales[row.id], row)
        waited: Counter[str] = Counter()
        for sale in sales.values():
            for event_id in customer.delivered[sale["intent"]]:
                assert inbox[event_id].status == "processed", (sale, inbox[event_id])
            if any(inbox[e].attempts > 1 for e in customer.delivered[sale["intent"]]):
                waited[sale["mode"]] += 1
        modes = Counter(sale["mode"] for sale in sales.values())
        # Every `before` round was processed while its sale did not exist yet, and applied
        # on a later attempt.
        assert waited["before"] == modes["before"]
        print(
            f"\ncheckout race: {ROUNDS} rounds {dict(modes)};"
            f" event applied after waiting for its sale: {dict(waited)}"
        )
    except BaseException:
        print(service.logs())
        raise
    finally:
        stripe.on_intent_created = None
        service.stop()
        engine.dispose()
        stripe.stop()
