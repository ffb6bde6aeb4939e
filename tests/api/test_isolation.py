"""Tenant isolation and roles (SPEC section 5; issue 2, "Done when"; issue 8, part 3).

The sweep walks every route of the application's URL map, so a route added later is swept
without anyone listing it here, and one without a tenant check fails here:

- merchant A's key with merchant B's ids in the path answers 404, exactly as for an id that
  does not exist: same status, same headers, same body (or 403 on an operator route);
- B's ids in the query string and in the body never bring B's objects into A's answer;
- A's lists, reports and dashboard show nothing of B's: no id, no thread, and not B's
  amount or currency, which A never uses;
- `test_the_sweep_catches_a_route_without_a_tenant_check` registers deliberately unscoped
  routes on a fresh app and shows that the sweep finds each of them.

A route outside /v1 must be named in `PUBLIC` (with why it takes no key) or be a dashboard
route; any other fails the sweep until someone says which it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Blueprint, Flask, request
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.auth import merchant_only
from app.config import Settings
from app.web import db as db_session
from commerce.errors import NotFound
from commerce.ids import new_id
from commerce.models import metadata
from commerce.reconciliation.models import ReconciliationException
from commerce.sales.models import Sale
from tests.conftest import create_test_app
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
    "exception_id": "reconciliation_exception",
    "run_id": "reconciliation_run",
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
OPERATOR_ROUTES: set[tuple[str, str]] = set()
#: Routes both serve (SPEC section 8: reconciliation is "merchant / operator"): a merchant's
#: key is swept like any merchant route; the operator's key is not refused.
SHARED_ROUTES: set[tuple[str, str]] = {
    ("GET", "/v1/reconciliation/exceptions"),
    ("GET", "/v1/reconciliation/exceptions/<exception_id>"),
    ("GET", "/v1/reconciliation/runs"),
    ("POST", "/v1/reconciliation/runs"),
    ("GET", "/v1/reconciliation/runs/<run_id>"),
}

#: Routes outside /v1 that take no API key, and why. Every other route outside /v1 must be
#: a dashboard route (a merchant's session, swept like a merchant's key).
PUBLIC = {
    "/healthz": "liveness, for load balancers",
    "/readyz": "readiness, for load balancers",
    "/metrics": "Prometheus, counts only",
    "/openapi.json": "the API's description",
    "/docs": "Swagger UI",
    "/docs/static/<path:filename>": "Swagger UI's files",
    "/static/<path:filename>": "Flask's static files",
    "/dashboard": "the sign-in page, or the signed-in merchant's own page",
    "/dashboard/sign-in": "exchanges a merchant's key for a session",
    "/dashboard/sign-out": "ends the session",
    "/dashboard/static/<path:filename>": "the dashboard's files",
    "/webhooks/stripe": "signed by Stripe",
    "/webhooks/partners/<partner_id>": "signed with the partner's secret",
    "/webhooks/chat/<channel>": "signed with the chat app's secret",
}
DASHBOARD_API = "/dashboard/api/"

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
    "/v1/webhook-endpoints": lambda: {
        "url": "https://93.184.216.34/hooks",
        "event_types": ["sale.paid"],
    },
    "/refunds": lambda: {"amount": 100},
    "/checkout": lambda: None,
    "/sync": lambda: None,
    "/deliveries/redeliver": lambda: {"status": "delivered"},
    "/redeliver": lambda: None,
    "/secrets": lambda: None,
    "/disable": lambda: None,
    "/enable": lambda: None,
    "/acknowledge": lambda: {"note": "Seen by the sweep."},
    "/v1/reconciliation/runs": lambda: {
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
    },
    "/v1/reconciliation/settings": lambda: {"amount_tolerance": 0},
    "/v1/attribution/settings": lambda: {"return_period_days": 30},
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
    run_id: str
    exception_id: str

    @property
    def ids(self) -> dict[str, str]:
        return {
            "conversation_id": self.shop.conversation["id"],
            "offer_id": self.shop.offer["id"],
            "sale_id": self.sale["id"],
            "endpoint_id": self.endpoint_id,
            "delivery_id": self.delivery_id,
            "run_id": self.run_id,
            "exception_id": self.exception_id,
        }

    @property
    def query_ids(self) -> dict[str, str]:
        """Every id of the tenant, under every name a route might read one by."""
        return {
            **self.ids,
            "merchant_id": self.shop.merchant["id"],
            "customer_id": self.sale["customer_id"],
            "payment_intent_id": self.sale["payment_intent_id"],
        }

    @property
    def markers(self) -> set[str]:
        """Strings that only this tenant's objects carry: its ids, its thread and customer,
        and its offer's amount and currency (chosen to be its alone, so a total or a
        per-currency row of a report that mixed tenants would show them)."""
        conversation = self.shop.conversation
        return {
            *self.query_ids.values(),
            conversation["thread_id"],
            str(self.shop.offer["amount"]),
            f'"{self.shop.offer["currency"]}"',
        }


def paid_tenant(
    client: FlaskClient,
    stripe: StripeServer,
    db: Session,
    *,
    amount: int = 1250,
    currency: str = "USD",
) -> Tenant:
    """A merchant with a conversation, an offer, a webhook endpoint and a paid sale (so a
    delivery to the endpoint), a reconciliation run, made through the API, and an open
    reconciliation exception about the sale (written directly: finding one takes card data
    and a batch run)."""
    shop = open_shop(client, amount=amount, currency=currency)
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
    run = client.post(
        "/v1/reconciliation/runs",
        json=POST_BODIES["/v1/reconciliation/runs"](),
        headers=shop.headers,
    )
    assert run.status_code == 202, run.json
    exception = ReconciliationException(
        id=new_id("reconciliation_exception"),
        merchant_id=shop.merchant["id"],
        type="missing_clearing",
        subject_key=f"sale:{sale['id']}",
        sale_id=sale["id"],
        fields={},
    )
    db.add(exception)
    db.flush()
    return Tenant(
        shop, synced.json, endpoint.json["id"], delivery["id"], run.json["id"], exception.id
    )


@pytest.fixture
def tenants(client: FlaskClient, db: Session, stripe: StripeServer) -> tuple[Tenant, Tenant]:
    """A and B; B's offer is 987651 ISK, an amount and a currency A never uses."""
    return (
        paid_tenant(client, stripe, db),
        paid_tenant(client, stripe, db, amount=987_651, currency="ISK"),
    )


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


