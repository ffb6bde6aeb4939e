"""An endpoint's life after registration: read, disabled by hand, enabled again (after a
410 too), deleted; what becomes of its pending deliveries each time; every route scoped to
the merchant that owns the endpoint, and described in the OpenAPI document."""

from __future__ import annotations

import threading

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from commerce import runtime
from commerce.db import transaction, utcnow
from commerce.outbound import services
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import (
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointSecret,
)
from tests.conftest import wait_for
from tests.helpers import open_shop
from tests.outbound.conftest import Hooked, delivery, emit
from tests.outbound.receiver import Answer, Receiver

PUBLIC = "https://93.184.216.34/hooks/chatledger"


def base(hooked: Hooked) -> str:
    return f"/v1/webhook-endpoints/{hooked.endpoint.id}"


def count(db: Session, model: type, **where: str) -> int:
    db.expire_all()
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    return db.scalar(query) or 0


def test_another_merchants_endpoint_is_not_found(
    client: FlaskClient, db: Session, hooked: Hooked
) -> None:
    other = open_shop(client).headers
    path = base(hooked)
    answers = [
        client.get(path, headers=other),
        client.delete(path, headers=other),
        client.post(f"{path}/disable", headers=other),
        client.post(f"{path}/enable", headers=other),
        client.get(f"{path}/deliveries", headers=other),
        client.post(f"{path}/secrets", headers=other),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert all(a.mimetype == "application/problem+json" for a in answers)
    # Nothing changed for its owner.
    own = client.get(path, headers=hooked.shop.headers)
    assert own.status_code == 200, own.json
    assert own.json["status"] == "enabled"
    assert client.get("/v1/webhook-endpoints/whe_unknown", headers=other).status_code == 404


def test_disabling_by_hand_cancels_what_is_pending_and_records_nothing_new(
    client: FlaskClient, db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    delivered, pending = emit(hooked, "a"), emit(hooked, "b")
    assert services.deliver(runtime.sessions(), delivered.id, policy=policy) == "delivered"

    answer = client.post(f"{base(hooked)}/disable", headers=hooked.shop.headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "disabled"
    assert answer.json["disabled_reason"] == services.DISABLED_BY_MERCHANT
    disabled_at = answer.json["disabled_at"]
    assert disabled_at is not None
    assert delivery(db, pending.id).status == "canceled"
    assert delivery(db, delivered.id).status == "delivered"
    # A task still queued for it sends nothing.
    assert services.deliver(runtime.sessions(), pending.id, policy=policy) == "canceled"
    assert len(receiver.received) == 1
    with runtime.sessions()() as session:
        event = services.emit(
            session,
            merchant_id=hooked.shop.merchant["id"],
            event_type="sale.paid",
            data={},
            dedupe_key="c",
        )
        assert event is None

    again = client.post(f"{base(hooked)}/disable", headers=hooked.shop.headers)
    assert again.status_code == 200
    assert (again.json["status"], again.json["disabled_at"]) == ("disabled", disabled_at)


def test_an_endpoint_disabled_by_410_is_enabled_again_and_canceled_ones_wait_for_redelivery(
    client: FlaskClient, db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    gone, waiting = emit(hooked, "a"), emit(hooked, "b")
    receiver.answers = [Answer(410)]
    assert services.deliver(runtime.sessions(), gone.id, policy=policy) == "canceled"
    shown = client.get(base(hooked), headers=hooked.shop.headers).json
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", services.DISABLED_BY_410)

    with runtime.sessions()() as session:
        endpoint = services.enable_endpoint(
            session,
            merchant_id=hooked.shop.merchant["id"],
            endpoint_id=hooked.endpoint.id,
            policy=policy,
        )
        assert (endpoint.status, endpoint.disabled_reason, endpoint.disabled_at) == (
            "enabled",
            None,
            None,
        )
        session.commit()
    # Canceled while disabled: still canceled, nothing sent by itself...
    assert delivery(db, waiting.id).status == "canceled"
    assert services.deliver(runtime.sessions(), waiting.id, policy=policy) == "canceled"
    assert len(receiver.received) == 1
    # ...new events are delivered...
    fresh = emit(hooked, "c")
    assert services.deliver(runtime.sessions(), fresh.id, policy=policy) == "delivered"
    # ...and the merchant sends the canceled ones again when it chooses.
    bulk = client.post(
        f"{base(hooked)}/deliveries/redeliver",
        json={"status": "canceled"},
        headers=hooked.shop.headers,
    )
    assert bulk.json == {"redelivered": 2}
    for row in (gone, waiting):
        assert services.deliver(runtime.sessions(), row.id, policy=policy) == "delivered"
    assert [r.headers["webhook-id"] for r in receiver.received[-2:]] == [
        gone.event_id,
        waiting.event_id,
    ]


def test_enabling_checks_the_url_again(
    client: FlaskClient, db: Session, hooked: Hooked, policy: AddressPolicy
) -> None:
    """The receiver on 127.0.0.1 was let in by the test's policy; the API's strict guard
    refuses to enable it, and it stays disabled."""
    headers = hooked.shop.headers
    assert client.post(f"{base(hooked)}/disable", headers=headers).status_code == 200
    answer = client.post(f"{base(hooked)}/enable", headers=headers)
    assert answer.status_code == 400, answer.json
    assert list(answer.json["errors"]) == ["url"]
    assert "loopback" in answer.json["errors"]["url"][0]
    assert client.get(base(hooked), headers=headers).json["status"] == "disabled"


def test_disable_and_enable_through_the_api(client: FlaskClient, db: Session) -> None:
    shop = open_shop(client)
    created = client.post(
        "/v1/webhook-endpoints",
        json={"url": PUBLIC, "event_types": ["sale.paid"]},
        headers=shop.headers,
    ).json
    path = f"/v1/webhook-endpoints/{created['id']}"
    assert client.post(f"{path}/disable", headers=shop.headers).json["status"] == "disabled"
    listed = client.get("/v1/webhook-endpoints", headers=shop.headers).json["data"]
    assert listed[0]["disabled_reason"] == services.DISABLED_BY_MERCHANT
    enabled = client.post(f"{path}/enable", headers=shop.headers)
    assert enabled.status_code == 200, enabled.json
    assert (enabled.json["status"], enabled.json["disabled_reason"]) == ("enabled", None)
    # Enabling an enabled endpoint changes nothing.
    assert client.post(f"{path}/enable", headers=shop.headers).json == enabled.json
    assert "secret" not in enabled.json


def test_deleting_drops_pending_deliveries_and_the_log_and_keeps_the_events(
    client: FlaskClient, db: Session, hooked: Hooked, receiver: Receiver, policy: AddressPolicy
) -> None:
    delivered, pending = emit(hooked, "a"), emit(hooked, "b")
    assert services.deliver(runtime.sessions(), delivered.id, policy=policy) == "delivered"
    endpoint_id = hooked.endpoint.id

    answer = client.delete(base(hooked), headers=hooked.shop.headers)
    assert answer.status_code == 204
    assert answer.data == b""
    assert client.get(base(hooked), headers=hooked.shop.headers).status_code == 404
    assert client.delete(base(hooked), headers=hooked.shop.headers).status_code == 404
    listed = client.get(f"{base(hooked)}/deliveries", headers=hooked.shop.headers)
    assert listed.status_code == 404
    assert count(db, WebhookEndpoint, id=endpoint_id) == 0
    assert count(db, WebhookEndpointSecret, endpoint_id=endpoint_id) == 0
    assert count(db, WebhookDelivery, endpoint_id=endpoint_id) == 0
    assert count(db, WebhookAttempt, delivery_id=delivered.id) == 0
    # The events stay; the pending delivery is gone: a task still queued for it, or the
    # sweep, sends nothing.
    assert count(db, OutboundEvent, merchant_id=hooked.shop.merchant["id"]) == 2
    assert services.deliver(runtime.sessions(), pending.id, policy=policy) is None
    with runtime.sessions()() as session:
        assert pending.id not in services.due(session, now=utcnow())
    assert len(receiver.received) == 1
    # New events of the merchant record no delivery for it.
    with runtime.sessions()() as session:
        event = services.emit(
            session,
            merchant_id=hooked.shop.merchant["id"],
            event_type="sale.paid",
            data={},
            dedupe_key="after",
        )
        assert event is None


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/webhook-endpoints/{endpoint_id}", "get"),
        ("/v1/webhook-endpoints/{endpoint_id}", "delete"),
        ("/v1/webhook-endpoints/{endpoint_id}/disable", "post"),
        ("/v1/webhook-endpoints/{endpoint_id}/enable", "post"),
    ],
)
def test_the_routes_are_in_the_openapi_document(
    client: FlaskClient, path: str, method: str
) -> None:
    document = client.get("/openapi.json").json
    operation = document["paths"][path][method]
    assert operation["security"]
    assert "404" in operation["responses"]
    assert operation["summary"] or operation.get("description")


def _waiting_for_a_lock(factory: sessionmaker[Session]) -> bool:
    with factory() as session:
        return bool(
            session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def test_an_event_racing_the_deletion_of_its_endpoint_never_fails_the_change(
    app, committed: sessionmaker[Session], receiver: Receiver, policy: AddressPolicy
) -> None:
    """The change an event reports (a sale's) must not fail because the endpoint went away
    meanwhile. Deleted first: the event waits for the deletion and leaves the endpoint out.
    Recorded first: the deletion waits, then takes the new delivery with it."""
    shop = open_shop(app.test_client())
    merchant_id = shop.merchant["id"]
    with transaction(committed) as session:
        endpoint, _ = services.create_endpoint(
            session,
            merchant_id=merchant_id,
            url=receiver.url,
            event_types=["sale.paid"],
            policy=policy,
        )
    endpoint_id = endpoint.id

    def emit_in_a_thread(key: str, outcome: dict[str, object]) -> threading.Thread:
        def run() -> None:
            try:
                with transaction(committed) as session:
                    event = services.emit(
                        session,
                        merchant_id=merchant_id,
                        event_type="sale.paid",
                        data={"object": "test"},
                        dedupe_key=key,
                    )
                    outcome["event"] = event.id if event else None
            except Exception as exc:  # the assertion below shows it
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # Deleted first (not yet committed): the event waits, then finds no endpoint.
    deleting = committed()
    services.delete_endpoint(deleting, merchant_id=merchant_id, endpoint_id=endpoint_id)
    outcome: dict[str, object] = {}
    thread = emit_in_a_thread("race-1", outcome)
    wait_for(lambda: _waiting_for_a_lock(committed))
    deleting.commit()
    deleting.close()
    thread.join()
    assert outcome == {"event": None}

    # Recorded first: the deletion waits for the event's transaction and takes its delivery.
    with transaction(committed) as session:
        endpoint, _ = services.create_endpoint(
            session,
            merchant_id=merchant_id,
            url=receiver.url,
            event_types=["sale.paid"],
            policy=policy,
        )
    endpoint_id = endpoint.id
    emitting = committed()
    event = services.emit(
        emitting,
        merchant_id=merchant_id,
        event_type="sale.paid",
        data={"object": "test"},
        dedupe_key="race-2",
    )
    assert event is not None
    deleted: dict[str, object] = {}

    def delete() -> None:
        try:
            with transaction(committed) as session:
                services.delete_endpoint(session, merchant_id=merchant_id, endpoint_id=endpoint_id)
            deleted["done"] = True
        except Exception as exc:  # the assertion below shows it
            deleted["error"] = exc

    thread = threading.Thread(target=delete)
    thread.start()
    wait_for(lambda: _waiting_for_a_lock(committed))
    emitting.commit()
    emitting.close()
    thread.join()
    assert deleted == {"done": True}
    with committed() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
            )
            == 0
        )
        assert session.get(OutboundEvent, event.id) is not None
