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
