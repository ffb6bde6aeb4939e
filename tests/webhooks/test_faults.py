"""The inbox under faults: Redis down, a worker killed mid-task, PostgreSQL down, no worker
running; and the relay that sends the stored events' tasks (webhooks/relay.py).

Each fault is inflicted on servers this module starts for itself (the embedded PostgreSQL
and Redis of `app.embedded`, in a temporary data dir), with a real Celery worker and a real
`celery beat` of its own; the shared servers the rest of the suite uses are never touched.

The process-wide state an app configures (commerce.runtime's engine, Celery's default app)
is put back at the end of the module, so the tests after it run on the suite's servers.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery import _state as celery_state
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

import migrations as migrate
from app.config import Settings
from app.embedded import start_postgres, start_redis, stop_postgres, stop_redis
from commerce import runtime
from commerce.access.services import ensure_operator_key
from commerce.db import make_engine, make_session_factory, utcnow
from commerce.sales.models import Sale, SaleEvent
from commerce.sales.states import EventKind
from tests.conftest import (
    CHAT_APP_SECRET,
    OPERATOR_KEY,
    STRIPE_WEBHOOK_SECRETS,
    create_test_app,
    replace,
    wait_for,
)
from tests.helpers import OPERATOR, Shop, open_shop
from tests.support.faults import CeleryProcess, sessions_waiting_for_a_lock
from tests.support.signing import (
    body_of,
    meta_headers,
    partner_headers,
    stripe_headers,
)
from tests.support.stripe_server import StripeServer
from webhooks import inbox, relay, tasks
from webhooks.models import InboxEvent

pytestmark = pytest.mark.worker

SECRET = STRIPE_WEBHOOK_SECRETS[0]
#: How long a test waits for the sweep: its grace, beat's 15 s period, and room for a worker
#: that reconnects to a Redis that came back (Celery retries at growing intervals).
SWEEP_WAIT = tasks.SWEEP_GRACE.total_seconds() + 15 + 60
#: How long a test waits for a relay to send again an event whose task was lost: the lease of
#: the first send, the relay's poll and room for a slow machine.
RELAY_WAIT = relay.LEASE.total_seconds() + relay.POLL_SECONDS + 60


@dataclass
class Faulty:
    """Servers, app and Celery processes of this module's own."""

    data_dir: Path
    settings: Settings
    app: Flask
    worker: CeleryProcess
    beat: CeleryProcess

    def web(self) -> FlaskClient:
        return self.app.test_client()

    def start_worker(self) -> CeleryProcess:
        self.worker = CeleryProcess("worker", self.settings, self.data_dir / "worker.log")
        return self.worker.start()

    def ensure_up(self) -> None:
        """Both servers, the worker and beat running (idempotent: reuses what runs)."""
        start_postgres(self.data_dir)
        start_redis(self.data_dir)
        if not self.worker.running:
            self.start_worker()
        if not self.beat.running:
            self.beat.start()

    def logs(self) -> str:
        return (self.data_dir / "worker.log").read_text(errors="replace") + (
            self.data_dir / "beat.log"
        ).read_text(errors="replace")


@pytest.fixture(scope="module")
def faulty(
    settings: Settings, stripe_server: StripeServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Faulty]:
    data_dir = tmp_path_factory.mktemp("faults")
    database_url = start_postgres(data_dir)
    redis_url = start_redis(data_dir)
    # The suite's settings (secrets, keys, the local Stripe) on this module's servers.
    own = replace(settings, database_url=database_url, redis_url=redis_url, data_dir=data_dir)
    # What create_app reconfigures process-wide, to be put back afterwards.
    saved_runtime = (runtime._engine, runtime._factory)
    saved_celery = (celery_state.default_app, celery_state._tls.current_app)
    worker = beat = None
    try:
        migrate.upgrade(database_url)
        application = create_test_app(own)
        with runtime.sessions()() as session:
            ensure_operator_key(session, OPERATOR_KEY)
            session.commit()
        worker = CeleryProcess("worker", own, data_dir / "worker.log").start()
        beat = CeleryProcess("beat", own, data_dir / "beat.log").start()
        env = Faulty(data_dir, own, application, worker, beat)
        yield env
        worker = env.worker
    finally:
        for process in (beat, worker):
            if process is not None:
                process.stop()
        if runtime._engine is not None and runtime._engine is not saved_runtime[0]:
            runtime._engine.dispose()
        runtime._engine, runtime._factory = saved_runtime
        celery_state.default_app, celery_state._tls.current_app = saved_celery
        stop_redis(data_dir)
        stop_postgres(data_dir)


