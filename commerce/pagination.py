"""Keyset pagination over (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from commerce.errors import InvalidInput
from commerce.ids import ID_PATTERN

T = TypeVar("T")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, id_: str) -> str:
    raw = json.dumps([created_at.isoformat(), id_], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, id_ = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(id_, str) or not isinstance(created, str) or not ID_PATTERN.match(id_):
            raise ValueError(cursor)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError(cursor)
        return when, id_
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput({"cursor": ["Not a cursor this API returned."]}) from None


def paginate(
    session: Session,
    query: Select[Any],
    *,
    created_at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[str],
    limit: int,
    cursor: str | None,
) -> Page[Any]:
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    if cursor:
        after_created, after_id = decode_cursor(cursor)
        query = query.where(
            or_(created_at < after_created, and_(created_at == after_created, id_ < after_id))
        )
    rows = list(session.scalars(query.order_by(created_at.desc(), id_.desc()).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(getattr(last, created_at.key), getattr(last, id_.key))
    return Page(rows, next_cursor)
