"""Bad input on the creating endpoints (issue 2, "Bad input"; SPEC section 5).

Every request here is refused with 400, 413 or 415 and an `application/problem+json`
document (`type`, `title`, `status`, `detail`, and `errors` naming the field where a
field is at fault), never a 500 and never a stack trace, and it changes nothing: the
row count of every table is the same before and after.

Each case is run against every creating endpoint it applies to:
POST /v1/merchants (operator), POST /v1/conversations, POST /v1/conversations/{id}/offers,
POST /v1/offers/{id}/touchpoints and POST /v1/sales/{id}/refunds.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.config import Settings
from commerce.models import metadata
from tests.helpers import OPERATOR, digits, open_shop
from tests.support.stripe_server import StripeServer

PROBLEM_JSON = "application/problem+json"
#: Stands in for a raw JSON token (NaN, a nested document...) inside a dumped body.
RAW = "\x01__raw__\x01"
#: What a response must never contain: signs of a stack trace or of the database's own words.
LEAKS = ("Traceback", 'File "', "psycopg", "sqlalchemy", "StringDataRightTruncation")


# --------------------------------------------------------------------------
# The endpoints under test
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    headers: dict[str, str]
    #: A fresh valid body (unique ids each call, so it would succeed if sent).
    valid: Callable[[], dict[str, Any]]
    #: The table a successful request adds a row to.
    table: str
    #: A string field of the body, and the longest value it accepts (None: a closed set).
    text_field: str
    max_len: int | None
    #: The amount field, on the endpoints that take money.
    amount_field: str | None = None
    currency_field: str | None = None
    #: Fields that may be null (null is a valid value there, not bad input).
    nullable: frozenset[str] = field(default_factory=frozenset)


def _merchant_body() -> dict[str, Any]:
    return {
        "name": "Blue Bottle Valencia St",
        "timezone": "America/Los_Angeles",
        "mids": [digits(15)],
        "chat_pages": [{"channel": "messenger", "page_id": digits(12)}],
    }


def _conversation_body() -> dict[str, Any]:
    return {"channel": "messenger", "thread_id": "t_" + digits(12), "customer_user_id": digits(16)}


def _offer_body() -> dict[str, Any]:
    return {"title": "Cold brew, 1 L", "amount": 1250, "currency": "USD"}


def _touchpoint_body() -> dict[str, Any]:
    return {"kind": "viewed", "external_id": "mid." + digits(12)}


def _refund_body() -> dict[str, Any]:
    return {"amount": 100, "reason": "requested_by_customer"}


TARGET_NAMES = ["merchant", "conversation", "offer", "touchpoint", "refund"]


def paid_sale(client: FlaskClient, stripe: StripeServer, shop: Any) -> dict[str, Any]:
    """Check the shop's offer out and have the customer pay: a sale that can be refunded."""
    checkout = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    assert checkout.status_code == 201, checkout.json
    sale = checkout.json["sale"]
    stripe.succeed(sale["payment_intent_id"])
    synced = client.post(f"/v1/sales/{sale['id']}/sync", headers=shop.headers)
    assert synced.status_code == 200, synced.json
    assert synced.json["state"] == "paid", synced.json
    return synced.json


@pytest.fixture
def target(request: pytest.FixtureRequest, client: FlaskClient, stripe: StripeServer) -> Target:
    name = request.param
    if name == "merchant":
        return Target(name, "/v1/merchants", OPERATOR, _merchant_body, "merchants", "name", 200)
    shop = open_shop(client)
    if name == "conversation":
        return Target(
            name,
            "/v1/conversations",
            shop.headers,
            _conversation_body,
            "conversations",
            "thread_id",
            128,
        )
    if name == "offer":
        return Target(
            name,
            f"/v1/conversations/{shop.conversation['id']}/offers",
            shop.headers,
            _offer_body,
            "offers",
            "title",
            200,
            amount_field="amount",
            currency_field="currency",
        )
    if name == "touchpoint":
        return Target(
            name,
            f"/v1/offers/{shop.offer['id']}/touchpoints",
            shop.headers,
            _touchpoint_body,
            "touchpoints",
            "external_id",
            128,
            nullable=frozenset({"external_id", "occurred_at"}),
        )
    if name == "refund":
        sale = paid_sale(client, stripe, shop)
        return Target(
            name,
            f"/v1/sales/{sale['id']}/refunds",
            shop.headers,
            _refund_body,
            "refunds",
            "reason",
            None,
            amount_field="amount",
            nullable=frozenset({"amount", "reason"}),
        )
    raise AssertionError(f"unknown target {name!r}")


