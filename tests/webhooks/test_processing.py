"""Processing stored events: Stripe into the sale's history, partners into card data,
chat into touchpoints; in any order, exactly once."""

from __future__ import annotations

import itertools
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from commerce.cards.models import CardTransaction
from commerce.consent.models import Consent
from commerce.db import transaction
from commerce.offers.models import Touchpoint
from commerce.sales.models import Sale, SaleEvent
from commerce.sales.services import checkout
from tests.conftest import CHAT_APP_SECRET, STRIPE_WEBHOOK_SECRETS, wait_for
from tests.helpers import OPERATOR, open_shop
from tests.support.signing import (
    body_of,
    meta_headers,
    partner_headers,
    stripe_event,
    stripe_headers,
)
from webhooks import inbox
from webhooks.models import InboxEvent
from webhooks.receive import accept_stripe_event

SECRET = STRIPE_WEBHOOK_SECRETS[0]


@pytest.fixture
def web(app, committed):
    return app.test_client()


def deliver_stripe(web, event):
    body = body_of(event)
    answer = web.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
    assert answer.status_code == 200, answer.json
    return answer.json["id"]


def sale_of(web, shop, sale_id):
    return web.get(f"/v1/sales/{sale_id}", headers=shop.headers).json


@pytest.mark.worker
def test_stripe_events_pay_the_sale_through_the_worker(web, stripe, worker):
    shop = open_shop(web, amount=2500)
    paid = web.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    sale_id, intent_id = paid["sale"]["id"], paid["payment"]["payment_intent_id"]
    stripe.succeed(intent_id, card={"brand": "mastercard", "last4": "4444"})
    events = [
        e for e in stripe.events if e["type"] in ("payment_intent.succeeded", "charge.succeeded")
    ]
    assert len(events) == 2
    for event in events:
        deliver_stripe(web, event)
    sale = wait_for(
        lambda: (s := sale_of(web, shop, sale_id))["state"] == "paid" and s.get("card_last4") and s
    )
    assert sale["amount_captured"] == 2500
    assert (sale["card_brand"], sale["card_last4"]) == ("mastercard", "4444")
    # Both events name the same charge: the capture is counted once.
    assert [e["kind"] for e in sale["events"]].count("payment_succeeded") == 1


def _events_for(intent_id: str, charge_id: str, start: int) -> list[dict]:
    """Succeeded, its charge, two partial refunds and a dispute, a minute apart at Stripe."""
    intent = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 5000,
        "currency": "usd",
        "amount_received": 5000,
        "latest_charge": charge_id,
        "status": "succeeded",
        "metadata": {"sale_id": "x"},
    }
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": 5000,
        "amount_captured": 5000,
        "captured": True,
        "paid": True,
        "currency": "usd",
        "payment_intent": intent_id,
        "payment_method_details": {
            "type": "card",
            "card": {"brand": "visa", "last4": "4242", "fingerprint": "fp_" + intent_id[-8:]},
        },
    }

    def refund(n, amount):
        return {
            "id": f"re_{intent_id[-8:]}_{n}",
            "object": "refund",
            "amount": amount,
            "currency": "usd",
            "payment_intent": intent_id,
            "charge": charge_id,
            "status": "succeeded",
            "metadata": {},
        }

    dispute = {
        "id": f"dp_{intent_id[-8:]}",
        "object": "dispute",
        "amount": 3500,
        "currency": "usd",
        "payment_intent": intent_id,
        "charge": charge_id,
        "status": "needs_response",
    }
    return [
        stripe_event("payment_intent.succeeded", intent, created=start),
        stripe_event("charge.succeeded", charge, created=start + 1),
        stripe_event("refund.created", refund(1, 1000), created=start + 60),
        stripe_event("refund.created", refund(2, 500), created=start + 120),
        stripe_event("charge.dispute.created", dispute, created=start + 180),
    ]


