"""Payouts against their balance transactions: on `payout.paid` the worker lists the payout's
lines from Stripe through the SDK, stores them once, ties each to its sale and checks the
payout's amount; what does not add up is one `payout_mismatch` with both values."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import stripe as stripe_sdk
from sqlalchemy import select

from commerce.db import transaction
from commerce.outbound import services as outbound
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import OutboundEvent
from commerce.payouts.models import Payout
from commerce.reconciliation import payouts
from commerce.reconciliation.models import PayoutLine, ReconciliationException
from commerce.sales.models import Sale
from tests.conftest import STRIPE_KEY, STRIPE_WEBHOOK_SECRETS, wait_for
from tests.helpers import bearer, create_merchant, digits
from tests.support.signing import body_of, stripe_headers
from tests.support.stripe_server import StripeServer
from tests.support.stripe_spec import STRIPE_SPEC, assert_allowed_by_spec, shared_data_path
from webhooks import inbox
from webhooks.receive import accept_stripe_event

SECRET = STRIPE_WEBHOOK_SECRETS[0]


@pytest.fixture
def web(app, committed):
    return app.test_client()


@pytest.fixture
def sdk(stripe: StripeServer) -> Iterator[stripe_sdk.StripeClient]:
    """Stripe as a person at the dashboard uses it: outside chatledger."""
    http_client = stripe_sdk.RequestsClient()
    try:
        yield stripe_sdk.StripeClient(
            STRIPE_KEY, base_addresses={"api": stripe.url}, http_client=http_client
        )
    finally:
        http_client.close()


class Shop:
    """A merchant with a connected Stripe account, selling through the API."""

    def __init__(self, web: Any, stripe: StripeServer) -> None:
        self.web, self.stripe = web, stripe
        self.account = "acct_" + secrets.token_hex(8)
        merchant, key = create_merchant(web, stripe_account=self.account)
        self.merchant_id, self.headers = merchant["id"], bearer(key)
        self.conversation = web.post(
            "/v1/conversations",
            json={
                "channel": "messenger",
                "thread_id": "t_" + secrets.token_hex(5),
                "customer_user_id": digits(16),
            },
            headers=self.headers,
        ).json

    def sale(self, amount: int) -> tuple[str, str]:
        """A checkout the customer pays at Stripe: (sale id, PaymentIntent id)."""
        offer = self.web.post(
            f"/v1/conversations/{self.conversation['id']}/offers",
            json={"title": "Cold brew", "amount": amount, "currency": "USD"},
            headers=self.headers,
        ).json
        paid = self.web.post(f"/v1/offers/{offer['id']}/checkout", headers=self.headers).json
        intent_id = paid["payment"]["payment_intent_id"]
        self.stripe.succeed(intent_id)
        return paid["sale"]["id"], intent_id

    def deliver(self, *types: str, about: str | None = None) -> list[dict[str, Any]]:
        """Deliver, signed, Stripe's events of these types (about one object, if given)."""
        sent = []
        for event in self.stripe.events:
            obj = event["data"]["object"]
            if event["type"] in types and about in (None, obj["id"], obj.get("payment_intent")):
                deliver(self.web, event)
                sent.append(event)
        return sent

    def state(self, sale_id: str) -> str:
        return self.web.get(f"/v1/sales/{sale_id}", headers=self.headers).json["state"]


def deliver(web: Any, event: dict[str, Any]) -> None:
    body = body_of(event)
    answer = web.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
    assert answer.status_code == 200, answer.json


def lines_of(committed, payout_id: str) -> list[PayoutLine]:
    with committed() as session:
        return list(session.scalars(select(PayoutLine).where(PayoutLine.payout_id == payout_id)))


def exceptions_of(committed, merchant_id: str) -> list[ReconciliationException]:
    """The merchant's payout exceptions (its sales have their own: a dispute is one)."""
    with committed() as session:
        return list(
            session.scalars(
                select(ReconciliationException).where(
                    ReconciliationException.merchant_id == merchant_id,
                    ReconciliationException.type == "payout_mismatch",
                )
            )
        )


def fetched_at(committed, payout_id: str):
    with committed() as session:
        payout = session.get(Payout, payout_id)
        return payout.lines_fetched_at if payout is not None else None


