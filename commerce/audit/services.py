"""Writing the audit log. Entries carry counts and ids, never the data itself."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from commerce.audit.models import AuditEntry


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject_type: str | None = None,
    subject_id: str | None = None,
    purpose: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            purpose=purpose,
            detail=detail or {},
        )
    )
