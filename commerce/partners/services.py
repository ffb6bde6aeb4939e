"""Registering partners, rotating their secrets, and recording their agreements."""

from __future__ import annotations

import base64
import secrets as random_secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import any_, literal, or_, select
from sqlalchemy.orm import Session

from commerce.db import utcnow
from commerce.errors import InvalidInput, NotFound
from commerce.ids import new_id
from commerce.partners.models import PURPOSES, SCOPES, Agreement, Partner, PartnerSecret

#: How long the previous secret keeps verifying after a rotation.
ROTATION_OVERLAP = timedelta(hours=24)


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


def create_partner(session: Session, *, name: str) -> tuple[Partner, str]:
    """A partner and its first signing secret, returned once."""
    partner = Partner(id=new_id("partner"), name=name)
    secret = new_signing_secret()
    partner.secrets = [PartnerSecret(secret=secret)]
    session.add(partner)
    session.flush()
    return partner, secret


def get_partner(session: Session, partner_id: str) -> Partner:
    partner = session.get(Partner, partner_id)
    if partner is None:
        raise NotFound("partner")
    return partner


def rotate_secret(session: Session, partner_id: str) -> str:
    """A new secret; the old ones keep verifying for ROTATION_OVERLAP, then stop."""
    partner = get_partner(session, partner_id)
    now = utcnow()
    for old in partner.secrets:
        if old.expires_at is None or old.expires_at > now + ROTATION_OVERLAP:
            old.expires_at = now + ROTATION_OVERLAP
    secret = new_signing_secret()
    partner.secrets.append(PartnerSecret(secret=secret))
    session.flush()
    return secret


def active_secrets(session: Session, partner_id: str, *, at: datetime | None = None) -> list[str]:
    at = at or utcnow()
    return list(
        session.scalars(
            select(PartnerSecret.secret)
            .where(
                PartnerSecret.partner_id == partner_id,
                or_(PartnerSecret.expires_at.is_(None), PartnerSecret.expires_at > at),
            )
            .order_by(PartnerSecret.created_at.desc())
        )
    )


def record_agreement(
    session: Session,
    *,
    partner_id: str,
    scopes: Sequence[str],
    purposes: Sequence[str],
    starts_at: datetime,
    ends_at: datetime | None,
    retention_days: int,
) -> Agreement:
    get_partner(session, partner_id)
    errors: dict[str, list[str]] = {}
    if not scopes or set(scopes) - set(SCOPES):
        errors["scopes"] = [f"Must be a non-empty subset of {', '.join(SCOPES)}."]
    if not purposes or set(purposes) - set(PURPOSES):
        errors["purposes"] = [f"Must be a non-empty subset of {', '.join(PURPOSES)}."]
    if ends_at is not None and ends_at <= starts_at:
        errors["ends_at"] = ["Must be after starts_at."]
    if retention_days <= 0:
        errors["retention_days"] = ["Must be at least 1."]
    if errors:
        raise InvalidInput(errors)
    agreement = Agreement(
        id=new_id("agreement"),
        partner_id=partner_id,
        scopes=sorted(set(scopes)),
        purposes=sorted(set(purposes)),
        starts_at=starts_at,
        ends_at=ends_at,
        retention_days=retention_days,
        status="active",
    )
    session.add(agreement)
    session.flush()
    return agreement


def agreement_in_force(
    session: Session, partner_id: str, *, scope: str | None, at: datetime | None = None
) -> Agreement | None:
    """The partner's active agreement covering `scope` at `at` (any scope when None)."""
    at = at or utcnow()
    query = select(Agreement).where(
        Agreement.partner_id == partner_id,
        Agreement.status == "active",
        Agreement.starts_at <= at,
        or_(Agreement.ends_at.is_(None), Agreement.ends_at > at),
    )
    if scope is not None:
        query = query.where(literal(scope) == any_(Agreement.scopes))
    return session.scalars(query.order_by(Agreement.starts_at.desc()).limit(1)).one_or_none()


def flag_pan(session: Session, partner_id: str, count: int) -> None:
    """The partner sent card numbers in the clear: count it for the operator."""
    partner = session.get(Partner, partner_id, with_for_update=True)
    if partner is not None:
        partner.pan_reports += count
        partner.pan_reported_at = utcnow()
        session.flush()
