"""`Idempotency-Key` on the creating POSTs (SPEC section 5; issue 2).

A repeat with the same key and the same request replays the first answer (same status,
same body, `Idempotent-Replayed: true`) and does the work once; the same key with a
different request is a 409 problem; keys belong to the API key that sent them; a refused
request is not remembered, so a corrected retry with the same key goes through.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from commerce.access.models import IdempotencyRecord
from commerce.ids import new_id
from commerce.models import metadata
from commerce.offers.models import Offer
from tests.helpers import OPERATOR, Shop, digits, open_shop
from tests.support.stripe_server import StripeServer

PROBLEM_JSON = "application/problem+json"
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def new_key() -> str:
    return "idem-" + secrets.token_hex(12)


def row_counts(db: Session) -> dict[str, int]:
    # The audit log records every operator request, replays and refusals included.
    return {
        table.name: db.scalar(select(func.count()).select_from(table))
        for table in metadata.sorted_tables
        if table.name != "audit_log"
    }


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    text = response.get_data(as_text=True)
    assert response.status_code == status, (response.status_code, text[:300])
    assert response.mimetype == PROBLEM_JSON, response.mimetype
    body = json.loads(text)
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert "Traceback" not in text
    return body


def paid_sale(client: FlaskClient, stripe: StripeServer, shop: Shop) -> dict[str, Any]:
    checkout = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    assert checkout.status_code == 201, checkout.json
    sale = checkout.json["sale"]
    stripe.succeed(sale["payment_intent_id"])
    synced = client.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers)
    assert synced.json["state"] == "paid", synced.json
    return synced.json


@dataclass(frozen=True)
class Creation:
    """One creating POST: where, as whom, with what, and the table it adds to."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    table: str
    #: The answer's id, from its JSON body.
    id_of: Callable[[dict[str, Any]], str] = lambda body: body["id"]

    def post(self, client: FlaskClient, key: str | None, body: Any = "same") -> TestResponse:
        headers = dict(self.headers)
        if key is not None:
            headers[HEADER] = key
        body = self.body if body == "same" else body
        if body is None:
            return client.post(self.path, headers=headers)
        return client.post(self.path, json=body, headers=headers)


def creation(name: str, client: FlaskClient, stripe: StripeServer) -> Creation:
    if name == "merchant":
        body = {
            "name": "Ritual Coffee",
            "mids": [digits(15)],
            "chat_pages": [{"channel": "whatsapp", "page_id": digits(12)}],
        }
        return Creation("/v1/merchants", OPERATOR, body, "merchants")
    shop = open_shop(client)
    if name == "conversation":
        body = {
            "channel": "messenger",
            "thread_id": "t_" + digits(12),
            "customer_user_id": digits(16),
        }
        return Creation("/v1/conversations", shop.headers, body, "conversations")
    if name == "offer":
        return Creation(
            f"/v1/conversations/{shop.conversation['id']}/offers",
            shop.headers,
            {"title": "Beans, 340 g", "amount": 1900, "currency": "USD"},
            "offers",
        )
    if name == "touchpoint":
        return Creation(
            f"/v1/offers/{shop.offer['id']}/touchpoints",
            shop.headers,
            {"kind": "clicked"},
            "touchpoints",
        )
    if name == "checkout":
        return Creation(
            f"/v1/offers/{shop.offer['id']}/checkout",
            shop.headers,
            None,
            "sales",
            id_of=lambda body: body["sale"]["id"],
        )
    if name == "refund":
        sale = paid_sale(client, stripe, shop)
        return Creation(f"/v1/sales/{sale['id']}/refunds", shop.headers, {"amount": 300}, "refunds")
    raise AssertionError(name)


CREATIONS = ["merchant", "conversation", "offer", "touchpoint", "checkout", "refund"]