def test_every_order_of_a_sales_events_ends_the_same(app, committed, stripe):
    """All 120 orders of five events, each on a sale of its own, processed for real."""
    shop = open_shop(app.test_client(), amount=5000)
    conversation_id = shop.conversation["id"]
    merchant_id = shop.merchant["id"]
    start = int(time.time()) - 3600
    finals = set()
    for order in itertools.permutations(range(5)):
        offer = (
            app.test_client()
            .post(
                f"/v1/conversations/{conversation_id}/offers",
                json={"title": "Order", "amount": 5000, "currency": "USD"},
                headers=shop.headers,
            )
            .json
        )
        with transaction(committed) as session:
            sale = checkout(session, merchant_id=merchant_id, offer_id=offer["id"]).sale
            sale_id, intent_id = sale.id, sale.payment_intent_id
        events = _events_for(intent_id, "ch_" + intent_id[-10:], start)
        for index in order:
            with transaction(committed) as session:
                stored = accept_stripe_event(
                    session.connection(), events[index], events[index]["type"], headers={}
                )
            assert inbox.process(committed, stored.id) in ("processed", "waiting")
        with committed() as session:
            sale = session.get(Sale, sale_id)
            finals.add(
                (
                    sale.state,
                    sale.amount_captured,
                    sale.amount_refunded,
                    sale.amount_disputed,
                    sale.card_last4,
                )
            )
    assert finals == {("disputed", 5000, 1500, 3500, "4242")}


def test_an_event_before_its_sale_waits_and_is_applied_later(app, committed, stripe):
    shop = open_shop(app.test_client(), amount=1200)
    offer_id = shop.offer["id"]
    # The checkout's PaymentIntent exists at Stripe, but chatledger's sale row does not yet:
    # simulate by delivering an event for an intent id that a later checkout will carry.
    with transaction(committed) as session:
        sale = checkout(session, merchant_id=shop.merchant["id"], offer_id=offer_id).sale
        intent_id, sale_id = sale.payment_intent_id, sale.id
        sale.payment_intent_id = None  # hidden until "the checkout commits" below
    event = stripe_event(
        "payment_intent.succeeded",
        {
            "id": intent_id,
            "object": "payment_intent",
            "amount": 1200,
            "currency": "usd",
            "amount_received": 1200,
            "latest_charge": "ch_late",
            "metadata": {"sale_id": sale_id},
        },
    )
    with transaction(committed) as session:
        stored = accept_stripe_event(session.connection(), event, event["type"], headers={})
    assert inbox.process(committed, stored.id) == "waiting"
    with committed() as session:
        row = session.get(InboxEvent, stored.id)
        assert row.waiting_for == f"payment_intent:{intent_id}"
    with transaction(committed) as session:
        session.get(Sale, sale_id).payment_intent_id = intent_id
        assert inbox.wake(session, f"payment_intent:{intent_id}") == 1
    assert inbox.process(committed, stored.id) == "processed"
    with committed() as session:
        assert session.get(Sale, sale_id).state == "paid"


def test_a_failing_event_keeps_its_error_and_can_be_replayed(app, committed, stripe):
    event = stripe_event(
        "payment_intent.succeeded",
        {
            "id": "pi_broken",
            "object": "payment_intent",
            "currency": "usd",
            "amount_received": "not a number",
            "metadata": {},
        },
    )
    shop = open_shop(app.test_client(), amount=1000)
    with transaction(committed) as session:
        sale = checkout(session, merchant_id=shop.merchant["id"], offer_id=shop.offer["id"]).sale
        event["data"]["object"]["id"] = sale.payment_intent_id
        stored = accept_stripe_event(session.connection(), event, event["type"], headers={})
    with pytest.raises(ValueError, match="invalid literal"):
        inbox.process(committed, stored.id)
    with committed() as session:
        row = session.get(InboxEvent, stored.id)
        assert row.status == "failed"
        assert "ValueError" in row.last_error
        # A worker may have tried it too (the door queued it): at least this attempt counts.
        assert row.attempts >= 1
        assert (
            session.scalar(
                select(func.count()).select_from(SaleEvent).where(SaleEvent.sale_id == sale.id)
            )
            == 1
        )  # only the checkout
    with transaction(committed) as session:
        session.get(InboxEvent, stored.id).payload = {
            **event,
            "data": {"object": {**event["data"]["object"], "amount_received": 1000}},
        }
        assert inbox.reset_for_replay(session, [stored.id]) == 1
    assert inbox.process(committed, stored.id) == "processed"


def _partner_with_agreement(web):
    partner = web.post("/v1/partners", json={"name": "Bank"}, headers=OPERATOR).json
    web.post(
        f"/v1/partners/{partner['id']}/agreements",
        json={
            "scopes": ["transactions", "balances"],
            "purposes": ["sales_attribution"],
            "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "retention_days": 90,
        },
        headers=OPERATOR,
    )
    web.post(
        f"/v1/partners/{partner['id']}/consents",
        json={
            "customer_ref": "cust_1",
            "status": "granted",
            "scopes": ["transactions"],
            "purposes": ["sales_attribution", "fraud_alerts"],
        },
        headers=OPERATOR,
    )
    return partner