def sweep_path_ids(app: Flask, client: FlaskClient, a: Tenant, b: Tenant) -> list[str]:
    """A's key with B's ids in the path of every merchant route: each answer must be the
    404 of an id that does not exist, byte for byte."""
    failures = []
    for route in id_routes(app):
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
    return failures


def leaked(response: TestResponse, b: Tenant) -> list[str]:
    text = response.get_data(as_text=True)
    return sorted(marker for marker in b.markers if marker in text)


def sweep_query_and_body(app: Flask, client: FlaskClient, a: Tenant, b: Tenant) -> list[str]:
    """Every merchant route, with A's key and A's own ids in the path, and B's ids in the
    query string (under every name an id goes by) and in every `*_id` field of the body.
    The answer is a refusal (400, 403, 404, or 409 for a repeat of A's own action) or an
    answer that shows nothing of B's."""
    failures = []
    for route in merchant_routes(app):
        # One id at a time: a route that refuses unknown parameters would refuse a bundle
        # before the one it reads ever reached its view.
        for name, value in [(None, None), *b.query_ids.items()]:
            body = route.body(strict=True)
            if isinstance(body, dict):
                body = {
                    k: b.query_ids.get(k, v) if k.endswith("_id") else v for k, v in body.items()
                }
            kwargs: dict[str, Any] = {"headers": a.shop.headers}
            if name is not None:
                kwargs["query_string"] = {name: value}
            if body is not None:
                kwargs["json"] = body
            response = client.open(route.path(route.ids(a.ids)), method=route.method, **kwargs)
            status, where = response.status_code, f"{route} ?{name}=<B's> and B's ids in the body"
            if status in (400, 403, 404, 409):
                continue
            if not 200 <= status < 300:
                failures.append(f"{where}: {status}")
            elif found := leaked(response, b):
                failures.append(f"{where} shows B's {found}")
    return failures


