"""Small helpers for driving the API the way a merchant and the operator do."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import OPERATOR_KEY

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


@dataclass
class Shop:
    """A merchant with a conversation and an offer, made through the API."""

    merchant: dict[str, Any]
    key: str
    conversation: dict[str, Any]
    offer: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)


def create_merchant(client: FlaskClient, **overrides: Any) -> tuple[dict[str, Any], str]:
    body = {
        "name": "Blue Bottle Mission St",
        "timezone": "America/Los_Angeles",
        "mids": [digits(15)],
        "chat_pages": [{"channel": "messenger", "page_id": digits(12)}],
    }
    body.update(overrides)
    response = client.post("/v1/merchants", json=body, headers=OPERATOR)
    assert response.status_code == 201, response.json
    return response.json, response.json["api_key"]["secret"]


def open_shop(client: FlaskClient, *, amount: int = 1250, currency: str = "USD") -> Shop:
    merchant, key = create_merchant(client)
    conversation = client.post(
        "/v1/conversations",
        json={
            "channel": "messenger",
            "thread_id": "t_" + digits(10),
            "customer_user_id": digits(16),
        },
        headers=bearer(key),
    )
    assert conversation.status_code == 201, conversation.json
    offer = client.post(
        f"/v1/conversations/{conversation.json['id']}/offers",
        json={"title": "Cold brew, 1 L", "amount": amount, "currency": currency},
        headers=bearer(key),
    )
    assert offer.status_code == 201, offer.json
    return Shop(merchant, key, conversation.json, offer.json)
