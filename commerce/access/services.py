"""Issuing and checking API keys."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce.access.models import ApiKey
from commerce.ids import new_id

OPERATOR = "operator"
MERCHANT = "merchant"
_KEY_PREFIX = {OPERATOR: "ck_op_", MERCHANT: "ck_mer_"}


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key(role: str) -> str:
    """A new bearer key: a role prefix and 256 random bits."""
    return _KEY_PREFIX[role] + secrets.token_urlsafe(32)


def issue_key(session: Session, *, role: str, merchant_id: str | None = None) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is not stored and not shown again."""
    secret = generate_key(role)
    key = ApiKey(
        id=new_id("api_key"),
        role=role,
        merchant_id=merchant_id,
        prefix=secret[:12],
        secret_hash=hash_key(secret),
    )
    session.add(key)
    session.flush()
    return key, secret


def ensure_operator_key(session: Session, secret: str) -> None:
    """Register the configured operator key (idempotent: many processes start at once)."""
    session.execute(
        insert(ApiKey)
        .values(
            id=new_id("api_key"),
            role=OPERATOR,
            merchant_id=None,
            prefix=secret[:12],
            secret_hash=hash_key(secret),
        )
        .on_conflict_do_nothing(index_elements=[ApiKey.secret_hash])
    )


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The live key with this secret, or None. The lookup is by hash: timing reveals nothing
    about the secret beyond what an index probe on a random digest can."""
    return session.scalars(
        select(ApiKey).where(ApiKey.secret_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    ).one_or_none()