def sweep_lists(app: Flask, client: FlaskClient, a: Tenant, b: Tenant) -> list[str]:
    """Every merchant GET without an id in its path (lists, reports, settings) and every
    dashboard API route, as A, page by page: nothing of B's may appear."""
    failures = []
    pages: list[tuple[str, Any]] = [
        (str(route), lambda q, r=route: client.get(r.rule, query_string=q, headers=a.shop.headers))
        for route in merchant_routes(app)
        if route.method == "GET" and not route.arguments
    ]
    signed_in = dashboard_client(app, a.shop.key)
    for rule in dashboard_rules(app):
        for path in dashboard_paths(app, rule):
            pages.append((f"GET {path}", lambda q, p=path: signed_in.get(p, query_string=q)))
    for name, get in pages:
        query: dict[str, Any] = {}
        for _ in range(20):
            response = get(query)
            if response.status_code != 200:
                failures.append(f"{name}: {response.status_code} {response.get_data()[:200]!r}")
                break
            if found := leaked(response, b):
                failures.append(f"{name} shows B's {found}")
            cursor = (response.json or {}).get("next_cursor") if response.is_json else None
            if not cursor:
                break
            query = {"cursor": cursor}
    return failures


def merchant_routes(app: Flask) -> list[Route]:
    """Every /v1 route that is not the operator's; DELETEs last, so that the others still
    find what they delete."""
    routes = [r for r in v1_routes(app) if not r.operator]
    id_routes(app)  # fails on an id converter the sweep does not know
    return sorted(routes, key=lambda r: (r.method == "DELETE", str(r)))


def dashboard_rules(app: Flask) -> list[str]:
    """Routes outside /v1: the dashboard's API, after checking that every other is PUBLIC."""
    found, unknown = [], []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/") or rule.rule in PUBLIC:
            continue
        (found if rule.rule.startswith(DASHBOARD_API) else unknown).append(rule.rule)
    if unknown:
        pytest.fail(
            "routes outside /v1 that are neither PUBLIC (say why they take no key) nor "
            f"dashboard API routes (swept with a merchant's session): {sorted(unknown)}"
        )
    return sorted(found)


def dashboard_paths(app: Flask, rule: str) -> list[str]:
    """The paths of a dashboard rule: `<kind>` is each report the /v1 API has."""
    if "<kind>" not in rule:
        assert "<" not in rule, f"{rule}: a dashboard converter the sweep does not know"
        return [rule]
    kinds = sorted(
        r.rule.rsplit("/", 1)[1]
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/v1/reports/")
    )
    assert kinds, "the dashboard serves reports but /v1 has none"
    return [rule.replace("<kind>", kind) for kind in kinds]


def dashboard_client(app: Flask, key: str) -> FlaskClient:
    """A client of its own (its own cookies), signed in to the dashboard with the key."""
    signed_in = app.test_client()
    page = signed_in.get("/dashboard")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True))
    assert match, "no CSRF token on the sign-in page"
    answer = signed_in.post("/dashboard/sign-in", data={"csrf": match.group(1), "api_key": key})
    assert answer.status_code in (200, 302, 303), answer.status_code
    return signed_in