def only(*names: str) -> Any:
    """Parametrize the `target` fixture with some of the endpoints."""
    return pytest.mark.parametrize("target", list(names), indirect=True)


every_target = only(*TARGET_NAMES)
money_targets = only("offer", "refund")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def row_counts(db: Session) -> dict[str, int]:
    """The number of rows in every table the application owns."""
    return {
        table.name: db.scalar(select(func.count()).select_from(table))
        for table in metadata.sorted_tables
    }


def with_raw(body: dict[str, Any], key: str, raw: str) -> bytes:
    """`body` as JSON with `key`'s value replaced by the raw JSON text `raw`."""
    document = dict(body)
    document[key] = RAW
    text = json.dumps(document)
    placeholder = json.dumps(RAW)
    assert placeholder in text
    return text.replace(placeholder, raw).encode()


def send(
    client: FlaskClient, target: Target, data: bytes, content_type: str | None = "application/json"
) -> TestResponse:
    kwargs: dict[str, Any] = {"data": data, "headers": target.headers}
    if content_type is not None:
        kwargs["content_type"] = content_type
    return client.post(target.path, **kwargs)


def assert_problem(
    response: TestResponse, status: int | set[int], error_field: str | None = None
) -> dict[str, Any]:
    """A problem document (RFC 9457) with the expected status; returns its body."""
    text = response.get_data(as_text=True)
    allowed = status if isinstance(status, set) else {status}
    assert response.status_code in allowed, (response.status_code, text[:500])
    assert response.mimetype == PROBLEM_JSON, (response.mimetype, text[:500])
    body = json.loads(text)
    assert isinstance(body, dict), body
    for key in ("type", "title", "status", "detail"):
        assert key in body, (key, body)
    assert body["status"] == response.status_code, body
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key].strip(), body
    for leak in LEAKS:
        assert leak not in text, (leak, text[:500])
    if error_field is not None:
        errors = body.get("errors")
        assert isinstance(errors, dict), f"no per-field errors naming {error_field!r}: {body}"
        assert error_field in errors, f"errors do not name {error_field!r}: {body}"
    return body


def assert_refused(
    client: FlaskClient,
    db: Session,
    target: Target,
    data: bytes,
    *,
    status: int | set[int] = 400,
    error_field: str | None = None,
    content_type: str | None = "application/json",
) -> dict[str, Any]:
    before = row_counts(db)
    response = send(client, target, data, content_type)
    body = assert_problem(response, status, error_field)
    assert row_counts(db) == before, "a refused request changed the database"
    return body


# --------------------------------------------------------------------------
# Controls: the valid body succeeds, so every refusal below is the bad part's doing
# --------------------------------------------------------------------------


@every_target
def test_valid_body_is_accepted_and_adds_one_row(
    client: FlaskClient, db: Session, target: Target
) -> None:
    before = row_counts(db)
    response = send(client, target, json.dumps(target.valid()).encode())
    assert response.status_code in (200, 201, 202), response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert row_counts(db)[target.table] == before[target.table] + 1


# --------------------------------------------------------------------------
# The body as a whole: syntax, content type, size, depth, encoding
# --------------------------------------------------------------------------

