"""Tenant isolation and roles (SPEC section 5; issue 2, "Done when").

A merchant reaching another merchant's object gets 404, exactly as for an id that
does not exist: same status, same headers, same body. The sweep derives the routes
from the application's URL map, so a route added later without a tenant check fails
here without anyone remembering to add it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from commerce.ids import new_id
from commerce.models import metadata
from tests.helpers import OPERATOR, Shop, digits, open_shop
from tests.support.stripe_server import StripeServer

PROBLEM_JSON = "application/problem+json"

#: Converter name in a /v1 rule -> the kind of object it names (commerce.ids.PREFIXES).
CONVERTER_KINDS = {
    "conversation_id": "conversation",
    "offer_id": "offer",
    "sale_id": "sale",
    "endpoint_id": "webhook_endpoint",
    "delivery_id": "webhook_delivery",
}

#: Routes only the operator may call, from SPEC section 8: everything under these
#: prefixes, and these single routes. Every other /v1 route is a merchant route.
OPERATOR_PREFIXES = (
    "/v1/merchants",
    "/v1/partners",
    "/v1/customers",
    "/v1/audit-log",
    "/v1/deletion-receipts",
)
OPERATOR_ROUTES = {("POST", "/v1/reconciliation/runs")}

#: Headers that may legitimately differ between two answers (none are sent today).
PER_REQUEST_HEADERS = {"date", "x-request-id"}


def _offer_body() -> dict[str, Any]:
    return {"title": "Oat milk latte", "amount": 650, "currency": "USD"}


def _merchant_body() -> dict[str, Any]:
    return {
        "name": "Intruder Coffee",
        "mids": [digits(15)],
        "chat_pages": [{"channel": "messenger", "page_id": digits(12)}],
    }


#: A valid body for each POST, by the end of its rule, so that the answer is about the
#: id or the key and never about a missing field.
POST_BODIES = {
    "/v1/merchants": _merchant_body,
    "/v1/conversations": lambda: {
        "channel": "messenger",
        "thread_id": "t_" + digits(12),
        "customer_user_id": digits(16),
    },
    "/offers": _offer_body,
    "/touchpoints": lambda: {"kind": "clicked"},
    "/refunds": lambda: {"amount": 100},
    "/checkout": lambda: None,
    "/sync": lambda: None,
    "/deliveries/redeliver": lambda: {"status": "delivered"},
    "/redeliver": lambda: None,
    "/secrets": lambda: None,
}


@dataclass(frozen=True)
class Route:
    method: str
    rule: str
    arguments: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.rule}"

    def path(self, ids: dict[str, str]) -> str:
        return re.sub(r"<(?:[^>:]+:)?([^>]+)>", lambda m: ids[m.group(1)], self.rule)

    @property
    def operator(self) -> bool:
        return (
            self.rule.startswith(OPERATOR_PREFIXES) or (self.method, self.rule) in OPERATOR_ROUTES
        )

    def body(self, *, strict: bool = True) -> dict[str, Any] | None:
        """A valid body for the route. Without `strict`, an unknown route gets `{}`: enough
        where the answer must come from the key, which is checked before the body."""
        if self.method not in ("POST", "PUT", "PATCH"):
            return None
        for suffix, make in POST_BODIES.items():
            if self.rule.endswith(suffix):
                return make()
        if not strict:
            return {}
        pytest.fail(f"{self}: no valid body known; add one to POST_BODIES in {__name__}")

    def ids(self, known: dict[str, str]) -> dict[str, str]:
        """`known` ids, and a placeholder for any other converter (for the key checks)."""
        return {name: known.get(name, "zzz_" + "0" * 22) for name in self.arguments}


def v1_routes(app: Flask) -> list[Route]:
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append(Route(method, rule.rule, tuple(sorted(rule.arguments))))
    return sorted(routes, key=str)


def id_routes(app: Flask) -> list[Route]:
    """Every merchant route that takes an id; an unknown converter name fails loudly."""
    routes = [r for r in v1_routes(app) if r.arguments and not r.operator]
    unknown = {
        (str(r), name) for r in routes for name in r.arguments if name not in CONVERTER_KINDS
    }
    if unknown:
        pytest.fail(
            "routes with an id converter this test does not know; map each converter name to "
            "merchant B's object in CONVERTER_KINDS (or, for an operator route, list it in "
            f"OPERATOR_PREFIXES or OPERATOR_ROUTES): {sorted(unknown)}"
        )
    return routes


def row_counts(db: Session) -> dict[str, int]:
    # The audit log records every operator request, replays and refusals included.
    return {
        table.name: db.scalar(select(func.count()).select_from(table))
        for table in metadata.sorted_tables
        if table.name != "audit_log"
    }


def call(
    client: FlaskClient,
    route: Route,
    ids: dict[str, str],
    headers: dict[str, str],
    *,
    strict: bool = True,
) -> TestResponse:
    kwargs: dict[str, Any] = {"headers": headers}
    body = route.body(strict=strict)
    if body is not None:
        kwargs["json"] = body
    return client.open(route.path(ids), method=route.method, **kwargs)


def comparable(response: TestResponse) -> tuple[int, dict[str, str], bytes]:
    headers = {
        k.lower(): v for k, v in response.headers.items() if k.lower() not in PER_REQUEST_HEADERS
    }
    return response.status_code, headers, response.get_data()


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    text = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, text[:300])
    assert response.mimetype == PROBLEM_JSON, response.mimetype
    body = json.loads(text)
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert "Traceback" not in text
    return body


@dataclass
class Tenant:
    shop: Shop
    sale: dict[str, Any]
    endpoint_id: str
    delivery_id: str

    @property
    def ids(self) -> dict[str, str]:
        return {
            "conversation_id": self.shop.conversation["id"],
            "offer_id": self.shop.offer["id"],
            "sale_id": self.sale["id"],
            "endpoint_id": self.endpoint_id,
            "delivery_id": self.delivery_id,
        }


def paid_tenant(client: FlaskClient, stripe: StripeServer) -> Tenant:
    """A merchant with a conversation, an offer, a webhook endpoint and a paid sale (so a
    delivery to the endpoint), made through the API."""
    shop = open_shop(client)
    endpoint = client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.216.34/hooks", "event_types": ["sale.paid"]},
        headers=shop.headers,
    )
    assert endpoint.status_code == 201, endpoint.json
    checkout = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    assert checkout.status_code == 201, checkout.json
    sale = checkout.json["sale"]
    stripe.succeed(sale["payment_intent_id"])
    synced = client.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers)
    assert synced.status_code == 200, synced.json
    assert synced.json["state"] == "paid", synced.json
    deliveries = client.get(
        f"/v1/webhook-endpoints/{endpoint.json['id']}/deliveries", headers=shop.headers
    )
    (delivery,) = deliveries.json["data"]
    return Tenant(shop, synced.json, endpoint.json["id"], delivery["id"])


@pytest.fixture
def tenants(client: FlaskClient, db: Session, stripe: StripeServer) -> tuple[Tenant, Tenant]:
    return paid_tenant(client, stripe), paid_tenant(client, stripe)


def test_the_sweep_covers_the_known_id_routes(app: Flask) -> None:
    """Guard against a sweep that silently finds nothing."""
    found = {str(r) for r in id_routes(app)}
    expected = {
        "GET /v1/conversations/<conversation_id>",
        "POST /v1/conversations/<conversation_id>/offers",
        "GET /v1/offers/<offer_id>",
        "POST /v1/offers/<offer_id>/touchpoints",
        "POST /v1/offers/<offer_id>/checkout",
        "GET /v1/sales/<sale_id>",
        "POST /v1/sales/<sale_id>/refunds",
        "POST /v1/sales/<sale_id>/sync",
    }
    assert expected <= found, expected - found


def test_another_merchants_ids_answer_exactly_like_ids_that_do_not_exist(
    app: Flask,
    client: FlaskClient,
    db: Session,
    stripe: StripeServer,
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    routes = id_routes(app)
    before = row_counts(db)
    stripe_calls = len(stripe.requests)
    failures = []
    for route in routes:
        random_ids = {name: new_id(CONVERTER_KINDS[name]) for name in route.arguments}
        assert all(random_ids[n] != b.ids[n] for n in route.arguments)
        theirs = call(client, route, b.ids, a.shop.headers)
        nowhere = call(client, route, random_ids, a.shop.headers)
        try:
            assert_problem(nowhere, 404)
            assert_problem(theirs, 404)
            assert comparable(theirs) == comparable(nowhere), (
                comparable(theirs),
                comparable(nowhere),
            )
        except AssertionError as exc:
            failures.append(f"{route}: {exc}")
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before, "reaching for another merchant's objects changed data"
    assert len(stripe.requests) == stripe_calls, "another merchant's id reached Stripe"

    # B's objects are as B left them.
    sale = client.get(f"/v1/sales/{b.sale['id']}", headers=b.shop.headers)
    assert sale.status_code == 200
    assert sale.json["state"] == "paid"
    assert sale.json["amount_refunded"] == 0
    assert sale.json["refunds"] == []


def test_the_same_routes_work_with_ones_own_ids(
    app: Flask, client: FlaskClient, tenants: tuple[Tenant, Tenant]
) -> None:
    """Control for the sweep: the 404s above come from ownership, not broken routes."""
    a, _ = tenants
    failures = []
    for route in id_routes(app):
        response = call(client, route, a.ids, a.shop.headers)
        if not 200 <= response.status_code < 300:
            failures.append(
                f"{route}: {response.status_code} {response.get_data(as_text=True)[:200]}"
            )
    assert not failures, "\n".join(failures)


def test_a_merchant_never_lists_another_merchants_sales(
    client: FlaskClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    # A second sale for each (left pending payment), so that paging and filters matter.
    a_pending = pending_sale(client, a.shop)["id"]
    b_pending = pending_sale(client, b.shop)["id"]
    a_paid, b_paid = a.sale["id"], b.sale["id"]

    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"limit": 1}, {a_paid, a_pending}),
        ({"limit": 100}, {a_paid, a_pending}),
        ({"limit": 1, "state": "paid"}, {a_paid}),
        ({"state": "pending_payment"}, {a_pending}),
    ]
    for query, expected in cases:
        seen: list[str] = []
        cursor = None
        for _ in range(50):
            params = {**query, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/sales", query_string=params, headers=a.shop.headers)
            assert page.status_code == 200, page.json
            seen.extend(s["id"] for s in page.json["data"])
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
        else:
            pytest.fail("paging did not end")
        assert len(set(seen)) == len(seen), f"a sale was listed twice: {seen}"
        assert b_paid not in seen, (query, seen)
        assert b_pending not in seen, (query, seen)
        assert set(seen) == expected, (query, seen, expected)


def pending_sale(client: FlaskClient, shop: Shop) -> dict[str, Any]:
    """Another offer in the shop's conversation, checked out (left pending payment)."""
    offer = client.post(
        f"/v1/conversations/{shop.conversation['id']}/offers",
        json=_offer_body(),
        headers=shop.headers,
    )
    assert offer.status_code == 201, offer.json
    checkout = client.post(f"/v1/offers/{offer.json['id']}/checkout", headers=shop.headers)
    assert checkout.status_code == 201, checkout.json
    return checkout.json["sale"]


