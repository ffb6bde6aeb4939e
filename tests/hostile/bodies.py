"""The request bodies of the API's operations, read from /openapi.json: valid bodies to start
from, and the path of every string field in them.

A body is valid for its route when sent once; each call makes fresh unique values (MIDs,
page and thread ids). A POST with a body that has no entry in `VALID_BODIES` fails the tests
that use it, naming the operation: a route added later is never skipped silently.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from tests.api.test_isolation import OPERATOR_PREFIXES
from tests.helpers import OPERATOR, digits

Path = tuple[str | int, ...]


def _yesterday() -> str:
    return (datetime.now(UTC) - timedelta(days=1)).isoformat()


#: A fresh valid body for each operation with a JSON body, by its path in the document.
VALID_BODIES: dict[str, Callable[[], dict[str, Any]]] = {
    "/v1/merchants": lambda: {
        "name": "Blue Bottle Mission St",
        "timezone": "America/Los_Angeles",
        "mids": [digits(15)],
        "chat_pages": [{"channel": "messenger", "page_id": digits(12)}],
        "stripe_account": "acct_" + secrets.token_hex(8),
    },
    "/v1/partners": lambda: {"name": "Bank of the Bay"},
    "/v1/partners/{partner_id}/agreements": lambda: {
        "scopes": ["transactions"],
        "purposes": ["sales_attribution"],
        "starts_at": _yesterday(),
        "retention_days": 30,
    },
    "/v1/partners/{partner_id}/consents": lambda: {
        "customer_ref": "cust_" + secrets.token_hex(6),
        "status": "granted",
        "scopes": ["transactions"],
        "purposes": ["sales_attribution"],
        "chat": {"channel": "messenger", "user_id": digits(16)},
        "cards": [{"token": "tok_" + secrets.token_hex(6), "brand": "visa", "last4": "4242"}],
    },
    "/v1/conversations": lambda: {
        "channel": "messenger",
        "thread_id": "t_" + digits(12),
        "customer_user_id": digits(16),
    },
    "/v1/conversations/{conversation_id}/offers": lambda: {
        "title": "Cold brew, 1 L",
        "amount": 1250,
        "currency": "USD",
    },
    "/v1/offers/{offer_id}/touchpoints": lambda: {
        "kind": "viewed",
        "external_id": "mid." + digits(12),
    },
    "/v1/sales/{sale_id}/refunds": lambda: {"amount": 1, "reason": "requested_by_customer"},
    "/v1/webhook-endpoints": lambda: {
        "url": "https://93.184.216.34/hooks",
        "event_types": ["sale.paid"],
    },
    "/v1/webhook-endpoints/{endpoint_id}/deliveries/redeliver": lambda: {"status": "delivered"},
    "/v1/reconciliation/exceptions/{exception_id}/acknowledge": lambda: {"note": "Checked."},
    "/v1/reconciliation/settings": lambda: {"amount_tolerance": 0, "time_window_seconds": 3600},
    "/v1/reconciliation/runs": lambda: {
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
    },
    "/v1/attribution/settings": lambda: {
        "click_window_seconds": 86_400,
        "view_window_seconds": 3_600,
        "return_period_days": 30,
    },
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body_schema: dict[str, Any] | None

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def operator(self) -> bool:
        return self.path.startswith(OPERATOR_PREFIXES)

    def url(self, ids: dict[str, str]) -> str:
        url = self.path
        for name, value in ids.items():
            url = url.replace("{" + name + "}", value)
        assert "{" not in url, f"{self.label}: no id known for {url}"
        return url

    def headers(self, merchant: dict[str, str]) -> dict[str, str]:
        return dict(OPERATOR if self.operator else merchant)

    def valid_body(self) -> dict[str, Any]:
        make = VALID_BODIES.get(self.path)
        if make is None:
            pytest.fail(
                f"{self.label} takes a JSON body and tests/hostile/bodies.py knows no valid one:"
                " add it to VALID_BODIES"
            )
        return make()


def document(app: Flask) -> dict[str, Any]:
    answer = app.test_client().get("/openapi.json")
    assert answer.status_code == 200
    return answer.json


def body_operations(app: Flask) -> list[Operation]:
    """Every operation of the document that takes a JSON body."""
    doc = document(app)
    found = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method not in ("post", "put", "patch"):
                continue
            content = (operation.get("requestBody") or {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            found.append(Operation(method.upper(), path, resolve(doc, schema) if schema else None))
    return found


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with `$ref`, `allOf` and `anyOf` (of one object) replaced by what they name."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return resolve(doc, doc["components"]["schemas"][name])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            parts = [resolve(doc, part) for part in schema[key]]
            objects = [p for p in parts if p.get("properties")]
            return objects[0] if objects else parts[0]
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: resolve(doc, v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = resolve(doc, out["items"])
    return out


def string_fields(schema: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, dict]]:
    """(path, schema) of every string in a body schema; an array's strings at index 0."""
    kind = schema.get("type")
    if kind == "string":
        yield path, schema
    elif kind == "array" and "items" in schema:
        yield from string_fields(schema["items"], (*path, 0))
    for name, sub in (schema.get("properties") or {}).items():
        yield from string_fields(sub, (*path, name))


def get_at(document: Any, path: Path) -> Any:
    node = document
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or len(node) <= part:
                return KeyError
        elif not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def set_at(document: Any, path: Path, value: Any) -> bool:
    """Put `value` at `path` in the body; False when a parent on the way is missing."""
    parent = get_at(document, path[:-1])
    if parent is KeyError:
        return False
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(parent, list) or len(parent) <= last:
            return False
    elif not isinstance(parent, dict):
        return False
    parent[last] = value
    return True


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)