MALFORMED = {
    "truncated": lambda t: json.dumps(t.valid()).encode()[:-1],
    "single-quotes": lambda t: json.dumps(t.valid()).replace('"', "'").encode(),
    "trailing-comma": lambda t: json.dumps(t.valid()).encode()[:-1] + b", }",
    "trailing-garbage": lambda t: json.dumps(t.valid()).encode() + b" x",
    "two-documents": lambda t: json.dumps(t.valid()).encode() * 2,
    "whitespace-only": lambda t: b"   \n ",
    "bare-word": lambda t: b"hello",
    "unquoted-key": lambda t: b"{" + t.text_field.encode() + b': "x"}',
    "raw-newline-in-string": lambda t: with_raw(t.valid(), t.text_field, '"a\nb"'),
    "bad-escape": lambda t: with_raw(t.valid(), t.text_field, r'"a\qb"'),
    "truncated-unicode-escape": lambda t: with_raw(t.valid(), t.text_field, r'"a\u12"'),
    "javascript-comment": lambda t: b"/* hi */ " + json.dumps(t.valid()).encode(),
}


@every_target
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json(client: FlaskClient, db: Session, target: Target, case: str) -> None:
    assert_refused(client, db, target, MALFORMED[case](target))


@every_target
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/octet-stream",
        None,  # no Content-Type at all
    ],
)
def test_wrong_content_type_is_415(
    client: FlaskClient, db: Session, target: Target, content_type: str | None
) -> None:
    # The body is valid JSON: only the declared type is wrong.
    assert_refused(
        client,
        db,
        target,
        json.dumps(target.valid()).encode(),
        status=415,
        content_type=content_type,
    )


@every_target
@pytest.mark.parametrize("how", ["long-string", "whitespace", "many-fields"])
def test_body_over_the_limit_is_413(
    client: FlaskClient, db: Session, settings: Settings, target: Target, how: str
) -> None:
    limit = settings.max_body_bytes
    assert limit == 256 * 1024
    body = target.valid()
    if how == "long-string":
        body[target.text_field] = "a" * (limit + 1)
        data = json.dumps(body).encode()
    elif how == "whitespace":
        data = json.dumps(body).encode() + b" " * (limit + 1)
    else:
        data = json.dumps({**body, **{f"k{i}": i for i in range(limit // 8)}}).encode()
    assert len(data) > limit
    assert_refused(client, db, target, data, status=413)


@every_target
@pytest.mark.parametrize(
    "nested",
    [
        pytest.param("[" * 5000 + "]" * 5000, id="arrays-5000"),
        pytest.param('{"a":' * 5000 + "1" + "}" * 5000, id="objects-5000"),
        pytest.param("[" * 100_000, id="unclosed-arrays-100000"),
        pytest.param('[{"a":' * 2000 + "[]" + "}]" * 2000, id="mixed-4000"),
    ],
)
def test_deeply_nested_json(client: FlaskClient, db: Session, target: Target, nested: str) -> None:
    assert_refused(client, db, target, with_raw(target.valid(), target.text_field, nested))


@every_target
def test_deeply_nested_top_level(client: FlaskClient, db: Session, target: Target) -> None:
    assert_refused(client, db, target, b"[" * 20_000 + b"]" * 20_000)


@every_target
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinities(
    client: FlaskClient, db: Session, target: Target, constant: str
) -> None:
    key = target.amount_field or target.text_field
    assert_refused(client, db, target, with_raw(target.valid(), key, constant))


@every_target
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(r'"a\u0000b"', id="nul"),
        pytest.param(r'"\u0000"', id="only-nul"),
        pytest.param(r'"a\ud800"', id="lone-high-surrogate"),
        pytest.param(r'"\udfffa"', id="lone-low-surrogate"),
        pytest.param(r'"\ude00\ud83d"', id="reversed-surrogate-pair"),
    ],
)
def test_nul_and_lone_surrogates(
    client: FlaskClient, db: Session, target: Target, value: str
) -> None:
    assert_refused(client, db, target, with_raw(target.valid(), target.text_field, value))


@every_target
@pytest.mark.parametrize("key", [r"\u0000", r"\ud800", r"a\u0000"])
def test_nul_and_lone_surrogates_in_keys(
    client: FlaskClient, db: Session, target: Target, key: str
) -> None:
    data = json.dumps(target.valid()).encode()[:-1] + f', "{key}": 1}}'.encode()
    assert_refused(client, db, target, data)


@every_target
def test_duplicate_keys(client: FlaskClient, db: Session, target: Target) -> None:
    body = target.valid()
    first = json.dumps(body).encode()[:-1]
    # The same key again, with a value that would be valid on its own.
    data = first + b", " + json.dumps(target.text_field).encode() + b": "
    data += json.dumps(body[target.text_field]).encode() + b"}"
    assert_refused(client, db, target, data)


@every_target
def test_duplicate_keys_in_a_nested_or_first_position(
    client: FlaskClient, db: Session, target: Target
) -> None:
    body = target.valid()
    key = next(iter(body))
    data = b"{" + json.dumps(key).encode() + b": " + json.dumps(body[key]).encode() + b", "
    data += json.dumps(body).encode()[1:]
    assert_refused(client, db, target, data)


@every_target
@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="utf8-bom"),
        pytest.param(lambda text: text.encode("utf-16"), id="utf16-with-bom"),
        pytest.param(lambda text: text.encode("utf-16-le"), id="utf16-le"),
        pytest.param(lambda text: text.encode("utf-32"), id="utf32"),
    ],
)
def test_bom_and_other_encodings(
    client: FlaskClient, db: Session, target: Target, encode: Callable[[str], bytes]
) -> None:
    assert_refused(client, db, target, encode(json.dumps(target.valid())))


