"""A merchant receiver on 127.0.0.1, and an endpoint registered for it with the one policy
that lets exactly that address and port through (the product's policy never does)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from commerce import runtime
from commerce.db import utcnow
from commerce.outbound import services
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import WebhookDelivery, WebhookEndpoint
from tests.helpers import Shop, open_shop
from tests.outbound.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def policy(receiver: Receiver) -> AddressPolicy:
    return AddressPolicy(allow=frozenset({("127.0.0.1", receiver.port)}))


class Clock:
    """The time `deliver` sees: starts now, moves only when the test moves it."""

    def __init__(self) -> None:
        # A whole second, after anything created before it.
        self.now = utcnow().replace(microsecond=0) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class Hooked:
    shop: Shop
    endpoint: WebhookEndpoint
    secret: str


@pytest.fixture
def hooked(client: FlaskClient, db: Session, receiver: Receiver, policy: AddressPolicy) -> Hooked:
    shop = open_shop(client)
    with runtime.sessions()() as session:
        endpoint, secret = services.create_endpoint(
            session,
            merchant_id=shop.merchant["id"],
            url=receiver.url,
            event_types=["sale.paid", "sale.refunded", "sale.disputed"],
            policy=policy,
        )
        session.commit()
    receiver.secrets = [secret]
    return Hooked(shop, endpoint, secret)


def emit(hooked: Hooked, key: str = "k1", event_type: str = "sale.paid") -> WebhookDelivery:
    with runtime.sessions()() as session:
        event = services.emit(
            session,
            merchant_id=hooked.shop.merchant["id"],
            event_type=event_type,
            data={"object": "test", "key": key},
            dedupe_key=key,
        )
        assert event is not None
        session.commit()
        return (
            session.query(WebhookDelivery)
            .filter_by(event_id=event.id, endpoint_id=hooked.endpoint.id)
            .one()
        )


def delivery(db: Session, delivery_id: str) -> WebhookDelivery:
    db.expire_all()
    return db.get_one(WebhookDelivery, delivery_id)
