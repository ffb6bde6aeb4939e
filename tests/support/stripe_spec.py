"""Checks requests against Stripe's own OpenAPI document, and finds shared data.

Stripe's OpenAPI document (``spec3.yaml``) and example objects
(``fixtures3.json``) live in ``shared/data/stripe/`` beside the repository,
never inside it (spec section 7). Tests that need them call
``require_shared_data(...)`` and are skipped, with the reason, where that
folder is absent.

``check_request(method, path, params)`` answers what a request sent to the
test Stripe server would break in the real API: a path or method Stripe does
not have, a parameter the operation does not declare (at any depth, except
inside ``metadata``, whose keys are free), or a value of the wrong type or
outside an enum. It returns the problems as strings; an empty list means the
request is allowed.

The document is the one in ``shared/``; its API version may be older than the
one the SDK pins, so a parameter Stripe added later is reported as unknown.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

__all__ = [
    "REPO_ROOT",
    "SHARED_DATA",
    "STRIPE_FIXTURES",
    "STRIPE_SPEC",
    "RequestLike",
    "StripeSpec",
    "assert_allowed_by_spec",
    "check_request",
    "load_fixtures",
    "load_spec",
    "require_shared_data",
    "shared_data_path",
]

#: The repository root (this file is ``<root>/tests/support/stripe_spec.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: ``shared/data`` sits beside the repository, wherever it is cloned.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STRIPE_SPEC = "stripe/spec3.yaml"
STRIPE_FIXTURES = "stripe/fixtures3.json"

JSON = dict[str, Any]


def shared_data_path(name: str) -> Path:
    """The path of ``../shared/data/<name>`` (which may not exist)."""
    return SHARED_DATA / name


def require_shared_data(name: str) -> Path:
    """The path of ``../shared/data/<name>``, or skip the calling test when it is absent."""
    path = shared_data_path(name)
    if not path.exists():
        pytest.skip(
            f"reference data not available: ../shared/data/{name} is absent: "
            f"expected at {path}, beside the repository (it is never copied into it)"
        )
    return path


@functools.cache
def _load_spec_document(path: Path) -> JSON:
    import yaml  # a test dependency; imported here so the module loads without it

    # The document is 4 MB: the C loader reads it in about a second, the
    # pure-Python one in tens of seconds.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as stream:
        document = yaml.load(stream, Loader=loader)  # noqa: S506 - a SafeLoader
    if not isinstance(document, dict) or "paths" not in document:
        raise ValueError(f"{path} is not an OpenAPI document")
    return document


@functools.cache
def _load_fixtures_document(path: Path) -> JSON:
    with path.open(encoding="utf-8") as stream:
        document = json.load(stream)
    if not isinstance(document, dict) or not isinstance(document.get("resources"), dict):
        raise ValueError(f"{path} has no 'resources' object")
    return document


def load_fixtures() -> Mapping[str, JSON]:
    """Stripe's example objects by type (``"payment_intent"``, ``"refund"``...); skips if absent."""
    return _load_fixtures_document(require_shared_data(STRIPE_FIXTURES))["resources"]


def load_spec() -> StripeSpec:
    """Stripe's OpenAPI document, loaded once per process; skips the test if absent."""
    return _spec_for(require_shared_data(STRIPE_SPEC))


@functools.cache
def _spec_for(path: Path) -> StripeSpec:
    return StripeSpec(_load_spec_document(path))


