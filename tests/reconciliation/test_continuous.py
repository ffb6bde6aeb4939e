"""Reconciliation as events arrive, through the public surface: Stripe and the partner bank
deliver signed events to the doors, a real Celery worker processes them, and each one
reconciles its sale and card group at once; a batch run asked for over the API then changes
nothing."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from tests.alerts.helpers import bank, consent, deliver, rfc3339
from tests.conftest import STRIPE_WEBHOOK_SECRETS, wait_for
from tests.helpers import open_shop
from tests.support.signing import body_of, stripe_headers


@pytest.fixture
def web(app, committed):
    return app.test_client()


def deliver_stripe(web, event) -> None:
    body = body_of(event)
    answer = web.post(
        "/webhooks/stripe", data=body, headers=stripe_headers(body, STRIPE_WEBHOOK_SECRETS[0])
    )
    assert answer.status_code == 200, answer.json


def card_event(mid: str, txn: str, amount: int, at: datetime, last4: str = "4444") -> dict:
    return {
        "transaction_id": txn,
        "customer_ref": "cust_1",
        "card": {"token": "tok_1", "brand": "mastercard", "last4": last4},
        "merchant": {"mid": mid, "name": "Blue Bottle", "mcc": "5814", "country": "US"},
        "amount": amount,
        "currency": "USD",
        "occurred_at": rfc3339(at),
        "card_present": False,
    }


@pytest.mark.worker
def test_events_reconcile_their_sale_as_they_are_processed(web, stripe, worker):
    shop = open_shop(web, amount=2500)
    mid = shop.merchant["mids"][0]
    partner = bank(web, purposes=("sales_attribution",))
    consent(web, partner, scopes=("transactions",), purposes=("sales_attribution",))

    # The card network reports the purchase before Stripe's events arrive.
    paid = web.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    sale_id = paid["sale"]["id"]
    now = datetime.now(UTC)
    txn = "txn_" + secrets.token_hex(6)
    deliver(web, partner, "transaction.authorized", card_event(mid, txn, 2500, now))
    orphan = "txn_" + secrets.token_hex(6)
    deliver(
        web,
        partner,
        "transaction.authorized",
        card_event(mid, orphan, 700, now + timedelta(hours=2)),
    )

    def exceptions(**query):
        return web.get(
            "/v1/reconciliation/exceptions", query_string=query, headers=shop.headers
        ).json["data"]

    # Until Stripe says which card paid, the purchase matches nothing.
    wait_for(lambda: len(exceptions(type="orphan_transaction")) == 2)

    stripe.succeed(
        paid["payment"]["payment_intent_id"], card={"brand": "mastercard", "last4": "4444"}
    )
    for event in stripe.events:
        if event["type"] in ("payment_intent.succeeded", "charge.succeeded"):
            deliver_stripe(web, event)

    def reconciliation():
        return web.get(f"/v1/sales/{sale_id}", headers=shop.headers).json["reconciliation"]

    body = wait_for(
        lambda: (
            (r := reconciliation())["status"] == "reconciled"
            and any(m["kind"] == "card_purchase" for m in r["matches"])
            and r
        )
    )
    kinds = {(m["kind"], m["rule"]) for m in body["matches"]}
    assert ("card_purchase", "card_exact") in kinds
    assert ("stripe_charge", "payment_intent") in kinds
    (left,) = wait_for(lambda: (e := exceptions(status="open")) and len(e) == 1 and e)
    assert left["type"] == "orphan_transaction"
    assert left["subject_key"].endswith(orphan)
    resolved = exceptions(status="resolved")
    assert [e["subject_key"].split(":")[-1] for e in resolved] == [txn]

    # A batch over the same data finds exactly what the events left.
    run = web.post(
        "/v1/reconciliation/runs",
        json={"from": rfc3339(now - timedelta(days=1)), "to": rfc3339(now + timedelta(days=1))},
        headers=shop.headers,
    )
    assert run.status_code == 202, run.json
    assert run.json["status"] == "queued"
    done = wait_for(
        lambda: (
            (r := web.get(f"/v1/reconciliation/runs/{run.json['id']}", headers=shop.headers)).json[
                "status"
            ]
            == "succeeded"
            and r.json
        )
    )
    summary = done["summary"]
    assert summary["changed"] == {
        "matches_deleted": 0,
        "matches_written": 0,
        "exceptions_resolved": 0,
        "exceptions_written": 0,
    }
    assert (summary["sales"], summary["reconciled"], summary["card_matched"]) == (1, 1, 1)
    assert summary["exceptions"] == {"orphan_transaction": {"open": 1, "resolved": 1}}


def test_a_run_refuses_a_bad_period_and_changes_nothing(client, db):
    from sqlalchemy import func, select

    from commerce.reconciliation.models import ReconciliationRun

    shop = open_shop(client)
    for body in (
        {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        {"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-11-01T00:00:00Z"},
    ):
        answer = client.post("/v1/reconciliation/runs", json=body, headers=shop.headers)
        assert answer.status_code in (400, 422), answer.json
    assert db.scalar(select(func.count()).select_from(ReconciliationRun)) == 0