@every_target
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff", id="ff"),
        pytest.param(b"\xc0\xaf", id="overlong-slash"),
        pytest.param(b"\xed\xa0\x80", id="cesu-surrogate"),
        pytest.param(b"\xe2\x82", id="truncated-sequence"),
        pytest.param(b"\x80", id="lone-continuation"),
        pytest.param(b"\xf5\x80\x80\x80", id="above-u10ffff"),
        pytest.param(b"caf\xe9", id="latin-1"),
    ],
)
def test_invalid_utf8(client: FlaskClient, db: Session, target: Target, raw: bytes) -> None:
    data = with_raw(target.valid(), target.text_field, '"PLACEHOLDER"')
    assert_refused(client, db, target, data.replace(b"PLACEHOLDER", raw))


@every_target
@pytest.mark.parametrize("document", ["[]", "[{}]", '"text"', "1", "true", "null", "0.5"])
def test_body_that_is_not_an_object(
    client: FlaskClient, db: Session, target: Target, document: str
) -> None:
    assert_refused(client, db, target, document.encode())


# --------------------------------------------------------------------------
# Fields: unknown, wrong type, too long
# --------------------------------------------------------------------------


@every_target
@pytest.mark.parametrize("name", ["merchant_id", "id", "zzz_unknown", "Amount", "created_at"])
def test_unknown_fields(client: FlaskClient, db: Session, target: Target, name: str) -> None:
    body = target.valid()
    if name in body:
        pytest.skip(f"{name} is a known field of {target.name}")
    body[name] = "mer_" + "A" * 22 if name == "merchant_id" else "x"
    assert_refused(client, db, target, json.dumps(body).encode(), error_field=name)


@every_target
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(123, id="int"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
        pytest.param(["x"], id="list"),
        pytest.param({"x": "y"}, id="object"),
        pytest.param(None, id="null"),
        pytest.param("", id="empty"),
    ],
)
def test_wrong_type_for_a_string_field(
    client: FlaskClient, db: Session, target: Target, value: Any
) -> None:
    if value is None and target.text_field in target.nullable:
        pytest.skip(f"null is a valid {target.text_field}")
    body = target.valid()
    body[target.text_field] = value
    assert_refused(client, db, target, json.dumps(body).encode(), error_field=target.text_field)


@every_target
@pytest.mark.parametrize("extra", [1, 1000, 100_000])
def test_over_long_strings(client: FlaskClient, db: Session, target: Target, extra: int) -> None:
    body = target.valid()
    marker = "Q" + secrets.token_hex(4)
    length = (target.max_len or 40) + extra
    body[target.text_field] = (marker + "x" * length)[:length]
    problem = assert_refused(
        client, db, target, json.dumps(body).encode(), error_field=target.text_field
    )
    # The document names the field; it does not echo the offending value.
    assert marker not in json.dumps(problem)


