"""Off-platform attribution in the merchant's attribution report: aggregates only, and a
cell of fewer than k cardholders is suppressed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from commerce.access.services import issue_key
from commerce.attribution import engine
from commerce.offers.services import record_touchpoint
from commerce.reconciliation import engine as reconciliation
from commerce.reconciliation.engine import Scope
from tests.alerts.helpers import consent
from tests.factories import ConversationFactory, CustomerFactory, OfferFactory
from tests.helpers import bearer
from tests.reconciliation.scenario import open_shop

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


def test_the_report_shows_off_platform_revenue_only_above_k_cardholders(db, client):
    shop = open_shop(db, client)
    headers = bearer(issue_key(db, role="merchant", merchant_id=shop.merchant_id)[1])
    an_offer = None
    holders = []
    for n in range(1, 7):
        ref, psid = f"cust_{n}", f"psid_{n}"
        if n > 1:
            consent(
                client,
                {"id": shop.partner_id},
                ref,
                psid=psid,
                scopes=("transactions",),
                purposes=("sales_attribution",),
            )
        customer = CustomerFactory(channel="messenger", channel_user_id=psid)
        conversation = ConversationFactory(merchant_id=shop.merchant_id, customer_id=customer.id)
        offer = OfferFactory(conversation=conversation, merchant_id=shop.merchant_id)
        db.flush()
        an_offer = an_offer or offer
        record_touchpoint(
            db,
            merchant_id=shop.merchant_id,
            offer_id=offer.id,
            kind="clicked",
            occurred_at=NOW - timedelta(hours=1),
        )
        shop.card("authorized", 1000, at=NOW, customer_ref=ref, last4=f"{n:04d}")
        holders.append((shop.partner_id, ref))

    def off_platform():
        reconciliation.reconcile(db, Scope.period(NOW - timedelta(days=1), NOW + timedelta(days=1)))
        engine.attribute(db, holders)
        answer = client.get("/v1/reports/attribution", headers=headers)
        assert answer.status_code == 200, answer.json
        return answer.json["off_platform"]

    report = off_platform()
    assert report["available"] is True
    # Six cardholders, one offer each: every offer's cell is suppressed (1 < 5) ...
    assert report["rows"]
    assert all(row["suppressed"] and row["revenue"] is None for row in report["rows"])
    # ... while the merchant's total over six cardholders is shown.
    (usd,) = report["totals"]["by_currency"]
    assert (usd["currency"], usd["revenue"], usd["suppressed"]) == ("USD", 6000, False)


def test_the_report_credits_under_the_model_asked_for(db, client):
    from commerce.attribution import reports

    shop = open_shop(db, client)
    customer = CustomerFactory(channel="messenger", channel_user_id="psid_1")
    conversation = ConversationFactory(merchant_id=shop.merchant_id, customer_id=customer.id)
    first = OfferFactory(conversation=conversation, merchant_id=shop.merchant_id)
    last = OfferFactory(conversation=conversation, merchant_id=shop.merchant_id)
    db.flush()
    for an_offer, hours in ((first, 5), (last, 1)):
        record_touchpoint(
            db,
            merchant_id=shop.merchant_id,
            offer_id=an_offer.id,
            kind="clicked",
            occurred_at=NOW - timedelta(hours=hours),
        )
    shop.card("authorized", 1001, at=NOW)
    reconciliation.reconcile(db, Scope.period(NOW - timedelta(days=1), NOW + timedelta(days=1)))
    engine.attribute(db, [(shop.partner_id, "cust_1")])

    def credited(model):
        rows = reports.attributed_purchases(
            db, shop.merchant_id, NOW - timedelta(days=1), NOW + timedelta(days=1), model
        )
        return sorted((p.offer_id, p.amount) for p in rows)

    assert credited("last_touch") == [(last.id, 1001)]
    assert credited("first_touch") == [(first.id, 1001)]
    assert credited("linear") == sorted([(first.id, 500), (last.id, 501)])
    headers = bearer(issue_key(db, role="merchant", merchant_id=shop.merchant_id)[1])
    answer = client.get("/v1/reports/attribution?model=linear", headers=headers)
    assert answer.status_code == 200, answer.json
    assert client.get("/v1/reports/attribution?model=best", headers=headers).status_code in (
        400,
        422,
    )
