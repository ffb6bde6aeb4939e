"""Races: many taps on one offer make one sale; concurrent refunds never exceed the payment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import open_shop


@pytest.fixture
def web(app, committed):
    return app.test_client()


def _parallel(count, call):
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def test_twenty_simultaneous_checkouts_make_one_sale(app, web, stripe):
    shop = open_shop(web)

    def tap():
        return app.test_client().post(
            f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers
        )

    answers = _parallel(20, tap)
    assert sorted(a.status_code for a in answers) == [200] * 19 + [201]
    assert len({a.json["sale"]["id"] for a in answers}) == 1
    assert len({a.json["payment"]["payment_intent_id"] for a in answers}) == 1
    assert len(stripe.objects("payment_intent")) == 1
    listed = web.get("/v1/sales", headers=shop.headers).json["data"]
    assert len(listed) == 1


def test_simultaneous_refunds_never_exceed_the_payment(app, web, stripe):
    shop = open_shop(web, amount=1000)
    checkout = web.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    stripe.succeed(checkout["payment"]["payment_intent_id"])
    sale_id = checkout["sale"]["id"]
    assert web.post(f"/v1/sales/{sale_id}/sync", headers=shop.headers).json["state"] == "paid"

    def refund():
        return app.test_client().post(
            f"/v1/sales/{sale_id}/refunds", json={"amount": 300}, headers=shop.headers
        )

    answers = _parallel(8, refund)
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code != 202]
    # 3 x 300 fit in 1000; a 4th would not.
    assert len(accepted) == 3
    assert {a.status_code for a in refused} <= {400, 409}
    sale = web.get(f"/v1/sales/{sale_id}", headers=shop.headers).json
    assert sum(r["amount"] for r in sale["refunds"]) == 900