@pytest.fixture
def env(faulty: Faulty, stripe: StripeServer) -> Faulty:
    """Every test starts with everything up, whatever the test before it left behind."""
    faulty.ensure_up()
    return faulty


# -- helpers -----------------------------------------------------------------------------


def paid_intent_events(web: FlaskClient, stripe: StripeServer, shop: Shop, count: int):
    """`count` sales checked out through the API and paid at Stripe: their ids and the
    `payment_intent.succeeded` event Stripe recorded for each."""
    sales = []
    for n in range(count):
        offer = web.post(
            f"/v1/conversations/{shop.conversation['id']}/offers",
            json={"title": f"Cold brew {n}", "amount": 1250, "currency": "USD"},
            headers=shop.headers,
        )
        assert offer.status_code == 201, offer.json
        paid = web.post(f"/v1/offers/{offer.json['id']}/checkout", headers=shop.headers)
        assert paid.status_code in (200, 201), paid.json
        intent_id = paid.json["payment"]["payment_intent_id"]
        stripe.succeed(intent_id)
        sales.append((paid.json["sale"]["id"], intent_id))
    succeeded = {
        e["data"]["object"]["id"]: e
        for e in stripe.events
        if e["type"] == "payment_intent.succeeded"
    }
    return [(sale_id, succeeded[intent_id]) for sale_id, intent_id in sales]


def post_stripe(web: FlaskClient, event: dict):
    body = body_of(event)
    return web.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))


def inbox_row(event_id: str, source: str = "stripe") -> InboxEvent | None:
    with runtime.sessions()() as session:
        return session.scalars(
            select(InboxEvent).where(InboxEvent.source == source, InboxEvent.event_id == event_id)
        ).one_or_none()


def inbox_rows(event_id: str) -> int:
    with runtime.sessions()() as session:
        return session.scalar(
            select(func.count()).select_from(InboxEvent).where(InboxEvent.event_id == event_id)
        )


def payment_events(sale_id: str) -> int:
    with runtime.sessions()() as session:
        return session.scalar(
            select(func.count())
            .select_from(SaleEvent)
            .where(SaleEvent.sale_id == sale_id, SaleEvent.kind == EventKind.PAYMENT_SUCCEEDED)
        )


def sale_state(sale_id: str) -> str:
    with runtime.sessions()() as session:
        return session.get(Sale, sale_id).state


