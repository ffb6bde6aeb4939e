"""The three doors over HTTP: what is stored, what is refused, and duplicates."""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from commerce.partners.models import Partner
from tests.conftest import CHAT_APP_SECRET, CHAT_VERIFY_TOKEN, STRIPE_WEBHOOK_SECRETS
from tests.helpers import OPERATOR
from tests.support.signing import (
    body_of,
    meta_headers,
    partner_headers,
    stripe_event,
    stripe_headers,
)
from webhooks.models import InboxEvent

SECRET = STRIPE_WEBHOOK_SECRETS[0]


def inbox_count(db) -> int:
    return db.scalar(select(func.count()).select_from(InboxEvent))


def intent(intent_id: str = "pi_door") -> dict:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 1250,
        "currency": "usd",
        "amount_received": 1250,
        "status": "succeeded",
        "metadata": {},
    }


# -- Stripe ------------------------------------------------------------------------------


def test_a_signed_stripe_event_is_stored_once(client, db):
    event = stripe_event("payment_intent.succeeded", intent())
    body = body_of(event)
    first = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
    assert first.status_code == 200, first.json
    assert first.json["duplicate"] is False
    for _ in range(4):
        again = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
        assert again.status_code == 200
        assert again.json == {"received": True, "id": first.json["id"], "duplicate": True}
    row = db.get(InboxEvent, first.json["id"])
    assert (row.source, row.event_id, row.event_type) == (
        "stripe",
        event["id"],
        "payment_intent.succeeded",
    )
    assert row.status == "pending"
    assert inbox_count(db) == 1


def test_the_previous_secret_still_verifies_during_rotation(client, db):
    body = body_of(stripe_event("payment_intent.succeeded", intent()))
    answer = client.post(
        "/webhooks/stripe", data=body, headers=stripe_headers(body, STRIPE_WEBHOOK_SECRETS[1])
    )
    assert answer.status_code == 200


def _flip_byte(body: bytes) -> bytes:
    index = body.index(b"1250")
    return body[:index] + b"9" + body[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        "flipped_byte",
        "reserialized",
        "wrong_secret",
        "missing_header",
        "old_timestamp",
        "future_timestamp",
    ],
)
def test_stripe_refusals_store_nothing(client, db, tamper):
    event = stripe_event("payment_intent.succeeded", intent())
    body = body_of(event)
    headers = stripe_headers(body, SECRET)
    if tamper == "flipped_byte":
        body = _flip_byte(body)
    elif tamper == "reserialized":
        body = json.dumps(event, indent=2).encode()
    elif tamper == "wrong_secret":
        headers = stripe_headers(body, "whsec_not_ours")
    elif tamper == "missing_header":
        headers.pop("Stripe-Signature")
    elif tamper == "old_timestamp":
        headers = stripe_headers(body, SECRET, timestamp=int(time.time()) - 600)
    else:
        headers = stripe_headers(body, SECRET, timestamp=int(time.time()) + 600)
    answer = client.post("/webhooks/stripe", data=body, headers=headers)
    assert answer.status_code == 400
    assert answer.content_type == "application/problem+json"
    assert answer.json["type"] == "/problems/invalid-signature"
    assert inbox_count(db) == 0


def test_thin_events_are_refused(client, db):
    thin = {
        "id": "evt_thin",
        "object": "v2.core.event",
        "type": "v1.payment_intent.succeeded",
        "related_object": {"id": "pi_1", "type": "payment_intent"},
    }
    body = body_of(thin)
    answer = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
    assert answer.status_code == 400
    assert answer.json["type"] == "/problems/unsupported-event"
    assert inbox_count(db) == 0


def test_another_api_version_is_recorded_and_refused(client, db):
    event = stripe_event("payment_intent.succeeded", intent(), api_version="2020-08-27")
    body = body_of(event)
    answer = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET))
    assert answer.status_code == 400
    assert answer.json["type"] == "/problems/unsupported-api-version"
    assert "2020-08-27" in answer.json["detail"]
    row = db.scalars(select(InboxEvent)).one()
    assert row.status == "refused"
    assert "2020-08-27" in row.last_error


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"id": "evt_1", "id": "evt_2"}',
        b"[1, 2]",
        b'{"object": "event", "data": 1}',
        b"\xff\xfe",
    ],
)
def test_signed_garbage_is_refused_without_a_500(client, db, body):
    answer = client.post(
        "/webhooks/stripe",
        data=body,
        headers=stripe_headers(body, SECRET)
        if body != b"\xff\xfe"
        else {"Stripe-Signature": "t=1,v1=00"},
    )
    assert answer.status_code == 400
    assert inbox_count(db) == 0