@pytest.mark.worker
def test_a_payout_whose_lines_tie_to_sales_and_add_up_is_explained_and_stored_once(
    web, committed, stripe, sdk, worker
):
    shop = Shop(web, stripe)
    kept, _ = shop.sale(2000)
    refunded, refunded_intent = shop.sale(1500)
    disputed, disputed_intent = shop.sale(1800)
    refund = sdk.v1.refunds.create(
        params={"payment_intent": refunded_intent, "amount": 500},
        options={"stripe_account": shop.account},
    )
    dispute = stripe.dispute(disputed_intent, amount=1800)
    shop.deliver("payment_intent.succeeded", "charge.succeeded", "refund.created")
    shop.deliver("charge.dispute.created")
    wait_for(lambda: shop.state(kept) == "paid")
    wait_for(lambda: shop.state(refunded) == "partially_refunded")
    wait_for(lambda: shop.state(disputed) == "disputed")

    payout = stripe.pay_out(account=shop.account, fees=[25])
    (paid,) = shop.deliver("payout.paid")
    first = wait_for(lambda: fetched_at(committed, payout["id"]))

    lines = {line.balance_transaction_id: line for line in lines_of(committed, payout["id"])}
    by_source = {line.source_id: line for line in lines.values()}
    charges = {stripe.get(stripe.get(i)["latest_charge"])["id"]: s for s, i in _intents(stripe)}
    assert len(lines) == 7  # three charges, a refund, a dispute, a fee and the payout itself
    assert {c: by_source[c].sale_id for c in charges} == charges
    assert by_source[refund.id].sale_id == refunded
    assert (by_source[refund.id].type, by_source[refund.id].net) == ("refund", -500)
    assert by_source[dispute["id"]].sale_id == disputed
    assert by_source[dispute["id"]].type == "adjustment"
    (fee,) = [line for line in lines.values() if line.type == "stripe_fee"]
    assert (fee.source_id, fee.sale_id, fee.net) == (None, None, -25)
    (own,) = [line for line in lines.values() if line.type == "payout"]
    assert own.net == -payout["amount"]
    assert sum(line.net for line in lines.values() if line.type != "payout") == payout["amount"]
    with committed() as session:
        row = session.get(Payout, payout["id"])
        assert (row.merchant_id, row.amount, row.currency) == (
            shop.merchant_id,
            payout["amount"],
            "USD",
        )
    assert exceptions_of(committed, shop.merchant_id) == []

    # payout.paid again, as a new event (Stripe resends; an operator replays): checked again,
    # stored once.
    deliver(web, {**paid, "id": "evt_" + secrets.token_hex(12)})
    wait_for(lambda: fetched_at(committed, payout["id"]) > first)
    assert len(lines_of(committed, payout["id"])) == 7
    assert exceptions_of(committed, shop.merchant_id) == []
    if shared_data_path(STRIPE_SPEC).exists():  # what chatledger sent, as Stripe reads it
        assert_allowed_by_spec(stripe.requests)


def _intents(stripe: StripeServer) -> list[tuple[str, str]]:
    """(sale id, PaymentIntent id) of every paid intent the server holds."""
    return [
        (pi["metadata"]["sale_id"], pi["id"])
        for pi in stripe.objects("payment_intent")
        if pi["status"] == "succeeded"
    ]


@pytest.mark.worker
def test_a_line_of_an_unknown_charge_and_a_net_that_differs_are_one_payout_mismatch(
    web, committed, stripe, sdk, worker
):
    shop = Shop(web, stripe)
    sale_id, _ = shop.sale(2000)
    shop.deliver("payment_intent.succeeded", "charge.succeeded")
    wait_for(lambda: shop.state(sale_id) == "paid")
    # A charge made at Stripe outside chatledger, on the same account.
    foreign = sdk.v1.payment_intents.create(
        params={"amount": 700, "currency": "usd"}, options={"stripe_account": shop.account}
    )
    stripe.succeed(foreign.id)
    foreign_txn = stripe.get(stripe.get(foreign.id)["latest_charge"])["balance_transaction"]
    lines_net = sum(
        stripe.get(stripe.get(pi["latest_charge"])["balance_transaction"])["net"]
        for pi in stripe.objects("payment_intent")
    )

    payout = stripe.pay_out(account=shop.account, amount=lines_net - 10)
    shop.deliver("payout.paid")
    (found,) = wait_for(lambda: exceptions_of(committed, shop.merchant_id))

    assert (found.type, found.subject_key, found.status) == (
        "payout_mismatch",
        f"payout:{payout['id']}",
        "open",
    )
    assert found.payout_id == payout["id"]
    assert found.sale_id is None
    assert found.fields == {
        "net": {"payout": lines_net - 10, "lines": lines_net},
        "unmatched_lines": [foreign_txn],
    }
    lines = lines_of(committed, payout["id"])
    assert {line.balance_transaction_id for line in lines if line.sale_id is None} == {
        foreign_txn,
        next(line.balance_transaction_id for line in lines if line.type == "payout"),
    }


@pytest.mark.worker
def test_a_payout_paid_before_its_sales_events_waits_for_them(web, committed, stripe, worker):
    shop = Shop(web, stripe)
    sale_id, intent_id = shop.sale(1200)
    payout = stripe.pay_out(account=shop.account)
    shop.deliver("payout.paid")
    # The task finds the charge's sale but not its payment event yet: it tries again later.
    wait_for(lambda: fetched_at(committed, payout["id"]))
    (charge_line,) = [line for line in lines_of(committed, payout["id"]) if line.type == "charge"]
    assert charge_line.sale_id is None
    assert exceptions_of(committed, shop.merchant_id) == []

    shop.deliver("payment_intent.succeeded", "charge.succeeded", about=intent_id)
    wait_for(
        lambda: (
            [line.sale_id for line in lines_of(committed, payout["id"]) if line.type == "charge"]
            == [sale_id]
        )
    )
    assert exceptions_of(committed, shop.merchant_id) == []