def queued_inbox_ids(env: Faulty) -> list[str]:
    """The inbox ids of the `process_event` tasks waiting in the module's Redis, as many times
    as each was sent."""
    client = redis.Redis.from_url(env.settings.redis_url)
    try:
        found = []
        for raw in client.lrange("celery", 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") == "webhooks.process_event":
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                found.extend(args)
        return found
    finally:
        client.close()


def post_paid(env: Faulty, stripe: StripeServer, count: int) -> list[tuple[str, dict, str]]:
    """`count` paid sales whose `payment_intent.succeeded` went through the door: the sale id,
    the event and its inbox id."""
    web = env.web()
    posted = []
    for sale_id, event in paid_intent_events(web, stripe, open_shop(web), count):
        answer = post_stripe(web, event)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        posted.append((sale_id, event, answer.json["id"]))
    return posted


def processed(event_ids: list[str]) -> bool:
    rows = [inbox_row(event_id) for event_id in event_ids]
    return all(row is not None and row.status == "processed" for row in rows)


# -- Redis down --------------------------------------------------------------------------


def test_events_arriving_while_redis_is_down_are_processed_once_it_is_back(env, stripe):
    web = env.web()
    shop = open_shop(web)
    deliveries = paid_intent_events(web, stripe, shop, 3)

    beat_errors = env.beat.output().count("beat: Connection error")
    stop_redis(env.data_dir)
    ids = {}
    for _ in range(2):  # Stripe retries a delivery it thinks failed: the copy is a duplicate
        for _, event in deliveries:
            answer = post_stripe(web, event)
            assert answer.status_code == 200, answer.get_data(as_text=True)
            ids.setdefault(event["id"], answer.json["id"])
            assert answer.json["id"] == ids[event["id"]]
    # Accepted durably, though nothing could be queued: the worker's relay was woken by the
    # commits, claimed the rows and failed to send them, so it left them due and backs off.
    wait_for(lambda: "not sent" in env.worker.output(), timeout=30, interval=0.2)
    for _, event in deliveries:
        row = inbox_row(event["id"])
        assert (row.status, row.attempts) == ("pending", 0)

    # Beat ticks into the outage too (it retries its connection): that must not stop it.
    wait_for(
        lambda: env.beat.output().count("beat: Connection error") > beat_errors,
        timeout=20,
        interval=0.2,
    )
    start_redis(env.data_dir)
    event_ids = [event["id"] for _, event in deliveries]
    wait_for(lambda: processed(event_ids), timeout=SWEEP_WAIT, interval=0.5)
    for sale_id, event in deliveries:
        row = inbox_row(event["id"])
        assert (row.status, row.attempts, row.last_error) == ("processed", 1, None)
        assert sale_state(sale_id) == "paid"
        assert payment_events(sale_id) == 1
    # The relay (or the sweep, whichever came first) sent them once Redis was back; the
    # failed sends counted no attempt.
    assert "inbox relay sent" in env.worker.output() or "sweep sent" in env.logs()


# -- A worker killed mid-task --------------------------------------------------------------


def test_a_worker_killed_in_the_middle_of_a_task_leaves_the_event_processed_once(env, stripe):
    web = env.web()
    shop = open_shop(web)
    [(sale_id, event)] = paid_intent_events(web, stripe, shop, 1)

    # The test holds the sale's row lock, so the worker's task blocks in locks.lock_sale
    # with the inbox row locked and the handler half-way: a deterministic "middle of a task".
    holder = runtime.engine().connect()
    held = holder.begin()
    try:
        holder.execute(select(Sale.id).where(Sale.id == sale_id).with_for_update())
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert post_stripe(web, event).status_code == 200
        blocked = wait_for(
            lambda: sessions_waiting_for_a_lock(runtime.engine(), exclude_pid=holder_pid),
            timeout=10,
            interval=0.05,
        )
        assert any("FOR UPDATE" in query for query in blocked), blocked
        # Within the worker's lock_timeout (10 s): SIGKILL, no warm shutdown, no ack.
        env.worker.kill()
        row = inbox_row(event["id"])
        assert (row.status, row.attempts) == ("pending", 0)
    finally:
        held.rollback()
        holder.close()

    # Nothing the dead worker did is left: its transaction never committed.
    assert payment_events(sale_id) == 0
    env.start_worker()
    # Its message is unacknowledged in Redis until the visibility timeout (hours); the new
    # worker's relay finds the row still pending once the lease of its send has passed, and
    # sends it again.
    wait_for(lambda: processed([event["id"]]), timeout=RELAY_WAIT, interval=0.5)
    row = inbox_row(event["id"])
    assert (row.status, row.attempts) == ("processed", 1)
    assert sale_state(sale_id) == "paid"
    assert payment_events(sale_id) == 1
    # Sending it once more (the late-acknowledged message, when Redis redelivers it) is a no-op.
    tasks.process_event.apply_async(args=[row.id])
    time.sleep(2)
    row = inbox_row(event["id"])
    assert (row.status, row.attempts) == ("processed", 1)
    assert payment_events(sale_id) == 1


# -- PostgreSQL down -----------------------------------------------------------------------


def _partner(web: FlaskClient) -> dict:
    partner = web.post("/v1/partners", json={"name": "First Bank"}, headers=OPERATOR)
    assert partner.status_code == 201, partner.json
    agreement = web.post(
        f"/v1/partners/{partner.json['id']}/agreements",
        json={
            "scopes": ["transactions"],
            "purposes": ["sales_attribution"],
            "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "retention_days": 90,
        },
        headers=OPERATOR,
    )
    assert agreement.status_code == 201, agreement.json
    consent = web.post(
        f"/v1/partners/{partner.json['id']}/consents",
        json={
            "customer_ref": "cust_pgdown",
            "status": "granted",
            "scopes": ["transactions"],
            "purposes": ["sales_attribution"],
        },
        headers=OPERATOR,
    )
    assert consent.status_code == 201, consent.json
    return partner.json


def test_postgres_down_answers_503_and_leaves_nothing_half_written(env, stripe, caplog):
    web = env.web()
    shop = open_shop(web)
    [(sale_id, stripe_evt)] = paid_intent_events(web, stripe, shop, 1)
    partner = _partner(web)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    note = {
        "id": "evt_pgdown_partner",
        "type": "transaction.authorized",
        "created": now,
        "data": {
            "transaction_id": "txn_pgdown",
            "customer_ref": "cust_pgdown",
            "card": {"token": "tok_pgdown", "par": "PARPGDOWN", "brand": "visa", "last4": "1111"},
            "merchant": {"mid": shop.merchant["mids"][0], "name": "Blue Bottle", "mcc": "5814"},
            "amount": 1250,
            "currency": "USD",
            "occurred_at": now,
            "card_present": False,
        },
    }
    page_id = shop.merchant["chat_pages"][0]["page_id"]
    chat = {
        "object": "page",
        "entry": [
            {
                "id": page_id,
                "time": int(time.time() * 1000),
                "messaging": [
                    {
                        "sender": {"id": "psid_pgdown"},
                        "recipient": {"id": page_id},
                        "timestamp": int(time.time() * 1000),
                        "message": {"mid": "m_pgdown", "text": "is it still available?"},
                    }
                ],
            }
        ],
    }

    def post_all():
        # Each sender signs again when it retries: a fresh timestamp over the same body.
        partner_body, chat_body = body_of(note), body_of(chat)
        return {
            "stripe": post_stripe(web, stripe_evt),
            "partner": web.post(
                f"/webhooks/partners/{partner['id']}",
                data=partner_body,
                headers=partner_headers(partner_body, partner["webhook_secret"], note["id"]),
            ),
            "chat": web.post(
                "/webhooks/chat/messenger",
                data=chat_body,
                headers=meta_headers(chat_body, CHAT_APP_SECRET),
            ),
        }

    stop_postgres(env.data_dir)
    caplog.set_level(logging.INFO)
    for door, answer in post_all().items():
        assert answer.status_code == 503, (door, answer.status_code, answer.get_data(as_text=True))
        assert answer.content_type == "application/problem+json", door
        assert answer.json["type"] == "/problems/unavailable", door
        assert answer.headers.get("Retry-After", "").isdigit(), door
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]

    start_postgres(env.data_dir)
    answers = post_all()
    for door, answer in answers.items():
        assert answer.status_code == 200, (door, answer.get_data(as_text=True))
    # The first delivery that reached the database is the first one stored: the failed
    # attempt left no row, no lock and no queued task behind.
    assert answers["stripe"].json["duplicate"] is False
    assert answers["partner"].json["duplicate"] is False
    for event_id in (stripe_evt["id"], note["id"], "m_pgdown"):
        assert inbox_rows(event_id) == 1, event_id
    wait_for(lambda: processed([stripe_evt["id"]]), timeout=SWEEP_WAIT, interval=0.5)
    assert sale_state(sale_id) == "paid"
    assert payment_events(sale_id) == 1
    partner_row = inbox_row(note["id"], source=f"partner:{partner['id']}")
    chat_row = inbox_row("m_pgdown", source="chat:messenger")
    wait_for(
        lambda: all(
            inbox_row(r.event_id, r.source).status == "processed" for r in (partner_row, chat_row)
        ),
        timeout=SWEEP_WAIT,
        interval=0.5,
    )
    # The worker's relay lost its connection with the server and came back by itself.
    assert env.worker.running
    assert "inbox relay: the database is unreachable" in env.worker.output()
    assert env.worker.output().count("inbox relay listening") >= 2