# --------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CREATIONS)
def test_a_repeat_replays_the_first_answer_and_creates_one_row(
    client: FlaskClient, db: Session, stripe: StripeServer, name: str
) -> None:
    target = creation(name, client, stripe)
    key = new_key()
    before = row_counts(db)
    stripe_calls = len(stripe.requests)

    first = target.post(client, key)
    assert first.status_code in (201, 202), first.get_data(as_text=True)
    assert REPLAYED not in first.headers
    after_first = row_counts(db)
    assert after_first[target.table] == before[target.table] + 1
    stripe_after_first = len(stripe.requests)

    for _ in range(2):
        again = target.post(client, key)
        assert again.status_code == first.status_code
        assert again.headers.get(REPLAYED) == "true"
        assert again.mimetype == "application/json"
        if name == "merchant":
            # The API key secret is shown once: the replay has everything but the secret.
            assert again.json["api_key"]["secret"] is None
            assert {**again.json, "api_key": None} == {**first.json, "api_key": None}
            assert again.json["api_key"]["id"] == first.json["api_key"]["id"]
        else:
            assert again.json == first.json
        assert target.id_of(again.json) == target.id_of(first.json)

    assert row_counts(db) == after_first, "a replay changed the database"
    # A replayed checkout does not go back to Stripe either.
    assert len(stripe.requests) == stripe_after_first
    if name == "checkout":
        assert stripe_after_first > stripe_calls, "the first checkout did not reach Stripe"


@pytest.mark.parametrize("name", ["offer", "touchpoint"])
def test_without_a_key_a_repeat_creates_again(
    client: FlaskClient, db: Session, stripe: StripeServer, name: str
) -> None:
    """Control for the replay test: on these endpoints it is the key that deduplicates."""
    target = creation(name, client, stripe)
    before = row_counts(db)[target.table]
    first = target.post(client, None)
    second = target.post(client, None)
    assert first.status_code == second.status_code == 201
    assert first.json["id"] != second.json["id"]
    assert REPLAYED not in second.headers
    assert row_counts(db)[target.table] == before + 2


def test_the_merchant_key_secret_is_not_stored_in_plain_text(
    client: FlaskClient, db: Session, stripe: StripeServer
) -> None:
    """SPEC 5: keys are stored hashed and shown once. The idempotency record of a merchant
    creation must not keep the new merchant's API key secret."""
    target = creation("merchant", client, stripe)
    response = target.post(client, new_key())
    assert response.status_code == 201
    secret = response.json["api_key"]["secret"]
    stored = [json.dumps(body) for body in db.scalars(select(IdempotencyRecord.response_body))]
    assert stored, "the creation was not recorded for replay"
    assert not any(secret in body for body in stored), "the API key secret is stored in clear"


# --------------------------------------------------------------------------
# Reuse with another request
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda body: {**body, "amount": body["amount"] + 1}, id="other-amount"),
        pytest.param(lambda body: {**body, "title": "Something else"}, id="other-title"),
        pytest.param(lambda body: {**body, "quantity": 2}, id="extra-field"),
    ],
)
def test_the_same_key_with_another_body_is_409(
    client: FlaskClient, db: Session, stripe: StripeServer, change: Callable[[dict], dict]
) -> None:
    target = creation("offer", client, stripe)
    key = new_key()
    first = target.post(client, key)
    assert first.status_code == 201
    before = row_counts(db)
    assert target.body is not None
    reused = target.post(client, key, change(target.body))
    problem = assert_problem(reused, 409)
    assert problem["type"].endswith("idempotency-key-reused"), problem
    assert REPLAYED not in reused.headers
    assert row_counts(db) == before
    # The original is still replayed for the original request.
    again = target.post(client, key)
    assert again.status_code == 201
    assert again.json == first.json


def test_the_same_key_on_another_endpoint_is_409(
    client: FlaskClient, db: Session, stripe: StripeServer
) -> None:
    target = creation("offer", client, stripe)
    key = new_key()
    assert target.post(client, key).status_code == 201
    before = row_counts(db)
    other = client.post(
        "/v1/conversations",
        json={
            "channel": "messenger",
            "thread_id": "t_" + digits(12),
            "customer_user_id": digits(16),
        },
        headers={**target.headers, HEADER: key},
    )
    assert_problem(other, 409)
    assert row_counts(db) == before


# --------------------------------------------------------------------------
# Keys belong to the API key that sent them
# --------------------------------------------------------------------------