def test_a_mismatch_checked_again_once_its_sale_is_known_is_resolved(app, web, committed, stripe):
    """The last try records what is unexplained; the payout checked after the sale's events
    arrived resolves it, and found again it opens again."""
    shop = Shop(web, stripe)
    sale_id, intent_id = shop.sale(1200)
    payout = stripe.pay_out(account=shop.account)
    with transaction(committed) as session:
        session.add(
            Payout(
                id=payout["id"],
                stripe_account=shop.account,
                amount=payout["amount"],
                currency="USD",
                status="paid",
            )
        )
        outbound.create_endpoint(
            session,
            merchant_id=shop.merchant_id,
            url="http://127.0.0.1:9/hooks",
            event_types=["reconciliation.exception"],
            policy=AddressPolicy(allow=frozenset({("127.0.0.1", 9)})),
        )
    listed = payouts.list_balance_transactions(payout["id"], connected_account=shop.account)

    def announced() -> list[dict[str, Any]]:
        with committed() as session:
            return [
                e.payload["data"]
                for e in session.scalars(
                    select(OutboundEvent)
                    .where(OutboundEvent.merchant_id == shop.merchant_id)
                    .order_by(OutboundEvent.created_at)
                )
            ]

    with transaction(committed) as session:
        check = payouts.record_lines(session, payout["id"], listed, final=False)
    assert (check.status, check.waiting) == ("waiting", check.unmatched)
    assert announced() == []
    with transaction(committed) as session:
        check = payouts.record_lines(session, payout["id"], listed, final=True)
    assert check.status == "open"
    (found,) = exceptions_of(committed, shop.merchant_id)
    assert found.fields == {"unmatched_lines": check.unmatched}
    (opened,) = announced()
    assert (opened["id"], opened["type"], opened["status"]) == (found.id, "payout_mismatch", "open")
    assert opened["subject_key"] == f"payout:{payout['id']}"

    with transaction(committed) as session:
        session.get(ReconciliationException, found.id).status = "acknowledged"
    with transaction(committed) as session:
        assert payouts.record_lines(session, payout["id"], listed, final=True).status == "open"
    (still,) = exceptions_of(committed, shop.merchant_id)
    assert still.status == "acknowledged"  # until it is resolved

    for event in shop.stripe.events:
        if event["type"] == "payment_intent.succeeded" and event["data"]["object"]["id"] == (
            intent_id
        ):
            with transaction(committed) as session:
                stored = accept_stripe_event(session.connection(), event, event["type"], headers={})
            assert inbox.process(committed, stored.id) == "processed"
    # The sweep finds the payout whose line is explained since its last check...
    with committed() as session:
        assert payout["id"] in payouts.payouts_explained_since(session)
    with transaction(committed) as session:
        check = payouts.record_lines(session, payout["id"], listed, final=True)
    assert check.status == "resolved"
    with committed() as session:  # ...and, checked, no longer.
        assert payout["id"] not in payouts.payouts_explained_since(session)
    (resolved,) = exceptions_of(committed, shop.merchant_id)
    assert (resolved.status, resolved.resolved_at is not None) == ("resolved", True)
    with committed() as session:
        assert session.get(Sale, sale_id).state == "paid"
        (line,) = [line for line in lines_of(committed, payout["id"]) if line.type == "charge"]
        assert line.sale_id == sale_id

    # Found again after it was resolved (the payout's amount corrected at Stripe): open again.
    with transaction(committed) as session:
        session.get(Payout, payout["id"]).amount += 1
    with transaction(committed) as session:
        assert payouts.record_lines(session, payout["id"], listed, final=True).status == "open"
    (again,) = exceptions_of(committed, shop.merchant_id)
    assert (again.id, again.status, again.resolved_at) == (found.id, "open", None)
    # Announced when it opened and when it opened again; never when acknowledged or resolved.
    assert [(e["id"], e["status"]) for e in announced()] == [(found.id, "open")] * 2
    assert again.fields == {"net": {"payout": payout["amount"] + 1, "lines": payout["amount"]}}


@pytest.mark.worker
def test_stripe_failing_to_list_the_lines_is_tried_again_later(web, committed, stripe, worker):
    shop = Shop(web, stripe)
    sale_id, _ = shop.sale(900)
    shop.deliver("payment_intent.succeeded", "charge.succeeded")
    wait_for(lambda: shop.state(sale_id) == "paid")
    payout = stripe.pay_out(account=shop.account)
    # More failures than the SDK's own two retries: the task's retry, later, gets the lines.
    stripe.fail_next(3, status=500, path_prefix="/v1/balance_transactions")
    shop.deliver("payout.paid")
    wait_for(lambda: fetched_at(committed, payout["id"]))
    listing = [r for r in stripe.requests if r.path == "/v1/balance_transactions"]
    assert [r.status for r in listing] == [500, 500, 500, 200]
    assert [
        line.sale_id for line in lines_of(committed, payout["id"]) if line.type == "charge"
    ] == [sale_id]
    assert exceptions_of(committed, shop.merchant_id) == []
