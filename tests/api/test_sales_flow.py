"""A sale made in chat, end to end through HTTP: merchant, conversation, offer,
touchpoints, checkout against the local Stripe server, payment, partial refunds
sent to Stripe by the real Celery worker."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.helpers import OPERATOR, open_shop
from tests.support.stripe_spec import assert_allowed_by_spec, require_shared_data

pytestmark = pytest.mark.worker


@pytest.fixture
def web(app, committed):
    """A client whose requests commit for real, so the worker sees their data."""
    return app.test_client()


def _sale(web, shop, sale_id):
    response = web.get(f"/v1/sales/{sale_id}", headers=shop.headers)
    assert response.status_code == 200
    return response.json


def test_a_sale_from_offer_to_partial_refunds(web, stripe, worker):
    shop = open_shop(web, amount=5000, currency="EUR")
    offer_id = shop.offer["id"]
    for kind in ("delivered", "viewed", "clicked"):
        answer = web.post(
            f"/v1/offers/{offer_id}/touchpoints", json={"kind": kind}, headers=shop.headers
        )
        assert answer.status_code == 201
        assert answer.json["kind"] == kind

    checkout = web.post(f"/v1/offers/{offer_id}/checkout", headers=shop.headers)
    assert checkout.status_code == 201
    sale = checkout.json["sale"]
    payment = checkout.json["payment"]
    assert sale["state"] == "pending_payment"
    assert (sale["amount"], sale["currency"]) == (5000, "EUR")
    assert payment["client_secret"].startswith(payment["payment_intent_id"] + "_secret_")

    # The PaymentIntent Stripe received carries the sale's amount, key and metadata.
    intent = stripe.get(payment["payment_intent_id"])
    assert (intent["amount"], intent["currency"]) == (5000, "eur")
    assert intent["metadata"] == {
        "sale_id": sale["id"],
        "offer_id": offer_id,
        "conversation_id": shop.conversation["id"],
        "merchant_id": shop.merchant["id"],
    }
    creation = next(r for r in stripe.requests if r.path == "/v1/payment_intents")
    assert creation.idempotency_key == f"chatledger-checkout-{sale['id']}"

    # Accepting again returns the same sale and intent: one offer, one sale.
    again = web.post(f"/v1/offers/{offer_id}/checkout", headers=shop.headers)
    assert again.status_code == 200
    assert again.json["sale"]["id"] == sale["id"]
    assert len(stripe.objects("payment_intent")) == 1

    # A refund before the money arrived is refused and changes nothing.
    early = web.post(f"/v1/sales/{sale['id']}/refunds", json={"amount": 100}, headers=shop.headers)
    assert early.status_code == 409
    assert early.content_type == "application/problem+json"

    # The customer pays; the chat asks chatledger to check with Stripe.
    stripe.succeed(payment["payment_intent_id"])
    synced = web.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers)
    assert synced.status_code == 200
    assert synced.json["state"] == "paid"
    assert synced.json["amount_captured"] == 5000

    # Two partial refunds, accepted at once and sent to Stripe by the worker.
    first = web.post(f"/v1/sales/{sale['id']}/refunds", json={"amount": 1200}, headers=shop.headers)
    assert first.status_code == 202
    assert first.json["status"] == "requested"
    second = web.post(f"/v1/sales/{sale['id']}/refunds", json={"amount": 800}, headers=shop.headers)
    assert second.status_code == 202

    # More than what remains (5000 - 1200 - 800 held) is refused while those are in flight.
    too_much = web.post(
        f"/v1/sales/{sale['id']}/refunds", json={"amount": 3001}, headers=shop.headers
    )
    assert too_much.status_code == 400
    assert "amount" in too_much.json["errors"]

    done = wait_for(
        lambda: (body := _sale(web, shop, sale["id"]))["amount_refunded"] == 2000 and body
    )
    assert done["state"] == "partially_refunded"
    assert {r["status"] for r in done["refunds"]} == {"succeeded"}
    assert {r["amount"] for r in done["refunds"]} == {1200, 800}
    kinds = [e["kind"] for e in done["events"]]
    assert kinds.count("refund_succeeded") == 2
    assert kinds[0] == "checkout_created"

    # Each refund went to Stripe once, keyed by its own id.
    refund_calls = [r for r in stripe.requests if r.path == "/v1/refunds"]
    keys = {r.idempotency_key for r in refund_calls}
    assert keys == {f"chatledger-refund-{r['id']}" for r in done["refunds"]}
    assert sorted(int(r.params["amount"]) for r in refund_calls) == [800, 1200]

    # The rest, without an amount: the sale is then fully refunded.
    rest = web.post(f"/v1/sales/{sale['id']}/refunds", json={}, headers=shop.headers)
    assert rest.status_code == 202
    assert rest.json["amount"] == 3000
    final = wait_for(lambda: (body := _sale(web, shop, sale["id"]))["state"] == "refunded" and body)
    assert final["amount_refunded"] == 5000

    listed = web.get("/v1/sales", headers=shop.headers).json["data"]
    assert [s["id"] for s in listed] == [sale["id"]]


def test_a_refund_survives_a_stripe_outage(web, stripe, worker):
    shop = open_shop(web, amount=2000)
    checkout = web.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    sale_id = checkout["sale"]["id"]
    stripe.succeed(checkout["payment"]["payment_intent_id"])
    assert web.post(f"/v1/sales/{sale_id}/sync", headers=shop.headers).json["state"] == "paid"

    # Stripe fails the next calls (the SDK's own retries included); the task retries later.
    stripe.fail_next(3, status=500, path_prefix="/v1/refunds")
    refund = web.post(f"/v1/sales/{sale_id}/refunds", json={"amount": 500}, headers=shop.headers)
    assert refund.status_code == 202
    done = wait_for(
        lambda: (body := _sale(web, shop, sale_id))["amount_refunded"] == 500 and body,
        timeout=60,
    )
    assert done["refunds"][0]["status"] == "succeeded"
    assert len(stripe.objects("refund")) == 1


def test_every_request_sent_to_stripe_is_in_its_api(web, stripe, worker):
    require_shared_data("stripe/spec3.yaml")
    shop = open_shop(web, amount=1500, currency="JPY")
    checkout = web.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    stripe.succeed(checkout["payment"]["payment_intent_id"])
    web.post(f"/v1/sales/{checkout['sale']['id']}/sync", headers=shop.headers)
    web.post(f"/v1/sales/{checkout['sale']['id']}/refunds", json={}, headers=shop.headers)
    wait_for(lambda: stripe.objects("refund"))
    sent = [r for r in stripe.requests if not r.is_test_helper]
    assert {r.path.split("/")[2] for r in sent} >= {"payment_intents", "refunds"}
    assert_allowed_by_spec(sent)


def test_the_operator_key_cannot_check_out(web):
    response = web.post("/v1/offers/ofr_0000000000000000000000/checkout", headers=OPERATOR)
    assert response.status_code == 403