def test_a_merchant_key_on_an_operator_route_is_403(
    app: Flask, client: FlaskClient, db: Session, tenants: tuple[Tenant, Tenant]
) -> None:
    a, _ = tenants
    routes = [r for r in v1_routes(app) if r.operator]
    assert "POST /v1/merchants" in {str(r) for r in routes}
    before = row_counts(db)
    failures = []
    for route in routes:
        response = call(client, route, route.ids(a.ids), a.shop.headers, strict=False)
        try:
            assert_problem(response, 403)
        except AssertionError as exc:
            failures.append(f"{route}: {exc}")
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before


def test_an_operator_key_on_merchant_routes_is_403(
    app: Flask,
    client: FlaskClient,
    db: Session,
    stripe: StripeServer,
    tenants: tuple[Tenant, Tenant],
) -> None:
    """Every /v1 route that is not an operator route refuses the operator's key."""
    a, _ = tenants
    before = row_counts(db)
    stripe_calls = len(stripe.requests)
    failures = []
    for route in v1_routes(app):
        if route.operator:
            continue
        try:
            assert_problem(call(client, route, route.ids(a.ids), OPERATOR, strict=False), 403)
        except AssertionError as exc:
            failures.append(f"{route}: {exc}")
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before
    assert len(stripe.requests) == stripe_calls


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="bearer-without-key"),
        pytest.param("Bearer   ", id="bearer-blank"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Bearer ck_mer_" + "x" * 43, id="unknown-key"),
        pytest.param("Bearer ck_op_" + "x" * 43, id="unknown-operator-looking-key"),
    ],
)
def test_without_a_valid_key_every_v1_route_is_401(
    app: Flask,
    client: FlaskClient,
    db: Session,
    tenants: tuple[Tenant, Tenant],
    authorization: str | None,
) -> None:
    a, _ = tenants
    headers = {} if authorization is None else {"Authorization": authorization}
    before = row_counts(db)
    failures = []
    routes = v1_routes(app)
    assert len(routes) >= 10
    for route in routes:
        response = call(client, route, route.ids(a.ids), headers, strict=False)
        try:
            assert_problem(response, 401)
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), (
                response.headers
            )
        except AssertionError as exc:
            failures.append(f"{route}: {exc}")
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before


def test_a_merchant_key_is_not_another_merchants_key(
    client: FlaskClient, tenants: tuple[Tenant, Tenant]
) -> None:
    """Lists and creations are scoped by the key: B's conversation opened under A's key
    for the same thread is A's own, not B's."""
    a, b = tenants
    same_thread = {
        "channel": b.shop.conversation["channel"],
        "thread_id": b.shop.conversation["thread_id"],
        "customer_user_id": digits(16),
    }
    response = client.post("/v1/conversations", json=same_thread, headers=a.shop.headers)
    assert response.status_code == 201, response.json
    assert response.json["id"] != b.shop.conversation["id"]
    mine = client.get(f"/v1/conversations/{response.json['id']}", headers=a.shop.headers)
    assert mine.status_code == 200
    theirs = client.get(f"/v1/conversations/{response.json['id']}", headers=b.shop.headers)
    assert_problem(theirs, 404)
