"""JSON that parsers disagree on, sent to every operation of /openapi.json that takes a body
and to the three webhook doors, correctly signed (issue 8, part 2): each is a 400 problem
document, never a 500, and nothing is stored.

tests/api/test_bad_input.py runs most of these cases, one by one, against the five creating
endpoints of the first API; this file runs them, and the ones it lacks (numbers outside a
double, a body of a hundred thousand open brackets, UTF-16, overlong and truncated UTF-8,
lone surrogates in nested keys, trailing data), against every operation the document lists,
operator routes and routes added since included, and against the doors, where the body is
signed so that the parser, not the signature check, is what refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.api.test_isolation import row_counts
from tests.conftest import CHAT_APP_SECRET, STRIPE_WEBHOOK_SECRETS
from tests.hostile.bodies import body_operations
from tests.hostile.world import World, make_world
from tests.support.stripe_server import StripeServer

PROBLEM_JSON = "application/problem+json"


def _nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


#: Raw bodies, each refused by the strict parser whatever the route.
EDGE_BODIES: dict[str, bytes] = {
    "duplicate-top-level-key": b'{"name": "a", "name": "b"}',
    "duplicate-nested-key": b'{"x": [{"k": 1, "k": 2}]}',
    "duplicate-key-differently-escaped": b'{"name": "a", "n\\u0061me": "b"}',
    "nesting-33-levels": _nested(33),
    "nesting-100000-levels": _nested(100_000),
    "unclosed-100000-levels": b"[" * 100_000,
    "integer-of-400-digits": b'{"amount": 1' + b"0" * 400 + b"}",
    "integer-of-100000-digits": b'{"amount": ' + b"9" * 100_000 + b"}",
    "float-1e400": b'{"amount": 1e400}',
    "float-minus-1e400": b'{"amount": -1e400}',
    "float-past-double": b'{"x": 1.7976931348623159e308}',
    "exponent-of-a-billion": b'{"x": 1e1000000000}',
    "nan": b'{"x": NaN}',
    "infinity": b'{"x": -Infinity}',
    "bom-utf8": b'\xef\xbb\xbf{"name": "a"}',
    "utf16-with-bom": '{"name": "a"}'.encode("utf-16"),
    "utf16-without-bom": '{"name": "a"}'.encode("utf-16-le"),
    "invalid-utf8-byte": b'{"name": "\xff"}',
    "overlong-utf8-slash": b'{"name": "\xc0\xaf"}',
    "truncated-utf8": b'{"name": "\xe2\x82"}',
    "utf8-encoded-surrogate": b'{"name": "\xed\xa0\x80"}',
    "escaped-lone-surrogate": b'{"name": "\\ud800"}',
    "escaped-lone-surrogate-in-a-nested-key": b'{"x": {"\\udfff": 1}}',
    "escaped-nul": b'{"name": "a\\u0000b"}',
    "raw-control-character": b'{"name": "a\x01b"}',
    "trailing-data": b'{"name": "a"} {"name": "b"}',
    "trailing-comma": b'{"name": "a",}',
    "single-quotes": b"{'name': 'a'}",
    "comment": b'{"name": "a" /* hi */}',
    "not-an-object": b'"just a string"',
    "null": b"null",
    "truncated": b'{"name": "a',
}


@pytest.fixture
def world(client: FlaskClient, stripe: StripeServer, db: Session) -> World:
    return make_world(client, stripe, db)


def assert_refused(answer, where: str, failures: list[str]) -> None:
    text = answer.get_data(as_text=True)
    if answer.status_code != 400 or answer.mimetype != PROBLEM_JSON or "Traceback" in text:
        failures.append(f"{where}: {answer.status_code} {answer.mimetype} {text[:200]}")


def test_every_body_route_refuses_json_edge_cases_with_400(
    app: Flask, client: FlaskClient, db: Session, world: World
) -> None:
    operations = [op for op in body_operations(app) if op.body_schema is not None]
    assert len(operations) >= 8, [op.label for op in operations]
    before = row_counts(db)
    failures: list[str] = []
    for operation in operations:
        headers = {**operation.headers(world.merchant_headers), "Content-Type": "application/json"}
        for case, raw in EDGE_BODIES.items():
            answer = client.open(
                operation.url(world.ids), method=operation.method, data=raw, headers=headers
            )
            assert_refused(answer, f"{operation.label} [{case}]", failures)
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before, "a refused body changed data"


# -- the doors --------------------------------------------------------------------------


def stripe_signed(raw: bytes) -> dict[str, str]:
    """Stripe's `v1` scheme over the raw bytes: HMAC-SHA256 of `<t>.<body>`, in hex."""
    now = int(time.time())
    mac = hmac.new(
        STRIPE_WEBHOOK_SECRETS[0].encode(), f"{now}.".encode() + raw, hashlib.sha256
    ).hexdigest()
    return {"Stripe-Signature": f"t={now},v1={mac}", "Content-Type": "application/json"}


def partner_signed(secret: str) -> Callable[[bytes], dict[str, str]]:
    """Standard Webhooks over the raw bytes: base64 HMAC-SHA256 of `<id>.<t>.<body>`."""

    def sign(raw: bytes) -> dict[str, str]:
        message_id, now = "msg_" + secrets.token_hex(8), int(time.time())
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{message_id}.{now}.".encode() + raw, hashlib.sha256).digest()
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(now),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json",
        }

    return sign


def chat_signed(raw: bytes) -> dict[str, str]:
    digest = hmac.new(CHAT_APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


@dataclass(frozen=True)
class Door:
    name: str
    path: str
    sign: Callable[[bytes], dict[str, str]]


def doors(world: World) -> list[Door]:
    return [
        Door("stripe", "/webhooks/stripe", stripe_signed),
        Door(
            "partner",
            f"/webhooks/partners/{world.partner['id']}",
            partner_signed(world.partner["webhook_secret"]),
        ),
        Door("chat", "/webhooks/chat/messenger", chat_signed),
    ]


def test_the_doors_refuse_signed_json_edge_cases_with_400(
    client: FlaskClient, db: Session, world: World
) -> None:
    # Control: the signing here is right, so a refusal below is the parser's.
    valid = json.dumps({"object": "page", "entry": []}).encode()
    assert (
        client.post("/webhooks/chat/messenger", data=valid, headers=chat_signed(valid)).status_code
        == 200
    )
    before = row_counts(db)
    failures: list[str] = []
    for door in doors(world):
        for case, raw in EDGE_BODIES.items():
            answer = client.post(door.path, data=raw, headers=door.sign(raw))
            assert_refused(answer, f"{door.name} door [{case}]", failures)
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before, "a refused body was stored"