def test_keys_are_per_api_key(client: FlaskClient, db: Session) -> None:
    a, b = open_shop(client), open_shop(client)
    key = new_key()
    body = {"channel": "messenger", "thread_id": "t_" + digits(12), "customer_user_id": digits(16)}
    before = row_counts(db)["conversations"]

    mine = client.post("/v1/conversations", json=body, headers={**a.headers, HEADER: key})
    theirs = client.post("/v1/conversations", json=body, headers={**b.headers, HEADER: key})
    assert mine.status_code == 201, mine.json
    assert theirs.status_code == 201, theirs.json
    assert REPLAYED not in theirs.headers
    assert theirs.json["id"] != mine.json["id"]
    assert row_counts(db)["conversations"] == before + 2

    # Each is its owner's: B's answer is B's object, invisible to A, and vice versa.
    assert (
        client.get(f"/v1/conversations/{theirs.json['id']}", headers=b.headers).status_code == 200
    )
    assert (
        client.get(f"/v1/conversations/{theirs.json['id']}", headers=a.headers).status_code == 404
    )
    assert client.get(f"/v1/conversations/{mine.json['id']}", headers=b.headers).status_code == 404

    # And each replays its own answer.
    again = client.post("/v1/conversations", json=body, headers={**b.headers, HEADER: key})
    assert again.headers.get(REPLAYED) == "true"
    assert again.json["id"] == theirs.json["id"]


def test_keys_are_per_api_key_even_with_different_bodies(client: FlaskClient) -> None:
    """B reusing A's key with another body is not A's conflict: B simply creates."""
    a, b = open_shop(client), open_shop(client)
    key = new_key()
    offer_a = client.post(
        f"/v1/conversations/{a.conversation['id']}/offers",
        json={"title": "A", "amount": 100, "currency": "USD"},
        headers={**a.headers, HEADER: key},
    )
    offer_b = client.post(
        f"/v1/conversations/{b.conversation['id']}/offers",
        json={"title": "B", "amount": 200, "currency": "EUR"},
        headers={**b.headers, HEADER: key},
    )
    assert offer_a.status_code == offer_b.status_code == 201
    assert offer_b.json["title"] == "B"
    assert offer_b.json["currency"] == "EUR"
    assert REPLAYED not in offer_b.headers


# --------------------------------------------------------------------------
# Refusals are not remembered
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        pytest.param({"title": "x", "amount": 0, "currency": "USD"}, 400, id="validation"),
        pytest.param({"title": "x", "amount": 100, "currency": "DEM"}, 400, id="currency"),
        pytest.param(b'{"title": "x", "amount": ', 400, id="malformed-json"),
        pytest.param(b'{"title": "x", "amount": NaN, "currency": "USD"}', 400, id="nan"),
        pytest.param(
            {"title": "x", "amount": 100, "currency": "USD", "zzz": 1}, 400, id="unknown-field"
        ),
    ],
)
def test_a_refused_request_is_not_remembered(
    client: FlaskClient, db: Session, stripe: StripeServer, bad: Any, status: int
) -> None:
    target = creation("offer", client, stripe)
    key = new_key()
    before = row_counts(db)
    headers = {**target.headers, HEADER: key}
    if isinstance(bad, bytes):
        refused = client.post(
            target.path, data=bad, content_type="application/json", headers=headers
        )
    else:
        refused = client.post(target.path, json=bad, headers=headers)
    assert_problem(refused, status)
    assert row_counts(db) == before, "a refused request left rows (an idempotency record?)"

    corrected = target.post(client, key)
    assert corrected.status_code == 201, corrected.get_data(as_text=True)
    assert REPLAYED not in corrected.headers
    again = target.post(client, key)
    assert again.headers.get(REPLAYED) == "true"
    assert again.json == corrected.json
    assert row_counts(db)["offers"] == before["offers"] + 1


def test_a_not_found_is_not_remembered(client: FlaskClient, db: Session) -> None:
    shop = open_shop(client)
    key = new_key()
    body = {"title": "x", "amount": 100, "currency": "USD"}
    headers = {**shop.headers, HEADER: key}
    missing = client.post(
        f"/v1/conversations/{new_id('conversation')}/offers", json=body, headers=headers
    )
    assert_problem(missing, 404)
    assert row_counts(db)["idempotency_records"] == 0
    right = client.post(
        f"/v1/conversations/{shop.conversation['id']}/offers", json=body, headers=headers
    )
    assert right.status_code == 201, right.json
    assert REPLAYED not in right.headers


