"""The service's own surface: health, readiness, metrics, the OpenAPI document and docs."""

from __future__ import annotations

import dataclasses

from tests.conftest import create_test_app


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_when_both_servers_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ready"}


def test_readyz_names_what_is_unreachable(settings, app):
    broken = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    try:
        response = create_test_app(broken).test_client().get("/readyz")
    finally:
        # A second app makes its Celery app the process default; put the suite's back, or
        # every task sent by later tests would go to the unreachable Redis.
        create_test_app(settings)
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert "redis" in response.json["detail"]
    assert "database" not in response.json["detail"]


def test_metrics_count_requests_by_route(client):
    client.get("/healthz")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'chatledger_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in body


def test_openapi_document_describes_the_api(client):
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in (
        "/v1/merchants",
        "/v1/conversations",
        "/v1/conversations/{conversation_id}/offers",
        "/v1/offers/{offer_id}/touchpoints",
        "/v1/offers/{offer_id}/checkout",
        "/v1/sales",
        "/v1/sales/{sale_id}",
        "/v1/sales/{sale_id}/refunds",
    ):
        assert path in paths, path
    offer = document["components"]["schemas"]["OfferCreate"]
    assert set(offer["required"]) == {"title", "amount", "currency"}
    assert offer["properties"]["amount"]["type"] == "integer"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert paths["/v1/sales"]["get"]["security"] == [{"bearerAuth": []}]


def test_browsable_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/docs/static/swagger-ui-bundle.js" in html
    assert "//cdn" not in html
    assert "unpkg" not in html
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.get_data()) > 100_000
    script.close()


def test_unknown_routes_answer_problem_json(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.json["type"] == "/problems/not-found"


def test_card_numbers_typed_into_the_api_are_masked_before_storage(client, db):
    from sqlalchemy import select

    from commerce.offers.models import Offer
    from tests.helpers import open_shop

    shop = open_shop(client)
    answer = client.post(
        f"/v1/conversations/{shop.conversation['id']}/offers",
        json={"title": "Hold for 4242 4242 4242 4242", "amount": 100, "currency": "USD"},
        headers=shop.headers,
    )
    assert answer.status_code == 201
    assert "4242 4242 4242 4242" not in answer.get_data(as_text=True)
    stored = db.scalars(select(Offer.title).where(Offer.id == answer.json["id"])).one()
    assert "4242 4242 4242 4242" not in stored
    assert stored.startswith("Hold for ")
    assert "4242" in stored