def _send_partner(web, partner, note):
    body = body_of(note)
    answer = web.post(
        f"/webhooks/partners/{partner['id']}",
        data=body,
        headers=partner_headers(body, partner["webhook_secret"], note["id"]),
    )
    assert answer.status_code == 200, answer.json
    return answer.json["id"]


def test_partner_transactions_become_card_transactions_once(app, web, committed):
    shop = open_shop(web)
    mid = shop.merchant["mids"][0]
    partner = _partner_with_agreement(web)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    data = {
        "transaction_id": "txn_1",
        "customer_ref": "cust_1",
        "card": {"token": "tok_1", "par": "PAR0001", "brand": "visa", "last4": "4242"},
        "merchant": {"mid": mid, "name": "Blue Bottle", "mcc": "5814", "country": "US"},
        "amount": 1250,
        "currency": "USD",
        "occurred_at": now,
        "card_present": False,
    }
    ids = []
    for kind in ("cleared", "authorized"):  # the clearing arrives first
        note = {
            "id": f"evt_{kind}_{secrets.token_hex(4)}",
            "type": f"transaction.{kind}",
            "created": now,
            "data": {**data, "amount": 1300 if kind == "cleared" else 1250},
        }
        ids.append(_send_partner(web, partner, note))
        ids.append(_send_partner(web, partner, note))  # and again
    assert len(set(ids)) == 2
    for inbox_id in set(ids):
        assert inbox.process(committed, inbox_id) == "processed"
    with committed() as session:
        rows = session.scalars(select(CardTransaction).order_by(CardTransaction.kind)).all()
        assert [(r.kind, r.amount) for r in rows] == [("authorized", 1250), ("cleared", 1300)]
        assert {r.merchant_id for r in rows} == {shop.merchant["id"]}
        assert rows[0].card_ref_id == rows[1].card_ref_id
        assert rows[0].purposes == ["sales_attribution"]


def test_consent_events_in_any_order_keep_the_latest(app, web, committed):
    partner = _partner_with_agreement(web)
    base = {
        "customer_ref": "cust_9",
        "scopes": ["transactions"],
        "purposes": ["fraud_alerts"],
        "chat": {"channel": "messenger", "user_id": "psid_9"},
        "cards": [{"token": "tok_9", "par": "PAR9", "brand": "visa", "last4": "1111"}],
    }
    granted = {
        "id": "evt_g",
        "type": "consent.granted",
        "created": "2026-11-28T10:00:00Z",
        "data": base,
    }
    revoked = {
        "id": "evt_r",
        "type": "consent.revoked",
        "created": "2026-11-28T11:00:00Z",
        "data": {"customer_ref": "cust_9"},
    }
    for note in (revoked, granted):  # the revocation arrives first
        inbox.process(committed, _send_partner(web, partner, note))
    with committed() as session:
        consent = session.scalars(select(Consent).where(Consent.customer_ref == "cust_9")).one()
        assert consent.status == "revoked"


def test_chat_postbacks_become_touchpoints_and_conversations(app, web, committed):
    shop = open_shop(web)
    page_id = shop.merchant["chat_pages"][0]["page_id"]
    offer_id = shop.offer["id"]
    item = {
        "sender": {"id": "psid_new"},
        "recipient": {"id": page_id},
        "timestamp": int(time.time() * 1000),
        "postback": {
            "mid": "m_post_1",
            "title": "Buy",
            "payload": f"chatledger:offer:{offer_id}:clicked",
        },
    }
    body = body_of({"object": "page", "entry": [{"id": page_id, "messaging": [item]}]})
    for _ in range(3):
        answer = web.post(
            "/webhooks/chat/messenger", data=body, headers=meta_headers(body, CHAT_APP_SECRET)
        )
        assert answer.status_code == 200
    (inbox_id,) = answer.json["ids"]
    assert inbox.process(committed, inbox_id) == "processed"
    with committed() as session:
        touch = session.scalars(
            select(Touchpoint).where(Touchpoint.offer_id == offer_id, Touchpoint.source == "chat")
        ).all()
        assert [(t.kind, t.external_id) for t in touch] == [("clicked", "m_post_1")]
    conversations = web.post(
        "/v1/conversations",
        json={"channel": "messenger", "thread_id": "psid_new", "customer_user_id": "psid_new"},
        headers=shop.headers,
    )
    assert conversations.status_code == 200  # created on first sight by the chat event