# -- The relay ------------------------------------------------------------------------------


def test_an_event_stored_while_no_worker_runs_is_processed_once_a_worker_starts(env, stripe):
    env.worker.stop()
    [(sale_id, event, inbox_id)] = post_paid(env, stripe, 1)
    # Accepted and committed; the door sent nothing (no relay is listening, no task is queued).
    row = inbox_row(event["id"])
    assert (row.status, row.attempts) == ("pending", 0)
    assert inbox_id not in queued_inbox_ids(env)

    env.start_worker()
    wait_for(lambda: processed([event["id"]]), timeout=SWEEP_WAIT, interval=0.5)
    row = inbox_row(event["id"])
    assert (row.status, row.attempts, row.last_error) == ("processed", 1, None)
    assert sale_state(sale_id) == "paid"
    assert payment_events(sale_id) == 1


def test_a_relay_whose_send_fails_leaves_the_event_to_be_sent_again(env, stripe):
    env.worker.stop()  # this test's relay is the only one
    [(sale_id, event, inbox_id)] = post_paid(env, stripe, 1)
    due_at = inbox_row(event["id"]).next_attempt_at

    stop_redis(env.data_dir)
    with pytest.raises(relay.SendFailed):
        relay.send_due(runtime.engine(), ids=[inbox_id])
    # The claim rolled back with the send: still due, nothing counted.
    row = inbox_row(event["id"])
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, due_at)

    start_redis(env.data_dir)
    assert relay.send_due(runtime.engine(), ids=[inbox_id]) == 1
    row = inbox_row(event["id"])
    assert row.next_attempt_at > due_at  # leased: its task is on its way
    assert relay.send_due(runtime.engine(), ids=[inbox_id]) == 0
    assert queued_inbox_ids(env).count(inbox_id) == 1

    env.start_worker()
    wait_for(lambda: processed([event["id"]]), timeout=SWEEP_WAIT, interval=0.5)
    row = inbox_row(event["id"])
    assert (row.status, row.attempts) == ("processed", 1)
    assert payment_events(sale_id) == 1


