"""Known-troublesome strings in every string field of every request body (issue 8, part 2).

Each operation of /openapi.json that takes a JSON body is sent a valid body with one string
field replaced by one of the strings below. The answer is never a 5xx: it is either a 2xx
whose stored value reads back exactly as sent (in the answer, and from the object's own GET
route when it has one), or a refusal, 400 or 422, as a problem document naming the field.

The fields come from the document, so a field or a route added later is covered without
being listed here. At the end the test checks that every kind of string was accepted by at
least one field: a run in which everything was refused would prove nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.hostile.bodies import Operation, body_operations, dotted, get_at, set_at, string_fields
from tests.hostile.world import World, make_world
from tests.support.stripe_server import StripeServer

PROBLEM_JSON = "application/problem+json"

TROUBLESOME = {
    "rtl-override": "abc\u202edcba\u202c",
    "rtl-marks": "\u200f\u05e9\u05dc\u05d5\u05dd\u200f \u0645\u0631\u062d\u0628\u0627",
    "zero-width": "a\u200bb\u200cc\u200dd\u2060e\ufeff",
    # A coffee with a variation selector, a flag, and two ZWJ sequences (a person at a
    # laptop with a skin tone, two people holding hands).
    "emoji": "\u2615\ufe0f \U0001f1fa\U0001f1f8 "
    "\U0001f469\U0001f3fd\u200d\U0001f4bb \U0001f9d1\u200d\U0001f91d\u200d\U0001f9d1",
    "astral-only": "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
    "combining-marks": "Z\u0351\u036b\u0343a\u0304\u036bl\u0346g\u0310o\u0335\u0353",
    "decomposed-accent": "cafe\u0301",
    "line-separators": "one\u2028two\u2029three\u0085",
    "sql-injection": "'; DROP TABLE sales; --",
    "sql-quote": "' OR '1'='1",
    "sql-comment": "1/**/UNION/**/SELECT/**/NULL--",
    "jinja-template": "{{ 7*7 }}{% raw %}",
    "format-string": "%s%n%x{0}${7*7}#{7*7}",
    "html": '<script>alert("x")</script>&amp;',
    "path-traversal": "../../etc/passwd",
    "backslashes": "\\\\server\\share\\",
    "newline-and-tab": "line one\n\tline two",
    "non-characters": "\ufffe\uffff\U0010ffff",
    "private-use": "\ue000\U000f0000",
    "nul": "a\x00b",
    "escape-char": "a\x1b[31mred",
    "very-long": "x" * 100_000,
}

#: Kinds that some field must accept and store exactly (the others may be refused everywhere:
#: a NUL, an escape character, 100,000 characters).
MUST_BE_STORED_SOMEWHERE = {*TROUBLESOME, "astral-at-max-length"} - {
    "nul",
    "escape-char",
    "very-long",
}

#: Where to read a created object back, by the prefix of its id.
READ_BACK = {
    "ofr_": "/v1/offers/{}",
    "cnv_": "/v1/conversations/{}",
    "prt_": "/v1/partners/{}",
    "sale_": "/v1/sales/{}",
}


@pytest.fixture
def world(client: FlaskClient, stripe: StripeServer, db: Session) -> World:
    return make_world(client, stripe, db)


def fitting(value: str, schema: dict[str, Any]) -> str:
    """The troublesome string cut to the field's maximum length, so that length is not
    the reason for a refusal (the 100,000-character string stays whole)."""
    limit = schema.get("maxLength")
    if limit is None or len(value) > 10_000:
        return value
    return value[:limit]


def check_field(
    client: FlaskClient, world: World, operation: Operation, path: tuple, value: str
) -> tuple[str | None, bool]:
    """Send the value in the field; (a failure, or None; whether it was stored)."""
    body = operation.valid_body()
    if not set_at(body, path, value):
        return f"{operation.label} {dotted(path)}: the valid body has no such field", False
    headers = operation.headers(world.merchant_headers)
    answer = client.open(
        operation.url(world.ids), method=operation.method, json=body, headers=headers
    )
    where = f"{operation.label} {dotted(path)}={value[:40]!r}"
    text = answer.get_data(as_text=True)
    if answer.status_code >= 500:
        return f"{where}: {answer.status_code} {text[:300]}", False
    if answer.status_code in (400, 422):
        if answer.mimetype != PROBLEM_JSON:
            return f"{where}: refused as {answer.mimetype}", False
        problem = json.loads(text)
        if "Traceback" in text or problem.get("status") != answer.status_code:
            return f"{where}: not a clean problem document: {text[:300]}", False
        return None, False
    if not 200 <= answer.status_code < 300:
        return f"{where}: {answer.status_code} {text[:300]}", False
    echoed = get_at(answer.json, path)
    if echoed is not KeyError and echoed != value:
        return f"{where}: stored as {echoed!r}", False
    object_id = answer.json.get("id") if isinstance(answer.json, dict) else None
    for prefix, route in READ_BACK.items():
        if isinstance(object_id, str) and object_id.startswith(prefix):
            again = client.get(route.format(object_id), headers=headers)
            if again.status_code != 200:
                return f"{where}: reading it back answered {again.status_code}", False
            read = get_at(again.json, path)
            if read is not KeyError and read != value:
                return f"{where}: read back as {read!r}", False
    return None, echoed is not KeyError


def test_troublesome_strings_in_every_string_field(
    app: Flask, client: FlaskClient, db: Session, world: World
) -> None:
    failures: list[str] = []
    stored: dict[str, list[str]] = {kind: [] for kind in [*TROUBLESOME, "astral-at-max-length"]}
    fields = 0
    for operation in body_operations(app):
        if operation.body_schema is None:
            continue
        for path, schema in string_fields(operation.body_schema):
            fields += 1
            cases = {kind: fitting(value, schema) for kind, value in TROUBLESOME.items()}
            if "maxLength" in schema:
                # As many 4-byte characters as the field allows: a column or a check that
                # counts bytes rather than characters would break here.
                cases["astral-at-max-length"] = "\U0001d518" * schema["maxLength"]
            for kind, value in cases.items():
                failure, kept = check_field(client, world, operation, path, value)
                if failure:
                    failures.append(f"[{kind}] {failure}")
                elif kept:
                    stored[kind].append(f"{operation.label} {dotted(path)}")
    assert fields >= 20, f"only {fields} string fields found in the document"
    assert not failures, "\n".join(failures)
    never = sorted(kind for kind in MUST_BE_STORED_SOMEWHERE if not stored[kind])
    assert not never, f"these strings were refused by every field: {never}"