@every_target
def test_string_at_its_limit_is_accepted(client: FlaskClient, db: Session, target: Target) -> None:
    """Control for the over-long cases: exactly the limit goes through."""
    if target.max_len is None:
        pytest.skip(f"{target.text_field} is a closed set of values")
    body = target.valid()
    body[target.text_field] = ("t" + digits(20) + "x" * target.max_len)[: target.max_len]
    before = row_counts(db)
    response = send(client, target, json.dumps(body).encode())
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    assert row_counts(db)[target.table] == before[target.table] + 1


@every_target
@pytest.mark.parametrize("char", ["\x01", "\x08", "\x1b", "\r"])
def test_control_characters_in_strings(
    client: FlaskClient, db: Session, target: Target, char: str
) -> None:
    body = target.valid()
    body[target.text_field] = f"a{char}b"
    assert_refused(client, db, target, json.dumps(body).encode(), error_field=target.text_field)


# --------------------------------------------------------------------------
# Money: amounts and currencies
# --------------------------------------------------------------------------

BAD_AMOUNTS = {
    "float-4.5": "4.5",
    "float-4.0": "4.0",
    "float-exponent": "1e3",
    "float-overflowing-to-inf": "1e400",
    "float-tiny": "1e-400",
    "true": "true",
    "false": "false",
    "zero": "0",
    "negative-zero": "-0",
    "negative-zero-float": "-0.0",
    "negative": "-1",
    "negative-large": "-1250",
    "above-max": "100000000",
    "far-above-max": "1000000000000",
    "above-int64": "9223372036854775808",
    "string": '"1250"',
    "string-decimal": '"12.50"',
    "list": "[1250]",
    "object": '{"value": 1250}',
}


@money_targets
@pytest.mark.parametrize("case", list(BAD_AMOUNTS))
def test_bad_amounts(client: FlaskClient, db: Session, target: Target, case: str) -> None:
    assert target.amount_field is not None
    data = with_raw(target.valid(), target.amount_field, BAD_AMOUNTS[case])
    assert_refused(client, db, target, data, error_field=target.amount_field)


@money_targets
def test_huge_integer_amount(client: FlaskClient, db: Session, target: Target) -> None:
    """A 40-digit integer is refused before Python spends time on it (a 400, not a 500)."""
    assert target.amount_field is not None
    data = with_raw(target.valid(), target.amount_field, "9" * 40)
    assert_refused(client, db, target, data)


@money_targets
def test_huge_integer_amount_thousands_of_digits(
    client: FlaskClient, db: Session, target: Target
) -> None:
    assert target.amount_field is not None
    data = with_raw(target.valid(), target.amount_field, "1" * 5000)
    assert_refused(client, db, target, data)


@only("offer")
def test_null_amount_on_an_offer(client: FlaskClient, db: Session, target: Target) -> None:
    assert_refused(
        client, db, target, with_raw(target.valid(), "amount", "null"), error_field="amount"
    )


@only("offer")
@pytest.mark.parametrize("amount", [1, 99_999_999])
def test_amount_bounds_are_inclusive(
    client: FlaskClient, db: Session, target: Target, amount: int
) -> None:
    before = row_counts(db)
    response = send(client, target, json.dumps({**target.valid(), "amount": amount}).encode())
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.json["amount"] == amount
    assert row_counts(db)["offers"] == before["offers"] + 1


@only("refund")
def test_refund_above_what_was_paid(client: FlaskClient, db: Session, target: Target) -> None:
    """The sale is 1250 cents: 1251 is within the currency's bounds but not refundable."""
    assert_refused(client, db, target, json.dumps({"amount": 1251}).encode(), error_field="amount")