def test_two_relays_never_send_one_event_twice(env, stripe):
    env.worker.stop()  # the two relays of this test are the only ones
    posted = post_paid(env, stripe, 20)
    ids = [inbox_id for _, _, inbox_id in posted]
    engine = runtime.engine()

    # While one relay's claim holds the rows, a second relay skips them; once the first has
    # leased the ones it sent, the second sends only the others.
    with engine.begin() as first:
        assert sorted(inbox.claim(first, now=utcnow(), ids=ids)) == sorted(ids)
        assert relay.send_due(engine, ids=ids) == 0
        inbox.lease(first, ids[:10], until=utcnow() + relay.LEASE)
    assert relay.send_due(engine, ids=ids) == 10
    assert relay.send_due(engine, ids=ids) == 0
    queued = Counter(queued_inbox_ids(env))
    assert [queued[inbox_id] for inbox_id in ids] == [0] * 10 + [1] * 10  # each once

    # Two running relays, woken by the same notifications, racing for the same rows.
    relays = [relay.Relay(env.settings.database_url).start() for _ in range(2)]
    try:
        more = post_paid(env, stripe, 20)
        more_ids = [inbox_id for _, _, inbox_id in more]
        wait_for(lambda: set(more_ids) <= set(queued_inbox_ids(env)), timeout=60, interval=0.2)
    finally:
        for each in relays:
            each.stop()
    queued = Counter(queued_inbox_ids(env))
    assert [queued[inbox_id] for inbox_id in ids[10:] + more_ids] == [1] * 30  # each once
    assert not any(queued[inbox_id] for inbox_id in ids[:10])
    assert sum(each.sent for each in relays) >= len(more_ids)

    # The first ten were leased but never sent (as if their relay died after the commit): they
    # are sent again once the lease has passed. Every event is then processed exactly once.
    env.start_worker()
    all_posted = posted + more
    wait_for(
        lambda: processed([event["id"] for _, event, _ in all_posted]),
        timeout=RELAY_WAIT,
        interval=0.5,
    )
    for sale_id, event, _ in all_posted:
        row = inbox_row(event["id"])
        assert (row.status, row.attempts) == ("processed", 1)
        assert payment_events(sale_id) == 1


def test_a_delivery_that_finds_its_event_held_counts_no_attempt(env, stripe):
    env.worker.stop()
    [(sale_id, event, inbox_id)] = post_paid(env, stripe, 1)
    impatient = make_engine(
        env.settings.database_url, connect_args={"options": "-c lock_timeout=200"}
    )
    try:
        # A relay's claim (or another delivery's processing) holds the row.
        with runtime.engine().begin() as holder:
            assert inbox.claim(holder, now=utcnow(), ids=[inbox_id]) == [inbox_id]
            with pytest.raises(inbox.Busy):
                inbox.process(make_session_factory(impatient), inbox_id)
        row = inbox_row(event["id"])
        assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)
        assert inbox.process(make_session_factory(impatient), inbox_id) == "processed"
    finally:
        impatient.dispose()
    row = inbox_row(event["id"])
    assert (row.status, row.attempts) == ("processed", 1)
    assert payment_events(sale_id) == 1


def test_a_relay_sends_no_more_than_the_queue_limit_ahead_of_the_workers(env, stripe, monkeypatch):
    env.worker.stop()
    monkeypatch.setattr(relay, "QUEUE_LIMIT", 5)
    posted = post_paid(env, stripe, 8)
    ids = [inbox_id for _, _, inbox_id in posted]
    # Five are sent and leased; the other three wait until a worker has taken some up.
    assert relay.send_due(runtime.engine()) == 5
    assert relay.send_due(runtime.engine()) == 0
    queued = Counter(queued_inbox_ids(env))
    assert sum(queued[inbox_id] for inbox_id in ids) == 5

    env.start_worker()
    wait_for(
        lambda: processed([event["id"] for _, event, _ in posted]),
        timeout=SWEEP_WAIT,
        interval=0.5,
    )
    for sale_id, event, _ in posted:
        row = inbox_row(event["id"])
        assert (row.status, row.attempts) == ("processed", 1)
        assert payment_events(sale_id) == 1
