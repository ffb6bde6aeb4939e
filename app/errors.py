"""Every error the API returns, as `application/problem+json` (RFC 9457), from one place.

Domain errors, HTTP errors, body errors and unexpected exceptions all end here.
A problem document has a stable `type`, a `title`, the HTTP `status`, a human
`detail` and, for invalid input, per-field `errors`. It never carries a stack
trace or the offending value.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from marshmallow import Schema
from marshmallow import fields as ma_fields
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from app.jsonbody import BodyError
from commerce import errors as domain

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Problem types are relative URIs, documented in the README.
TYPE_BASE = "/problems/"

_DOMAIN_STATUS: dict[type[domain.DomainError], int] = {
    domain.InvalidInput: 400,
    domain.NotFound: 404,
    domain.InvalidTransition: 409,
    domain.Conflict: 409,
}

_HTTP_TYPES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}


def problem(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title or slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ProblemSchema(Schema):
    """The problem document, as the OpenAPI document describes every error answer."""

    type = ma_fields.String(metadata={"description": "A stable relative URI: /problems/<slug>."})
    title = ma_fields.String()
    status = ma_fields.Integer()
    detail = ma_fields.String()
    errors = ma_fields.Dict(
        keys=ma_fields.String(),
        metadata={"description": "For invalid input: the messages of each field, by name."},
    )


def document_problems(app: Flask) -> None:
    """Describe the error answers in the OpenAPI document as they are sent.

    flask-smorest describes every error response (its `DEFAULT_ERROR` and one response per
    HTTP status, referenced by the operations) as `application/json` with a schema of its
    own. This API answers errors as `application/problem+json` documents, so those
    responses are rewritten to say so.
    """
    for api in app.extensions.get("flask-smorest", {}).get("apis", {}).values():
        components = api["ext_obj"].spec.components
        if "Problem" not in components.schemas:
            components.schema("Problem", schema=ProblemSchema)
        problem_content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for registry in (components.responses, components.responses_lazy):
            for response in registry.values():
                if "content" in response:
                    response["content"] = dict(problem_content)


def _flatten_webargs(messages: dict[str, Any]) -> dict[str, Any]:
    """webargs groups errors by location ({"json": {"amount": [...]}}); clients want fields."""
    flat: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            flat.update(fields)
        else:
            flat[location] = fields
    return flat


def register(app: Flask) -> None:
    document_problems(app)

    @app.errorhandler(domain.DomainError)
    def on_domain_error(exc: domain.DomainError) -> Response:
        if isinstance(exc, domain.ProviderError):
            status = 503 if exc.retryable else 502
            headers = {"Retry-After": "5"} if exc.retryable else None
            return problem(status, exc.code, exc.detail, headers=headers)
        status = next((code for cls, code in _DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
        errors = exc.errors if isinstance(exc, domain.InvalidInput) else None
        return problem(status, exc.code, exc.detail, errors=errors)

    @app.errorhandler(BodyError)
    def on_body_error(exc: BodyError) -> Response:
        slug = "unsupported-media-type" if exc.status == 415 else "malformed-body"
        errors = {exc.field: [exc.detail]} if exc.field else None
        return problem(exc.status, slug, exc.detail, errors=errors)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages")
        if messages:
            # Raised by the request parser: invalid fields are a 400, never a 422.
            return problem(
                400,
                "validation-error",
                "The request has invalid fields.",
                errors=_flatten_webargs(messages),
            )
        headers = {}
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            headers["Allow"] = ", ".join(valid_methods)
        detail = exc.description or exc.name
        return problem(status, _HTTP_TYPES.get(status, "http-error"), detail, headers=headers)

    @app.errorhandler(OperationalError)
    def on_database_down(exc: OperationalError) -> Response:
        log.error("database unavailable: %s", type(exc.orig).__name__)
        return problem(
            503,
            "unavailable",
            "The service cannot reach its database; retry shortly.",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(DBAPIError)
    def on_database_error(exc: DBAPIError) -> Response:
        # The SQL and its parameters stay in the server's log; the client gets no details.
        log.exception("database error")
        return problem(500, "internal-error", "The request could not be completed.")

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "internal-error", "The request could not be completed.")