@only("offer")
@pytest.mark.parametrize(
    "code",
    [
        pytest.param("ZZZ", id="unknown-ZZZ"),
        pytest.param("ABC", id="unknown-ABC"),
        pytest.param("DEM", id="withdrawn-DEM"),
        pytest.param("VEF", id="withdrawn-VEF"),
        pytest.param("FRF", id="withdrawn-FRF"),
        pytest.param("ZWD", id="withdrawn-ZWD"),
        pytest.param("XAU", id="no-minor-unit-XAU"),
        pytest.param("XDR", id="no-minor-unit-XDR"),
        pytest.param("XTS", id="no-minor-unit-XTS"),
        pytest.param("XXX", id="no-minor-unit-XXX"),
        pytest.param("dem", id="withdrawn-lowercase"),
        pytest.param("xau", id="no-minor-unit-lowercase"),
        pytest.param("", id="empty"),
        pytest.param("US", id="two-letters"),
        pytest.param("USDX", id="four-letters"),
        pytest.param(" USD", id="leading-space"),
        pytest.param("USD ", id="trailing-space"),
        pytest.param("U$D", id="symbol"),
        pytest.param("840", id="numeric-code-string"),
        pytest.param("\u00dcSD", id="non-ascii"),
        pytest.param("\uff35SD", id="fullwidth"),
        pytest.param(840, id="numeric-code"),
        pytest.param(None, id="null"),
        pytest.param(["USD"], id="list"),
    ],
)
def test_bad_currencies(client: FlaskClient, db: Session, target: Target, code: Any) -> None:
    body = {**target.valid(), "currency": code}
    assert_refused(client, db, target, json.dumps(body).encode(), error_field="currency")


@only("offer")
@pytest.mark.parametrize(
    ("sent", "stored"), [("usd", "USD"), ("eur", "EUR"), ("Jpy", "JPY"), ("kwd", "KWD")]
)
def test_lowercase_currency_is_accepted(
    client: FlaskClient, db: Session, target: Target, sent: str, stored: str
) -> None:
    before = row_counts(db)
    response = send(client, target, json.dumps({**target.valid(), "currency": sent}).encode())
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.json["currency"] == stored
    assert row_counts(db)["offers"] == before["offers"] + 1


@only("offer")
def test_valid_surrogate_pair_is_accepted(client: FlaskClient, db: Session, target: Target) -> None:
    """Control for the lone-surrogate cases: an escaped pair is an ordinary character."""
    data = with_raw(target.valid(), "title", r'"Cold brew \ud83d\ude00"')
    response = send(client, target, data)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.json["title"] == "Cold brew \U0001f600"


# --------------------------------------------------------------------------
# Other fields of the creating endpoints
# --------------------------------------------------------------------------

