"""Reconciliation through the API: a sale's status and matches, exceptions as JSON and CSV,
acknowledging, tolerances, and a batch run by the worker; another merchant sees none of it."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from commerce.access.services import issue_key
from commerce.reconciliation import engine
from commerce.reconciliation.engine import Scope
from tests.helpers import bearer
from tests.reconciliation.scenario import T0, open_shop

AS_OF = T0 + timedelta(days=1)


@pytest.fixture
def shop(db, client):
    shop = open_shop(db, client)
    shop.key_secret = issue_key(db, role="merchant", merchant_id=shop.merchant_id)[1]
    return shop


def reconcile(shop):
    engine.reconcile(
        shop.db,
        Scope.period(T0 - timedelta(days=3), T0 + timedelta(days=3), as_of=AS_OF),
    )


def test_a_sale_shows_its_status_matches_and_exceptions(shop, client):
    good = shop.sale(1250, charges=("ch_good",))
    txn = shop.card("authorized", 1250)
    tipped = shop.sale(800, last4="1111", at=T0 + timedelta(hours=1))
    tipped_txn = shop.card("authorized", 800, last4="1111", at=T0 + timedelta(hours=1))
    shop.card("cleared", 950, txn=tipped_txn, last4="1111")
    reconcile(shop)
    headers = bearer(shop.key_secret)

    answer = client.get(f"/v1/sales/{good.id}", headers=headers).json
    assert answer["attribution"] == {
        "channel": "in_chat",
        "offer_id": good.offer_id,
        "conversation_id": good.conversation_id,
    }
    body = answer["reconciliation"]
    assert body["status"] == "reconciled"
    assert body["exceptions"] == []
    assert {(m["kind"], m["source_key"], m["rule"]) for m in body["matches"]} == {
        ("stripe_charge", "ch_good", "payment_intent"),
        ("card_purchase", shop.key(txn), "card_exact"),
    }
    card = next(m for m in body["matches"] if m["kind"] == "card_purchase")
    assert card["confidence"] == 0.95
    assert card["fields"]["amount"] == {"sale": 1250, "card": 1250}

    body = client.get(f"/v1/sales/{tipped.id}", headers=headers).json["reconciliation"]
    assert body["status"] == "exceptions"
    assert [(e["type"], e["fields"]["amount"]) for e in body["exceptions"]] == [
        ("amount_mismatch", {"sale": 800, "card": 950})
    ]


def test_exceptions_filter_page_and_export_as_csv(shop, client):
    for i in range(3):
        shop.card("authorized", 100 + i, at=T0 + timedelta(hours=i))
    unpaid = shop.sale(1250, charges=(), last4=None)
    shop.sale(1250, charges=("ch_a", "ch_b"), last4=None)
    reconcile(shop)
    headers = bearer(shop.key_secret)
    assert client.get(f"/v1/sales/{unpaid.id}", headers=headers).json["attribution"] is None

    first = client.get(
        "/v1/reconciliation/exceptions?type=orphan_transaction&limit=2", headers=headers
    ).json
    assert [e["type"] for e in first["data"]] == ["orphan_transaction"] * 2
    rest = client.get(
        "/v1/reconciliation/exceptions?type=orphan_transaction&limit=2&cursor="
        + first["next_cursor"],
        headers=headers,
    ).json
    assert len(rest["data"]) == 1
    assert rest["next_cursor"] is None
    amounts = sorted(e["fields"]["amount"] for e in first["data"] + rest["data"])
    assert amounts == [100, 101, 102]

    window = client.get(
        "/v1/reconciliation/exceptions",
        query_string={
            "from": (T0 + timedelta(minutes=30)).isoformat(),
            "type": "orphan_transaction",
        },
        headers=headers,
    ).json
    assert sorted(e["fields"]["amount"] for e in window["data"]) == [101, 102]

    answer = client.get("/v1/reconciliation/exceptions", headers={**headers, "Accept": "text/csv"})
    assert answer.status_code == 200
    assert answer.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert sorted(r["type"] for r in rows) == ["duplicate_charge"] + ["orphan_transaction"] * 3
    assert all(r["status"] == "open" for r in rows)

    bad = client.get("/v1/reconciliation/exceptions?type=nonsense", headers=headers)
    assert bad.status_code in (400, 422)


def test_acknowledging_keeps_the_note_until_events_explain_it(shop, client):
    txn = shop.card("authorized", 990, at=T0 + timedelta(hours=3))
    reconcile(shop)
    headers = bearer(shop.key_secret)
    (exception,) = client.get("/v1/reconciliation/exceptions", headers=headers).json["data"]
    answer = client.post(
        f"/v1/reconciliation/exceptions/{exception['id']}/acknowledge",
        json={"note": "walk-in customer"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "acknowledged"
    assert answer.json["note"] == "walk-in customer"
    reconcile(shop)
    again = client.get(f"/v1/reconciliation/exceptions/{exception['id']}", headers=headers).json
    assert again["status"] == "acknowledged"

    shop.sale(990, at=T0 + timedelta(hours=3, minutes=-1))
    reconcile(shop)
    done = client.get(f"/v1/reconciliation/exceptions/{exception['id']}", headers=headers).json
    assert done["status"] == "resolved"
    assert done["note"] == "walk-in customer"
    late = client.post(
        f"/v1/reconciliation/exceptions/{exception['id']}/acknowledge",
        json={"note": "again"},
        headers=headers,
    )
    assert late.status_code == 409
    assert txn


def test_tolerances_are_the_merchants_own_and_validated(shop, client):
    headers = bearer(shop.key_secret)
    assert client.get("/v1/reconciliation/settings", headers=headers).json == {
        "amount_tolerance": 0,
        "time_window_seconds": 86400,
        "clearing_days": 7,
    }
    answer = client.put(
        "/v1/reconciliation/settings", json={"amount_tolerance": 25}, headers=headers
    )
    assert answer.json == {"amount_tolerance": 25, "time_window_seconds": 86400, "clearing_days": 7}
    bad = client.put("/v1/reconciliation/settings", json={"clearing_days": 0}, headers=headers)
    assert bad.status_code in (400, 422)
    assert client.get("/v1/reconciliation/settings", headers=headers).json["clearing_days"] == 7


def test_another_merchant_sees_none_of_it(shop, client, db):
    from tests.factories import MerchantFactory

    shop.card("authorized", 990)
    reconcile(shop)
    other = MerchantFactory()
    db.flush()
    headers = bearer(issue_key(db, role="merchant", merchant_id=other.id)[1])
    assert client.get("/v1/reconciliation/exceptions", headers=headers).json["data"] == []
    mine = client.get("/v1/reconciliation/exceptions", headers=bearer(shop.key_secret)).json
    exception_id = mine["data"][0]["id"]
    assert (
        client.get(f"/v1/reconciliation/exceptions/{exception_id}", headers=headers).status_code
        == 404
    )
    answer = client.post(
        f"/v1/reconciliation/exceptions/{exception_id}/acknowledge",
        json={"note": "x"},
        headers=headers,
    )
    assert answer.status_code == 404


def test_the_operator_reads_every_merchants_exceptions_and_runs_them_all(shop, client, db):
    from tests.helpers import OPERATOR

    shop.card("authorized", 990)
    reconcile(shop)
    everything = client.get("/v1/reconciliation/exceptions", headers=OPERATOR).json["data"]
    assert shop.merchant_id in {e["merchant_id"] for e in everything}
    mine = client.get(
        "/v1/reconciliation/exceptions",
        query_string={"merchant_id": shop.merchant_id},
        headers=OPERATOR,
    ).json["data"]
    assert {e["merchant_id"] for e in mine} == {shop.merchant_id}
    one = client.get(f"/v1/reconciliation/exceptions/{mine[0]['id']}", headers=OPERATOR)
    assert one.status_code == 200

    all_merchants = client.post(
        "/v1/reconciliation/runs",
        json={"from": "2026-09-01T00:00:00Z", "to": "2026-10-01T00:00:00Z"},
        headers=OPERATOR,
    )
    assert all_merchants.status_code == 202, all_merchants.json
    assert all_merchants.json["merchant_id"] is None
    unknown = client.post(
        "/v1/reconciliation/runs",
        json={"from": "2026-09-01T00:00:00Z", "to": "2026-10-01T00:00:00Z", "merchant_id": "mer_x"},
        headers=OPERATOR,
    )
    assert unknown.status_code == 404
    # A merchant's key runs its own; naming a merchant is the operator's alone.
    period = {"from": "2026-09-01T00:00:00Z", "to": "2026-10-01T00:00:00Z"}
    named = client.post(
        "/v1/reconciliation/runs",
        json={**period, "merchant_id": shop.merchant_id},
        headers=bearer(shop.key_secret),
    )
    assert named.status_code == 400
    assert "merchant_id" in named.json["errors"]
    own = client.post("/v1/reconciliation/runs", json=period, headers=bearer(shop.key_secret))
    assert own.status_code == 202
    assert own.json["merchant_id"] == shop.merchant_id
    assert (
        client.post(
            f"/v1/reconciliation/exceptions/{mine[0]['id']}/acknowledge",
            json={"note": "operator"},
            headers=OPERATOR,
        ).status_code
        == 403
    )
