"""Dashboard sign-in: a merchant's API key exchanged for a short-lived browser session.

The browser holds a 256-bit random token in an HttpOnly cookie; the database holds its
SHA-256 only, so a leaked table opens no session. Each session has its own CSRF token for
the forms that change something (sign-out). A session ends when it expires, when it is
signed out, or as soon as the key that opened it is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from commerce.access.models import ApiKey
from commerce.access.services import MERCHANT, authenticate
from commerce.db import utcnow
from commerce.reports.models import DashboardSession

#: How long a sign-in lasts.
LIFETIME = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class Opened:
    token: str
    session: DashboardSession


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(session: Session, api_key: str) -> Opened | None:
    """A new dashboard session for the merchant whose live key this is; None otherwise."""
    key = authenticate(session, api_key.strip())
    if key is None or key.role != MERCHANT or key.merchant_id is None:
        return None
    token = secrets.token_urlsafe(32)
    row = DashboardSession(
        token_hash=_hash(token),
        merchant_id=key.merchant_id,
        api_key_id=key.id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + LIFETIME,
    )
    session.add(row)
    # Expired sessions of anyone are cleared on the way: sign-ins are rare, the table small.
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < utcnow()))
    session.flush()
    return Opened(token, row)


def current(session: Session, token: str | None) -> DashboardSession | None:
    """The live session this cookie token names, if its key is still live."""
    if not token or len(token) > 128:
        return None
    return session.scalars(
        select(DashboardSession)
        .join(ApiKey, ApiKey.id == DashboardSession.api_key_id)
        .where(
            DashboardSession.token_hash == _hash(token),
            DashboardSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    ).one_or_none()


def sign_out(session: Session, row: DashboardSession) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.token_hash == row.token_hash))