OTHER_FIELDS: list[Any] = [
    pytest.param("offer", "quantity", 0, id="offer-quantity-zero"),
    pytest.param("offer", "quantity", -1, id="offer-quantity-negative"),
    pytest.param("offer", "quantity", 2.0, id="offer-quantity-float"),
    pytest.param("offer", "quantity", 10_001, id="offer-quantity-too-many"),
    pytest.param("offer", "click_window_seconds", 1.5, id="offer-click-window-float"),
    pytest.param("offer", "click_window_seconds", 0, id="offer-click-window-zero"),
    pytest.param("offer", "view_window_seconds", -60, id="offer-view-window-negative"),
    pytest.param("offer", "return_period_days", 366, id="offer-return-period-too-long"),
    pytest.param("offer", "expires_at", "tomorrow", id="offer-expires-not-a-time"),
    pytest.param("offer", "expires_at", "2999-01-01T00:00:00", id="offer-expires-no-offset"),
    pytest.param("offer", "expires_at", "2999-13-45T00:00:00Z", id="offer-expires-invalid-date"),
    pytest.param("offer", "expires_at", "2001-01-01T00:00:00Z", id="offer-expires-past"),
    pytest.param(
        "offer", "expires_at", "9999-12-31T23:59:59-14:00", id="offer-expires-beyond-year-9999"
    ),
    pytest.param("offer", "expires_at", 1_900_000_000, id="offer-expires-epoch-number"),
    pytest.param("touchpoint", "kind", "purchased", id="touchpoint-kind-unknown"),
    pytest.param("touchpoint", "kind", "VIEWED", id="touchpoint-kind-uppercase"),
    pytest.param("touchpoint", "occurred_at", "2999-01-01T00:00:00Z", id="touchpoint-future"),
    pytest.param("touchpoint", "occurred_at", "2020-01-01T00:00:00", id="touchpoint-no-offset"),
    pytest.param(
        "touchpoint", "occurred_at", "0001-01-01T00:00:00+14:00", id="touchpoint-before-year-1"
    ),
    pytest.param("touchpoint", "external_id", "has space", id="touchpoint-external-id-space"),
    pytest.param("touchpoint", "external_id", "caf\u00e9", id="touchpoint-external-id-non-ascii"),
    pytest.param("conversation", "channel", "telegram", id="conversation-channel-unknown"),
    pytest.param("conversation", "customer_user_id", "a b", id="conversation-customer-space"),
    pytest.param("conversation", "customer_user_id", "u" * 129, id="conversation-customer-long"),
    pytest.param("refund", "reason", "because", id="refund-reason-unknown"),
    pytest.param("merchant", "timezone", "Mars/Olympus_Mons", id="merchant-timezone-unknown"),
    pytest.param("merchant", "timezone", "t" * 65, id="merchant-timezone-long"),
    pytest.param("merchant", "mids", ["1" * 16], id="merchant-mid-long"),
    pytest.param("merchant", "mids", ["12-34"], id="merchant-mid-punctuation"),
    pytest.param("merchant", "mids", ["123", "123"], id="merchant-mid-twice"),
    pytest.param("merchant", "mids", [str(i) for i in range(101)], id="merchant-mids-too-many"),
    pytest.param("merchant", "mids", "123", id="merchant-mids-not-a-list"),
    pytest.param(
        "merchant",
        "chat_pages",
        [{"channel": "messenger", "page_id": "p" * 65}],
        id="merchant-page-id-long",
    ),
    pytest.param(
        "merchant",
        "chat_pages",
        [{"channel": "fax", "page_id": "1"}],
        id="merchant-page-channel-unknown",
    ),
    pytest.param(
        "merchant",
        "chat_pages",
        [{"channel": "messenger", "page_id": "1", "x": 1}],
        id="merchant-page-unknown-field",
    ),
    pytest.param("merchant", "stripe_account", "acct_" + "a" * 65, id="merchant-stripe-account-70"),
    pytest.param("merchant", "stripe_account", "acct_" + "a" * 64, id="merchant-stripe-account-69"),
    pytest.param("merchant", "stripe_account", "cus_123", id="merchant-stripe-account-not-acct"),
]


@pytest.mark.parametrize(("target", "name", "value"), OTHER_FIELDS, indirect=["target"])
def test_other_invalid_fields(
    client: FlaskClient, db: Session, target: Target, name: str, value: Any
) -> None:
    body = {**target.valid(), name: value}
    assert_refused(client, db, target, json.dumps(body).encode(), error_field=name)


@every_target
def test_missing_required_fields(client: FlaskClient, db: Session, target: Target) -> None:
    if target.name == "refund":
        pytest.skip("every field of a refund is optional: {} refunds what is left")
    assert_refused(client, db, target, b"{}")


# --------------------------------------------------------------------------
# Faults the JSON parser finds: the problem should still name the field
# --------------------------------------------------------------------------


@only("offer")
@pytest.mark.parametrize(
    ("key", "raw"),
    [
        pytest.param("amount", "NaN", id="amount-NaN"),
        pytest.param("amount", "Infinity", id="amount-Infinity"),
        pytest.param("amount", "-Infinity", id="amount-minus-Infinity"),
        pytest.param("amount", "9" * 40, id="amount-40-digits"),
        pytest.param("title", r'"a\u0000b"', id="title-nul"),
        pytest.param("title", r'"a\ud800"', id="title-lone-surrogate"),
    ],
)
def test_parser_level_faults_name_the_field(
    client: FlaskClient, db: Session, target: Target, key: str, raw: str
) -> None:
    """Issue 2: bad input answers "with a problem document naming the field". A NaN in
    `amount` or a NUL in `title` is a fault of that field, though the JSON parser finds it."""
    assert_refused(client, db, target, with_raw(target.valid(), key, raw), error_field=key)


@only("offer")
def test_duplicate_key_names_the_field(client: FlaskClient, db: Session, target: Target) -> None:
    data = b'{"title": "a", "amount": 1, "amount": 2, "currency": "USD"}'
    assert_refused(client, db, target, data, error_field="amount")