class RequestLike(Protocol):
    """What the checker needs of a request (``stripe_server.RecordedRequest`` has it)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def params(self) -> JSON: ...


@dataclass(frozen=True)
class _Operation:
    template: str
    method: str
    body_schema: JSON | None  # the form schema of a POST
    query: Mapping[str, JSON]  # query parameter name -> schema


_HTTP_METHODS = frozenset({"get", "post", "delete", "put", "patch"})


class StripeSpec:
    """The operations of an OpenAPI document, matched by concrete path."""

    def __init__(self, document: JSON) -> None:
        self._document = document
        # (regex, template, number of templated segments) for each path.
        self._paths: list[tuple[re.Pattern[str], str, int]] = []
        self._operations: dict[tuple[str, str], _Operation] = {}
        for template, item in document["paths"].items():
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            self._paths.append((re.compile(f"^{pattern}$"), template, template.count("{")))
            for method, operation in item.items():
                if method not in _HTTP_METHODS or not isinstance(operation, dict):
                    continue
                content = (operation.get("requestBody") or {}).get("content") or {}
                form = content.get("application/x-www-form-urlencoded") or {}
                query = {
                    p["name"]: p.get("schema") or {}
                    for p in operation.get("parameters") or []
                    if p.get("in") == "query"
                }
                self._operations[(method.upper(), template)] = _Operation(
                    template, method.upper(), form.get("schema"), query
                )
        # Literal segments beat templates: /v1/payment_intents/search before /{intent}.
        self._paths.sort(key=lambda entry: entry[2])

    @property
    def version(self) -> str:
        return str(self._document.get("info", {}).get("version", "unknown"))

    def match_path(self, path: str) -> str | None:
        """The spec's template for a concrete path (``/v1/payment_intents/pi_1`` ->
        ``/v1/payment_intents/{intent}``), or None."""
        for pattern, template, _ in self._paths:
            if pattern.match(path):
                return template
        return None

    def schema(self, name: str) -> JSON:
        """A component schema (``"payment_intent"``, ``"refund"``...)."""
        return self._document["components"]["schemas"][name]

    def check(self, method: str, path: str, params: Mapping[str, Any]) -> list[str]:
        """Problems that Stripe's API would have with this request; [] when allowed."""
        method = method.upper()
        where = f"{method} {path}"
        template = self.match_path(path)
        if template is None:
            return [f"{where}: no such path in Stripe's API (spec {self.version})"]
        operation = self._operations.get((method, template))
        if operation is None:
            return [f"{where}: {template} has no {method} operation in Stripe's API"]
        problems: list[str] = []
        if method == "GET" or method == "DELETE":
            for name, value in params.items():
                schema = operation.query.get(name)
                if schema is None:
                    problems.append(f"{where}: unknown query parameter '{name}'")
                else:
                    self._check_value(value, schema, name, where, problems)
            return problems
        properties = (operation.body_schema or {}).get("properties") or {}
        for name, value in params.items():
            schema = properties.get(name)
            if schema is None:
                problems.append(
                    f"{where}: unknown parameter '{name}' (not in the operation's form schema)"
                )
            else:
                self._check_value(value, schema, name, where, problems)
        return problems

    # -- schema walking ------------------------------------------------------

    def _resolve(self, schema: JSON) -> JSON:
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/") or seen > 20:
                raise ValueError(f"unsupported $ref {ref!r}")
            node: Any = self._document
            for part in ref[2:].split("/"):
                node = node[part]
            schema, seen = node, seen + 1
        return schema

    def _check_value(
        self, value: Any, schema: JSON, name: str, where: str, problems: list[str]
    ) -> None:
        schema = self._resolve(schema)
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            best: list[str] | None = None
            for alternative in alternatives:
                attempt: list[str] = []
                self._check_value(value, alternative, name, where, attempt)
                if not attempt:
                    return
                if best is None or len(attempt) < len(best):
                    best = attempt
            problems.extend(best or [])
            return
        kind = schema.get("type")
        if isinstance(value, Mapping):
            self._check_mapping(value, schema, kind, name, where, problems)
        elif isinstance(value, list):
            if kind != "array":
                problems.append(f"{where}: '{name}' was sent as an array; Stripe expects {kind}")
                return
            items = schema.get("items") or {}
            for index, item in enumerate(value):
                self._check_value(item, items, f"{name}[{index}]", where, problems)
        else:
            self._check_scalar(str(value), schema, kind, name, where, problems)

    def _check_mapping(
        self,
        value: Mapping[str, Any],
        schema: JSON,
        kind: str | None,
        name: str,
        where: str,
        problems: list[str],
    ) -> None:
        if kind == "array" and all(key.isdigit() for key in value):
            # Non-contiguous indexes (a[0], a[2]) stay a hash after parsing.
            items = schema.get("items") or {}
            for key, item in value.items():
                self._check_value(item, items, f"{name}[{key}]", where, problems)
            return
        if kind not in (None, "object"):
            problems.append(f"{where}: '{name}' was sent as a hash; Stripe expects {kind}")
            return
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            child = f"{name}[{key}]"
            if key in properties:
                self._check_value(item, properties[key], child, where, problems)
            elif isinstance(additional, dict):  # metadata: any key, typed values
                self._check_value(item, additional, child, where, problems)
            elif additional is True:
                continue
            else:
                problems.append(f"{where}: unknown parameter '{child}'")

    @staticmethod
    def _check_scalar(
        value: str, schema: JSON, kind: str | None, name: str, where: str, problems: list[str]
    ) -> None:
        if kind in ("object", "array"):
            problems.append(f"{where}: '{name}' was sent as a single value; Stripe expects {kind}")
            return
        if kind == "integer" and not re.fullmatch(r"-?\d+", value):
            problems.append(f"{where}: '{name}'={value!r} is not an integer")
        elif kind == "boolean" and value not in ("true", "false"):
            problems.append(f"{where}: '{name}'={value!r} is not a boolean")
        elif kind == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", value):
            problems.append(f"{where}: '{name}'={value!r} is not a number")
        enum = schema.get("enum")
        # x-stripeBypassValidation: Stripe accepts values beyond the listed ones.
        if enum and not schema.get("x-stripeBypassValidation") and value not in enum:
            problems.append(f"{where}: '{name}'={value!r} is not one of {enum}")
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            problems.append(f"{where}: '{name}' is longer than {max_length} characters")


def check_request(method: str, path: str, params: Mapping[str, Any]) -> list[str]:
    """``StripeSpec.check`` on the shared spec (skips the test when it is absent)."""
    return load_spec().check(method, path, params)


def assert_allowed_by_spec(requests: Iterable[RequestLike]) -> None:
    """Fail with every problem found in requests to Stripe's API.

    The test server's own ``/_test/`` helpers are not Stripe's API and are skipped.
    """
    spec = load_spec()
    problems = [
        problem
        for request in requests
        if not request.path.startswith("/_test/")
        for problem in spec.check(request.method, request.path, request.params)
    ]
    assert not problems, "requests Stripe's API would refuse:\n" + "\n".join(problems)
