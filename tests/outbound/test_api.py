"""The merchant's API for outbound webhooks: registration (secret shown once), the guard's
400, rotation, the delivery log with attempts, redelivery of one or many; and the product's
worker, whose strict guard refuses a loopback endpoint however it got registered."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce import runtime
from commerce.db import transaction
from commerce.outbound import guard, services
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import WebhookAttempt, WebhookDelivery
from tests.conftest import wait_for
from tests.helpers import open_shop
from tests.outbound.conftest import Hooked, emit
from tests.outbound.receiver import Answer, Receiver

PUBLIC = "https://93.184.216.34/hooks/chatledger"


def register(client: FlaskClient, headers: dict[str, str], **body: object):
    return client.post(
        "/v1/webhook-endpoints",
        json={"url": PUBLIC, "event_types": ["sale.paid"], **body},
        headers=headers,
    )


def test_registering_answers_with_the_secret_once(client: FlaskClient, db: Session) -> None:
    shop = open_shop(client)
    headers = {**shop.headers, "Idempotency-Key": "reg-1"}
    created = register(client, headers, event_types=["sale.paid", "sale.refunded"])
    assert created.status_code == 201, created.json
    assert created.json["secret"].startswith("whsec_")
    assert created.json["id"].startswith("whe_")
    assert created.json["status"] == "enabled"
    replay = register(client, headers, event_types=["sale.paid", "sale.refunded"])
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json["id"] == created.json["id"]
    assert replay.json["secret"] is None
    listed = client.get("/v1/webhook-endpoints", headers=shop.headers)
    assert [e["id"] for e in listed.json["data"]] == [created.json["id"]]
    assert "secret" not in listed.json["data"][0]

    rotated = client.post(
        f"/v1/webhook-endpoints/{created.json['id']}/secrets", headers=shop.headers
    )
    assert rotated.status_code == 201
    assert rotated.json["secret"].startswith("whsec_")
    assert rotated.json["secret"] != created.json["secret"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
        "http://0.0.0.0/",
        "http://[fd00::1]/",
        "http://[fe80::1%25eth0]/",
        "http://localhost:8000/",
        "https://rebind.merchant.example/hook",
        "ftp://93.184.216.34/",
    ],
)
def test_non_public_destinations_are_refused_naming_url(
    client: FlaskClient, db: Session, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(guard, "system_resolver", lambda host, port: ["93.184.216.34", "10.1.2.3"])
    shop = open_shop(client)
    answer = register(client, shop.headers, url=url)
    assert answer.status_code == 400, answer.json
    assert answer.mimetype == "application/problem+json"
    assert answer.json["type"].endswith("/validation-error")
    assert list(answer.json["errors"]) == ["url"]


def test_a_public_name_is_accepted(
    client: FlaskClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "system_resolver", lambda host, port: ["93.184.216.34"])
    shop = open_shop(client)
    answer = register(client, shop.headers, url="https://hooks.merchant.example/x")
    assert answer.status_code == 201, answer.json


@pytest.mark.parametrize(
    "body",
    [
        {"event_types": []},
        {"event_types": ["sale.created"]},
        {"event_types": "sale.paid"},
        {"url": 12},
        {"url": "x" * 3000},
    ],
)
def test_bad_bodies_are_400(client: FlaskClient, db: Session, body: dict[str, object]) -> None:
    shop = open_shop(client)
    answer = register(client, shop.headers, **body)
    assert answer.status_code == 400, answer.json


def test_the_delivery_log_and_redelivery(
    client: FlaskClient, db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    headers = hooked.shop.headers
    base = f"/v1/webhook-endpoints/{hooked.endpoint.id}/deliveries"
    first, second = emit(hooked, "a"), emit(hooked, "b")
    receiver.answers = [Answer(500, body=b"oops")]
    services.deliver(runtime.sessions(), first.id, policy=policy)
    services.deliver(runtime.sessions(), second.id, policy=policy)

    page = client.get(base, query_string={"limit": 1}, headers=headers)
    assert page.status_code == 200, page.json
    assert [d["id"] for d in page.json["data"]] == [second.id]
    rest = client.get(
        base, query_string={"limit": 1, "cursor": page.json["next_cursor"]}, headers=headers
    )
    (logged,) = rest.json["data"]
    assert logged["id"] == first.id
    assert logged["event_type"] == "sale.paid"
    assert logged["status"] == "pending"
    (attempt,) = logged["attempt_log"]
    assert attempt["status_code"] == 500
    assert attempt["outcome"] == "retry"
    assert attempt["error"] == "HTTP 500: oops"
    assert attempt["latency_ms"] >= 0
    delivered = client.get(base, query_string={"status": "delivered"}, headers=headers)
    assert [d["id"] for d in delivered.json["data"]] == [second.id]

    again = client.post(f"{base}/{second.id}/redeliver", headers=headers)
    assert again.status_code == 202, again.json
    assert again.json["status"] == "pending"
    services.deliver(runtime.sessions(), second.id, policy=policy)
    assert [r.headers["webhook-id"] for r in receiver.received[-2:]] == [second.event_id] * 2

    bulk = client.post(f"{base}/redeliver", json={"status": "delivered"}, headers=headers)
    assert bulk.status_code == 202, bulk.json
    assert bulk.json == {"redelivered": 1}
    bad = client.post(f"{base}/redeliver", json={"status": "lost"}, headers=headers)
    assert bad.status_code == 400


def test_redelivery_to_a_disabled_endpoint_is_a_conflict(
    client: FlaskClient, db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    row = emit(hooked)
    receiver.answers = [Answer(410)]
    services.deliver(runtime.sessions(), row.id, policy=policy)
    base = f"/v1/webhook-endpoints/{hooked.endpoint.id}/deliveries"
    answer = client.post(f"{base}/{row.id}/redeliver", headers=hooked.shop.headers)
    assert answer.status_code == 409, answer.json
    listed = client.get("/v1/webhook-endpoints", headers=hooked.shop.headers)
    assert listed.json["data"][0]["status"] == "disabled"


@pytest.mark.worker
def test_the_worker_refuses_a_loopback_endpoint_and_nothing_is_sent(
    app, committed, worker, receiver: Receiver, policy: AddressPolicy
) -> None:
    """An endpoint row pointing at 127.0.0.1 (written past the API, as a test can): the
    delivery task sent at commit runs in the real worker with the product's strict policy,
    and the attempt is refused before any connection."""
    client = app.test_client()
    shop = open_shop(client)
    with transaction(committed) as session:
        endpoint, _ = services.create_endpoint(
            session,
            merchant_id=shop.merchant["id"],
            url=receiver.url,
            event_types=["sale.paid"],
            policy=policy,
        )
        event = services.emit(
            session,
            merchant_id=shop.merchant["id"],
            event_type="sale.paid",
            data={"object": "test"},
            dedupe_key="worker",
        )
        assert event is not None

    def attempted() -> list[WebhookAttempt]:
        with committed() as session:
            return list(
                session.scalars(
                    select(WebhookAttempt)
                    .join(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id == endpoint.id)
                )
            )

    (attempt,) = wait_for(attempted)
    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert "refused" in (attempt.error or "")
    assert "loopback" in (attempt.error or "")
    assert receiver.received == []