# --------------------------------------------------------------------------
# Ids in the path and list queries: bad input there is a 404 or a 400, never a 500
# --------------------------------------------------------------------------


#: A valid body for each POST route that takes an id, by the end of its rule: the answer
#: must be about the id, not about a missing field.
ROUTE_BODIES: dict[str, dict[str, Any] | None] = {
    "/offers": _offer_body(),
    "/touchpoints": _touchpoint_body(),
    "/refunds": {"amount": 100},
    "/checkout": None,
    "/sync": None,
}


def _route_body(method: str, rule: str) -> dict[str, Any] | None:
    if method != "POST":
        return None
    for suffix, body in ROUTE_BODIES.items():
        if rule.endswith(suffix):
            return body
    raise AssertionError(f"no valid body known for POST {rule}: add it to ROUTE_BODIES")


#: The merchant routes' id converters. (Operator routes and any route with another
#: converter are swept for ownership and keys in test_isolation.py.)
MERCHANT_ID_CONVERTERS = {"conversation_id", "offer_id", "sale_id"}


def _id_routes(app: Flask) -> list[tuple[str, str, str]]:
    """(method, rule, converter name) for every /v1 rule with a merchant id converter."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or not rule.arguments:
            continue
        if not rule.arguments <= MERCHANT_ID_CONVERTERS:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule, next(iter(rule.arguments))))
    return found


@pytest.mark.parametrize(
    "raw_id",
    [
        pytest.param("%00", id="nul"),
        pytest.param("ofr_%00AAAAAAAAAAAAAAAAAAAAA", id="nul-inside-an-id-shape"),
        pytest.param("%ED%A0%80", id="encoded-surrogate"),
        pytest.param("%FF%FE", id="invalid-utf8"),
        pytest.param("x" * 4000, id="very-long"),
        pytest.param("%27%20OR%201%3D1--", id="sql-ish"),
        pytest.param("%E2%80%AE", id="rtl-override"),
    ],
)
def test_malformed_ids_in_the_path_answer_404(
    app: Flask, client: FlaskClient, db: Session, raw_id: str
) -> None:
    shop = open_shop(client)
    routes = _id_routes(app)
    assert len(routes) >= 8, routes
    before = row_counts(db)
    failures = []
    for method, rule, name in routes:
        path = re.sub(r"<[^>]+>", raw_id, rule)
        kwargs: dict[str, Any] = {"headers": shop.headers}
        body = _route_body(method, rule)
        if body is not None:
            kwargs["json"] = body
        response = client.open(path, method=method, **kwargs)
        try:
            assert_problem(response, 404)
        except AssertionError as exc:
            failures.append(f"{method} {rule} ({name}): {exc}")
    assert not failures, "\n".join(failures)
    assert row_counts(db) == before


def _cursor(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"limit": "0"}, id="limit-zero"),
        pytest.param({"limit": "101"}, id="limit-too-big"),
        pytest.param({"limit": "abc"}, id="limit-not-a-number"),
        pytest.param({"limit": "1e3"}, id="limit-exponent"),
        pytest.param({"state": "shipped"}, id="state-unknown"),
        pytest.param({"cursor": "%%%"}, id="cursor-garbage"),
        pytest.param({"cursor": "c" * 600}, id="cursor-too-long"),
        pytest.param({"cursor": _cursor({"a": 1})}, id="cursor-object"),
        pytest.param({"cursor": _cursor(["yesterday", "sale_x"])}, id="cursor-bad-time"),
        pytest.param(
            {"cursor": _cursor(["2020-01-01T00:00:00+00:00", "sale_\u0000"])}, id="cursor-nul"
        ),
        pytest.param(
            {"cursor": _cursor(["2020-01-01T00:00:00+00:00", "sale_\ud800"])},
            id="cursor-lone-surrogate",
        ),
    ],
)
def test_bad_list_queries_are_400(client: FlaskClient, db: Session, query: dict[str, str]) -> None:
    shop = open_shop(client)
    name = next(iter(query))
    response = client.get("/v1/sales", query_string=query, headers=shop.headers)
    assert_problem(response, 400, name)
