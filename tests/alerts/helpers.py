"""A bank partner, a consenting cardholder and their card transactions, through the doors."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import CHAT_APP_SECRET
from tests.helpers import OPERATOR
from tests.support.signing import body_of, meta_headers, partner_headers

NOW = datetime.now(UTC)
ALL_PURPOSES = ("fraud_alerts", "balance_display", "sales_attribution")


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def bank(client, purposes=ALL_PURPOSES) -> dict[str, Any]:
    partner = client.post("/v1/partners", json={"name": "Bank"}, headers=OPERATOR).json
    answer = client.post(
        f"/v1/partners/{partner['id']}/agreements",
        json={
            "scopes": ["transactions", "balances"],
            "purposes": list(purposes),
            "starts_at": rfc3339(NOW - timedelta(days=400)),
            "retention_days": 400,
        },
        headers=OPERATOR,
    )
    assert answer.status_code == 201, answer.json
    return partner


def consent(
    client,
    partner,
    customer_ref="cust_1",
    *,
    psid="psid_1",
    scopes=("transactions", "balances"),
    purposes=ALL_PURPOSES,
    status="granted",
) -> dict[str, Any]:
    answer = client.post(
        f"/v1/partners/{partner['id']}/consents",
        json={
            "customer_ref": customer_ref,
            "status": status,
            "scopes": list(scopes),
            "purposes": list(purposes),
            "chat": {"channel": "messenger", "user_id": psid},
            "cards": [{"token": "tok_1", "brand": "visa", "last4": "4242"}],
        },
        headers=OPERATOR,
    )
    assert answer.status_code == 201, answer.json
    return answer.json


def deliver(client, partner, event_type: str, data: dict[str, Any], event_id=None) -> str:
    note = {
        "id": event_id or "evt_" + secrets.token_hex(8),
        "type": event_type,
        "created": rfc3339(datetime.now(UTC)),
        "data": data,
    }
    body = body_of(note)
    answer = client.post(
        f"/webhooks/partners/{partner['id']}",
        data=body,
        headers=partner_headers(body, partner["webhook_secret"], note["id"]),
    )
    assert answer.status_code == 200, answer.json
    return answer.json["id"]


def transaction(
    n: int,
    *,
    at: datetime,
    amount=2000,
    mid=None,
    name=None,
    country="US",
    card_present=True,
    customer_ref="cust_1",
) -> dict[str, Any]:
    return {
        "transaction_id": f"txn_{n}_{secrets.token_hex(3)}",
        "customer_ref": customer_ref,
        "card": {"token": "tok_1", "brand": "visa", "last4": "4242"},
        "merchant": {
            "mid": mid or f"{n:015d}",
            "name": name or f"Store {n}",
            "mcc": "5814",
            "country": country,
        },
        "amount": amount,
        "currency": "USD",
        "occurred_at": rfc3339(at),
        "card_present": card_present,
    }


def balance(account_ref: str, *, as_of: datetime, available=123_456, customer_ref="cust_1"):
    return {
        "customer_ref": customer_ref,
        "account_ref": account_ref,
        "available": available,
        "current": available + 1000,
        "currency": "USD",
        "as_of": rfc3339(as_of),
    }


def chat(client, item: dict[str, Any], page_id: str = "900000000001") -> str:
    item = {
        "recipient": {"id": page_id},
        "timestamp": int(time.time() * 1000),
        **item,
    }
    body = body_of({"object": "page", "entry": [{"id": page_id, "messaging": [item]}]})
    answer = client.post(
        "/webhooks/chat/messenger", data=body, headers=meta_headers(body, CHAT_APP_SECRET)
    )
    assert answer.status_code == 200, answer.json
    (inbox_id,) = answer.json["ids"]
    return inbox_id


def answer_item(psid: str, alert_id: str, answer: str, *, mid="m_1") -> dict[str, Any]:
    return {
        "sender": {"id": psid},
        "postback": {
            "mid": mid,
            "title": answer,
            "payload": f"chatledger:alert:{alert_id}:{answer}",
        },
    }


def text_item(psid: str, text: str, *, mid="m_text") -> dict[str, Any]:
    return {"sender": {"id": psid}, "message": {"mid": mid, "text": text}}
