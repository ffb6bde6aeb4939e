"""Cursor pagination of the sales list: complete, ordered, bounded, tenant-scoped."""

from __future__ import annotations

import pytest

from commerce.access.services import MERCHANT, issue_key
from tests.factories import ConversationFactory, MerchantFactory, SaleFactory, use_session
from tests.helpers import bearer


@pytest.fixture
def merchant_with_sales(db):
    use_session(db)
    merchant = MerchantFactory()
    other = MerchantFactory()
    conversation = ConversationFactory(merchant_id=merchant.id)
    sales = [SaleFactory(conversation=conversation) for _ in range(23)]
    # Three sales created in the same instant: the id breaks the tie.
    same_time = sales[0].created_at
    sales += [SaleFactory(conversation=conversation, created_at=same_time) for _ in range(3)]
    SaleFactory(conversation=ConversationFactory(merchant_id=other.id))
    SaleFactory(conversation=conversation, state="paid")
    _, key = issue_key(db, role=MERCHANT, merchant_id=merchant.id)
    db.flush()
    return merchant, key, len(sales) + 1


def test_pages_cover_every_sale_once_newest_first(client, merchant_with_sales):
    _, key, count = merchant_with_sales
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        response = client.get("/v1/sales", query_string=query, headers=bearer(key))
        assert response.status_code == 200
        pages += 1
        page = response.json
        assert len(page["data"]) <= 10
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == count
    assert len({s["id"] for s in seen}) == count
    keys = [(s["created_at"], s["id"]) for s in seen]
    assert keys == sorted(keys, reverse=True)


def test_filter_by_state(client, merchant_with_sales):
    _, key, _ = merchant_with_sales
    response = client.get("/v1/sales", query_string={"state": "paid"}, headers=bearer(key))
    assert [s["state"] for s in response.json["data"]] == ["paid"]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},
        {"state": "shipped"},
    ],
)
def test_bad_page_parameters_are_refused(client, merchant_with_sales, query):
    _, key, _ = merchant_with_sales
    response = client.get("/v1/sales", query_string=query, headers=bearer(key))
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert set(response.json["errors"]) == set(query)