def test_another_merchants_ids_answer_exactly_like_ids_that_do_not_exist(
    app: Flask,
    client: FlaskClient,
    db: Session,
    stripe: StripeServer,
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    before = row_counts(db)
    stripe_calls = len(stripe.requests)
    failures = sweep_path_ids(app, client, a, b)
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before, "reaching for another merchant's objects changed data"
    assert len(stripe.requests) == stripe_calls, "another merchant's id reached Stripe"
    assert_untouched(client, b)


def assert_untouched(client: FlaskClient, b: Tenant) -> None:
    """B's objects are as B left them."""
    sale = client.get(f"/v1/sales/{b.sale['id']}", headers=b.shop.headers)
    assert sale.status_code == 200
    assert sale.json["state"] == "paid"
    assert sale.json["amount_refunded"] == 0
    assert sale.json["refunds"] == []
    endpoint = client.get(f"/v1/webhook-endpoints/{b.endpoint_id}", headers=b.shop.headers)
    assert endpoint.status_code == 200, endpoint.json
    assert endpoint.json["status"] == "enabled"
    exception = client.get(
        f"/v1/reconciliation/exceptions/{b.exception_id}", headers=b.shop.headers
    )
    assert exception.status_code == 200, exception.json
    assert exception.json.get("acknowledged_at") is None, exception.json


def test_another_merchants_ids_in_query_and_body_show_nothing_of_theirs(
    app: Flask, client: FlaskClient, stripe: StripeServer, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    failures = sweep_query_and_body(app, client, a, b)
    assert not failures, "\n".join(failures)
    assert_untouched(client, b)


def test_no_list_report_or_dashboard_shows_another_merchants_objects(
    app: Flask, client: FlaskClient, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    failures = sweep_lists(app, client, a, b)
    assert not failures, "\n".join(failures)
    # Control: the same sweep, as B, does see B's objects, so the markers are not blind.
    assert sweep_lists(app, client, b, b), "B's own lists show none of B's markers"


def test_the_sweep_catches_a_route_without_a_tenant_check(
    settings: Settings, client: FlaskClient, db: Session, tenants: tuple[Tenant, Tenant]
) -> None:
    """Routes added to a fresh app, each forgetting the tenant in one way, are each caught:
    by id in the path, by id in the query, and in a list."""
    a, b = tenants
    fresh = create_test_app(settings)
    leaky = Blueprint("leaky", __name__)

    def sale_view(sale_id: str) -> Any:
        sale = db_session().get(Sale, sale_id)  # no merchant in the query: the bug
        if sale is None:
            raise NotFound("sale")
        return {"id": sale.id, "amount": sale.amount, "currency": sale.currency}

    @leaky.get("/v1/leaky/sales/<sale_id>")
    @merchant_only
    def leaky_by_path(sale_id: str) -> Any:
        return sale_view(sale_id)

    @leaky.get("/v1/leaky/lookup")
    @merchant_only
    def leaky_by_query() -> Any:
        found = db_session().get(Sale, request.args.get("sale_id", ""))
        return {"data": [found.id] if found else []}

    @leaky.get("/v1/leaky/everything")
    @merchant_only
    def leaky_list() -> Any:
        return {"data": [s.id for s in db_session().scalars(select(Sale))]}

    fresh.register_blueprint(leaky)
    fresh_client = fresh.test_client()
    caught = {
        "path": sweep_path_ids(fresh, fresh_client, a, b),
        "query": sweep_query_and_body(fresh, fresh_client, a, b),
        "lists": sweep_lists(fresh, fresh_client, a, b),
    }
    assert [f for f in caught["path"] if "/v1/leaky/sales/<sale_id>" in f], caught["path"]
    assert [f for f in caught["query"] if "/v1/leaky/lookup" in f], caught["query"]
    assert [f for f in caught["lists"] if "/v1/leaky/everything" in f], caught["lists"]
    # And only those: every product route passes the same sweep on the same app.
    others = [f for found in caught.values() for f in found if "/v1/leaky/" not in f]
    assert not others, others


def test_the_same_routes_work_with_ones_own_ids(
    app: Flask, client: FlaskClient, tenants: tuple[Tenant, Tenant]
) -> None:
    """Control for the sweep: the 404s above come from ownership, not broken routes."""
    a, _ = tenants
    failures = []
    for route in sorted(id_routes(app), key=lambda r: (r.method == "DELETE", str(r))):
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
        if route.operator or (route.method, route.rule) in SHARED_ROUTES:
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