def test_a_conflict_is_not_remembered(
    client: FlaskClient, db: Session, stripe: StripeServer
) -> None:
    """A refund of a sale not yet paid is a 409; once paid, the same request with the same
    key goes through."""
    shop = open_shop(client)
    checkout = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    sale = checkout.json["sale"]
    key = new_key()
    path = f"/v1/sales/{sale['id']}/refunds"
    headers = {**shop.headers, HEADER: key}

    early = client.post(path, json={"amount": 200}, headers=headers)
    assert_problem(early, 409)
    assert row_counts(db)["refunds"] == 0

    stripe.succeed(sale["payment_intent_id"])
    assert client.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers).json["state"] == "paid"
    later = client.post(path, json={"amount": 200}, headers=headers)
    assert later.status_code == 202, later.json
    assert REPLAYED not in later.headers
    assert row_counts(db)["refunds"] == 1


# --------------------------------------------------------------------------
# The key itself
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * 256, id="256-chars"),
        pytest.param("k" * 5000, id="5000-chars"),
        pytest.param("tab\there", id="tab"),
        pytest.param("del\x7f", id="del"),
        pytest.param("esc\x1b[0m", id="escape"),
    ],
)
@pytest.mark.parametrize("name", ["offer", "merchant", "checkout"])
def test_an_unacceptable_key_is_400(
    client: FlaskClient, db: Session, stripe: StripeServer, name: str, key: str
) -> None:
    target = creation(name, client, stripe)
    before = row_counts(db)
    stripe_calls = len(stripe.requests)
    response = target.post(client, key)
    problem = assert_problem(response, 400)
    assert HEADER in problem.get("errors", {}), problem
    assert row_counts(db) == before
    assert len(stripe.requests) == stripe_calls


@pytest.mark.parametrize(
    "key", ["k" * 255, "a", "order 42 / retry", "5f0c6e1a-7d0b-4c36-9a7e-2d0f3b1c9e84"]
)
def test_acceptable_keys(client: FlaskClient, db: Session, stripe: StripeServer, key: str) -> None:
    """Control for the refusals: up to 255 printable characters are fine."""
    target = creation("offer", client, stripe)
    first = target.post(client, key)
    assert first.status_code == 201, first.json
    again = target.post(client, key)
    assert again.headers.get(REPLAYED) == "true"
    assert again.json["id"] == first.json["id"]


# --------------------------------------------------------------------------
# Concurrency: real commits, many connections
# --------------------------------------------------------------------------

THREADS = 10


def test_concurrent_repeats_create_one_offer(app: Flask, committed: sessionmaker[Session]) -> None:
    """Ten requests with the same key at the same moment: one offer, one answer.

    Not the `client`/`db` fixtures: those put every request on one connection inside one
    transaction, where a lock can never be contended. Here each request runs on its own
    pooled connection and commits for real; `committed` empties the tables afterwards.
    """
    setup = app.test_client()
    shop = open_shop(setup)
    path = f"/v1/conversations/{shop.conversation['id']}/offers"
    body = {"title": "Espresso beans, 1 kg", "amount": 4200, "currency": "USD"}
    headers = {**shop.headers, HEADER: new_key()}

    barrier = threading.Barrier(THREADS)
    results: list[tuple[int, dict[str, Any], dict[str, str]] | BaseException] = [None] * THREADS  # type: ignore[list-item]

    def worker(index: int) -> None:
        try:
            client = app.test_client()
            barrier.wait(timeout=30)
            response = client.post(path, json=body, headers=headers)
            results[index] = (response.status_code, response.get_json(), dict(response.headers))
        except BaseException as exc:  # reported below, with the other answers
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request never finished"

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    statuses = [r[0] for r in results]  # type: ignore[index]
    assert statuses == [201] * THREADS, results
    ids = {r[1]["id"] for r in results}  # type: ignore[index]
    assert len(ids) == 1, ids
    replayed = [r[2].get(REPLAYED) for r in results]  # type: ignore[index]
    assert replayed.count("true") == THREADS - 1, replayed
    bodies = {json.dumps(r[1], sort_keys=True) for r in results}  # type: ignore[index]
    assert len(bodies) == 1, bodies

    with committed() as session:
        offers = session.scalar(
            select(func.count())
            .select_from(Offer)
            .where(Offer.conversation_id == shop.conversation["id"])
        )
        records = session.scalar(select(func.count()).select_from(IdempotencyRecord))
    # open_shop posted one offer itself, without a key.
    assert offers == 2, offers
    assert records == 1, records