def test_twenty_copies_at_once_make_one_row(app, committed):
    event = stripe_event("payment_intent.succeeded", intent("pi_twenty"))
    body = body_of(event)

    def deliver(_):
        return app.test_client().post(
            "/webhooks/stripe", data=body, headers=stripe_headers(body, SECRET)
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(deliver, range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert len({a.json["id"] for a in answers}) == 1
    assert sum(not a.json["duplicate"] for a in answers) == 1
    with committed() as session:
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 1


# -- Partners ----------------------------------------------------------------------------


def _partner(client, *, scopes=("transactions", "balances"), agreement=True):
    created = client.post("/v1/partners", json={"name": "First Bank"}, headers=OPERATOR)
    assert created.status_code == 201, created.json
    partner = created.json
    if agreement:
        answer = client.post(
            f"/v1/partners/{partner['id']}/agreements",
            json={
                "scopes": list(scopes),
                "purposes": ["fraud_alerts", "sales_attribution"],
                "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
                "retention_days": 365,
            },
            headers=OPERATOR,
        )
        assert answer.status_code == 201, answer.json
        consent = client.post(
            f"/v1/partners/{partner['id']}/consents",
            json={
                "customer_ref": "cust_4821",
                "status": "granted",
                "scopes": list(scopes),
                "purposes": ["fraud_alerts", "sales_attribution"],
            },
            headers=OPERATOR,
        )
        assert consent.status_code == 201, consent.json
    return partner


def _notification(event_type="transaction.authorized", **data):
    return {
        "id": "evt_" + secrets.token_hex(8),
        "type": event_type,
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "transaction_id": "txn_" + secrets.token_hex(6),
            "original_transaction_id": None,
            "customer_ref": "cust_4821",
            "card": {
                "token": "tok_9d2",
                "par": "V0010013019194478349571382459",
                "brand": "visa",
                "last4": "4242",
            },
            "merchant": {
                "mid": "000123456789012",
                "name": "Blue Bottle",
                "mcc": "5814",
                "country": "US",
            },
            "amount": 1250,
            "currency": "USD",
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "auth_code": "A1B2C3",
            "card_present": False,
            "wallet": None,
            **data,
        },
    }


def test_a_signed_partner_notification_is_stored(client, db):
    partner = _partner(client)
    note = _notification()
    body = body_of(note)
    headers = partner_headers(body, partner["webhook_secret"], note["id"])
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 200, answer.json
    row = db.get(InboxEvent, answer.json["id"])
    assert row.source == f"partner:{partner['id']}"
    assert row.payload["data"]["transaction_id"] == note["data"]["transaction_id"]


def test_a_partner_pan_is_hashed_dropped_and_flagged(client, db):
    partner = _partner(client)
    note = _notification()
    note["data"]["card"]["pan"] = "4242 4242 4242 4242"
    body = body_of(note)
    headers = partner_headers(body, partner["webhook_secret"], note["id"])
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 200
    row = db.get(InboxEvent, answer.json["id"])
    card = row.payload["data"]["card"]
    assert "pan" not in card
    assert len(card["pan_hash"]) == 64
    assert card["pan_hash_version"] == "v2"
    assert (card["brand"], card["last4"]) == ("visa", "4242")
    assert "4242424242424242" not in json.dumps(row.payload)
    assert "4242 4242 4242 4242" not in json.dumps(row.payload)
    db.expire_all()
    assert db.get(Partner, partner["id"]).pan_reports == 1


@pytest.mark.parametrize(
    "tamper", ["flipped_byte", "wrong_secret", "missing_header", "old", "future", "id_mismatch"]
)
def test_partner_refusals_store_nothing(client, db, tamper):
    partner = _partner(client)
    note = _notification()
    body = body_of(note)
    secret, message_id, ts = partner["webhook_secret"], note["id"], int(time.time())
    if tamper == "wrong_secret":
        secret = "whsec_" + "QUJD" * 8
    elif tamper == "old":
        ts -= 600
    elif tamper == "future":
        ts += 600
    elif tamper == "id_mismatch":
        message_id = "evt_other"
    headers = partner_headers(body, secret, message_id, timestamp=ts)
    if tamper == "flipped_byte":
        body = _flip_byte(body)
    if tamper == "missing_header":
        headers.pop("webhook-signature")
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 400
    assert inbox_count(db) == 0


def test_a_partner_without_an_agreement_is_refused_on_record(client, db):
    partner = _partner(client, agreement=False)
    note = _notification()
    body = body_of(note)
    headers = partner_headers(body, partner["webhook_secret"], note["id"])
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 403
    assert answer.json["type"] == "/problems/outside-agreement"
    row = db.scalars(select(InboxEvent)).one()
    assert row.status == "refused"
    assert row.payload == {}


@pytest.mark.parametrize("consent", ["never_given", "revoked", "expired", "other_scope"])
def test_data_without_a_consent_in_force_is_refused_on_record(client, db, consent):
    partner = _partner(client, scopes=("transactions", "balances"))
    note = _notification()
    if consent == "never_given":
        note["data"]["customer_ref"] = "cust_stranger"
    else:
        change = {
            "revoked": {"status": "revoked"},
            "expired": {
                "status": "granted",
                "scopes": ["transactions"],
                "purposes": ["fraud_alerts"],
                "expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            },
            "other_scope": {
                "status": "granted",
                "scopes": ["balances"],
                "purposes": ["balance_display"],
            },
        }[consent]
        answer = client.post(
            f"/v1/partners/{partner['id']}/consents",
            json={"customer_ref": "cust_4821", **change},
            headers=OPERATOR,
        )
        assert answer.status_code == 201, answer.json
    body = body_of(note)
    headers = partner_headers(body, partner["webhook_secret"], note["id"])
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 403
    assert answer.json["type"] == "/problems/no-consent"
    row = db.scalars(select(InboxEvent)).one()
    assert (row.status, row.payload) == ("refused", {})


def test_a_scope_outside_the_agreement_is_refused(client, db):
    partner = _partner(client, scopes=("transactions",))
    note = {
        "id": "evt_bal",
        "type": "balance.updated",
        "created": "2026-11-28T12:00:03Z",
        "data": {
            "customer_ref": "cust_1",
            "account_ref": "acc_1",
            "available": 100,
            "current": 120,
            "currency": "USD",
            "as_of": "2026-11-28T12:00:00Z",
        },
    }
    body = body_of(note)
    headers = partner_headers(body, partner["webhook_secret"], note["id"])
    answer = client.post(f"/webhooks/partners/{partner['id']}", data=body, headers=headers)
    assert answer.status_code == 403
    assert "balances" in answer.json["detail"]


def test_an_unknown_partner_is_refused(client, db):
    body = body_of(_notification())
    headers = partner_headers(body, "whsec_" + "QUJD" * 8, "evt_x")
    answer = client.post(
        "/webhooks/partners/prt_0000000000000000000000", data=body, headers=headers
    )
    assert answer.status_code == 400
    assert inbox_count(db) == 0


# -- Chat --------------------------------------------------------------------------------


def test_the_chat_handshake(client):
    ok = client.get(
        "/webhooks/chat/messenger",
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": CHAT_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert ok.status_code == 200
    assert ok.get_data(as_text=True) == "1158201444"
    wrong = client.get(
        "/webhooks/chat/messenger",
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": "nope",
            "hub.challenge": "1158201444",
        },
    )
    assert wrong.status_code == 403
    assert client.get("/webhooks/chat/telegram").status_code == 404


def _chat_body(*items):
    return {"object": "page", "entry": [{"id": "p1", "time": 1, "messaging": list(items)}]}


def test_chat_messages_are_stored_with_card_numbers_masked(client, db):
    item = {
        "sender": {"id": "psid_1"},
        "recipient": {"id": "p1"},
        "timestamp": 1764331200000,
        "message": {"mid": "m_1", "text": "pay with 4242-4242-4242-4242 please"},
    }
    body = body_of(_chat_body(item))
    answer = client.post(
        "/webhooks/chat/messenger", data=body, headers=meta_headers(body, CHAT_APP_SECRET)
    )
    assert answer.status_code == 200, answer.json
    (inbox_id,) = answer.json["ids"]
    row = db.get(InboxEvent, inbox_id)
    text = row.payload["message"]["text"]
    assert "4242-4242-4242-4242" not in text
    assert text.endswith("please")
    assert "4242" in text


def test_chat_signature_failures_store_nothing(client, db):
    body = body_of(
        _chat_body(
            {
                "sender": {"id": "u"},
                "recipient": {"id": "p"},
                "timestamp": 1,
                "message": {"mid": "m"},
            }
        )
    )
    for headers in ({}, meta_headers(body, "wrong"), meta_headers(body + b" ", CHAT_APP_SECRET)):
        answer = client.post("/webhooks/chat/messenger", data=body, headers=headers)
        assert answer.status_code == 400
    assert inbox_count(db) == 0
