"""Bearer-key authentication, per-key rate limits, and `Idempotency-Key` replay.

Routes declare who may call them with `@merchant_only` or `@operator_only`. The
merchant id a route works with always comes from the key, never from the request.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, json, request
from sqlalchemy import select, text

from app.errors import problem
from app.web import db, redis_client
from commerce.access.models import ApiKey, IdempotencyRecord
from commerce.access.services import MERCHANT, OPERATOR, authenticate
from commerce.audit.services import record

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: OpenAPI security requirement attached to every authenticated operation.
BEARER = [{"bearerAuth": []}]
_IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_IDEMPOTENCY_KEY = 255


class AuthError(Exception):
    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.headers = status, slug, detail, headers or {}


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(
            401,
            "unauthorized",
            "Send an API key as 'Authorization: Bearer <key>'.",
            {"WWW-Authenticate": 'Bearer realm="chatledger"'},
        )
    return token.strip()


def _current_key(*roles: str) -> ApiKey:
    key = authenticate(db(), _bearer())
    if key is None:
        raise AuthError(
            401,
            "unauthorized",
            "The API key is not valid.",
            {"WWW-Authenticate": 'Bearer realm="chatledger", error="invalid_token"'},
        )
    if key.role not in roles:
        raise AuthError(403, "forbidden", f"This operation needs an {' or '.join(roles)} key.")
    _rate_limit(key)
    g.api_key = key
    return key


def _rate_limit(key: ApiKey) -> None:
    """A fixed one-minute window per key in Redis. If Redis is unreachable the request goes
    through: rate limiting protects the service, it must not become its outage."""
    limit = current_app.config["CHATLEDGER"].rate_limit_per_minute
    window = int(time.time() // 60)
    name = f"chatledger:ratelimit:{key.id}:{window}"
    try:
        pipe = redis_client().pipeline()
        pipe.incr(name)
        pipe.expire(name, 120)
        count, _ = pipe.execute()
    except Exception:  # redis-py raises several unrelated types for an unreachable server
        log.warning("rate limiter unavailable; request allowed")
        return
    if count > limit:
        retry_after = 60 - int(time.time()) % 60
        raise AuthError(
            429,
            "rate-limited",
            f"More than {limit} requests in a minute for this key.",
            {"Retry-After": str(max(retry_after, 1))},
        )


def merchant_id() -> str:
    """The merchant the current key belongs to."""
    return g.api_key.merchant_id


def _guarded(*roles: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = _current_key(*roles)
            if key.role != OPERATOR:
                return view(*args, **kwargs)
            # Every operator action is audited, in the same transaction as its effect.
            response = current_app.make_response(view(*args, **kwargs))
            if response.status_code < 400:
                subject = next(iter(kwargs.items()), (None, None))
                record(
                    db(),
                    actor=key.id,
                    action=f"{request.method} {request.url_rule.rule if request.url_rule else ''}",
                    subject_type=subject[0].removesuffix("_id") if subject[0] else None,
                    subject_id=str(subject[1]) if subject[1] is not None else None,
                    detail={"status": response.status_code},
                )
            return response

        return wrapper  # type: ignore[return-value]

    return decorator


merchant_only = _guarded(MERCHANT)
operator_only = _guarded(OPERATOR)
#: For the few routes both serve (SPEC section 8): a merchant's key reaches its own objects,
#: the operator's every merchant's (and is audited).
merchant_or_operator = _guarded(MERCHANT, OPERATOR)


def is_operator() -> bool:
    return g.api_key.role == OPERATOR


def _redacted(body: Any, secrets: tuple[str, ...]) -> Any:
    """The body without the named secret fields (dotted paths), for storage."""
    if not secrets or not isinstance(body, dict):
        return body
    copy = json.loads(json.dumps(body))
    for path in secrets:
        *parents, last = path.split(".")
        node = copy
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = None
    return copy


def idempotent_without(*secrets: str) -> Callable[[F], F]:
    """`idempotent`, for a POST whose answer shows a secret once: the stored answer has those
    fields (dotted paths) set to null, so a replay never shows the secret a second time and
    the secret is never stored."""

    def decorator(view: F) -> F:
        return _idempotent(view, secrets)

    return decorator


def idempotent(view: F) -> F:
    """Replay the stored answer for a repeated `Idempotency-Key` from the same key.

    A transaction-scoped advisory lock on (api key, idempotency key) makes a
    concurrent repeat wait for the first request's commit and then replay its
    answer, so the work behind the POST is done once.
    """
    return _idempotent(view, ())


def _idempotent(view: F, secrets: tuple[str, ...]) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        idem_key = request.headers.get(_IDEMPOTENCY_HEADER)
        if idem_key is None:
            return view(*args, **kwargs)
        if not idem_key or len(idem_key) > _MAX_IDEMPOTENCY_KEY or not idem_key.isprintable():
            return problem(
                400,
                "validation-error",
                "The Idempotency-Key header is not acceptable.",
                errors={_IDEMPOTENCY_HEADER: ["Must be 1 to 255 printable characters."]},
            )
        session = db()
        api_key_id = g.api_key.id
        fingerprint = hashlib.sha256(
            b"\n".join([request.method.encode(), request.path.encode(), request.get_data()])
        ).hexdigest()
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"idempotency\x1f{api_key_id}\x1f{idem_key}"},
        )
        stored = session.scalars(
            select(IdempotencyRecord).where(
                IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == idem_key
            )
        ).one_or_none()
        if stored is not None:
            if stored.request_hash != fingerprint:
                return problem(
                    409,
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different request.",
                )
            response = Response(
                json.dumps(stored.response_body),
                status=stored.response_status,
                mimetype="application/json",
            )
            response.headers["Idempotent-Replayed"] = "true"
            return response

        result = view(*args, **kwargs)
        response = current_app.make_response(result)
        # Only successes are remembered: a refused request may be corrected and retried.
        if response.status_code < 400 and response.is_json:
            session.add(
                IdempotencyRecord(
                    api_key_id=api_key_id,
                    key=idem_key,
                    request_hash=fingerprint,
                    response_status=response.status_code,
                    response_body=_redacted(response.get_json(), secrets),
                )
            )
            session.flush()
        return response

    return wrapper  # type: ignore[return-value]


def register(app: Any) -> None:
    @app.errorhandler(AuthError)
    def on_auth_error(exc: AuthError) -> Response:
        return problem(exc.status, exc.slug, exc.detail, headers=exc.headers)


__all__ = [
    "BEARER",
    "OPERATOR",
    "idempotent",
    "idempotent_without",
    "merchant_id",
    "merchant_only",
    "operator_only",
    "register",
]
