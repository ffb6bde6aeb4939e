"""A merchant's attribution defaults."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from commerce.attribution.models import (
    DEFAULT_CLICK_WINDOW_SECONDS,
    DEFAULT_RETURN_PERIOD_DAYS,
    DEFAULT_VIEW_WINDOW_SECONDS,
    AttributionSettings,
)

_DEFAULTS = {
    "click_window_seconds": DEFAULT_CLICK_WINDOW_SECONDS,
    "view_window_seconds": DEFAULT_VIEW_WINDOW_SECONDS,
    "return_period_days": DEFAULT_RETURN_PERIOD_DAYS,
}


def get_settings(session: Session, merchant_id: str) -> dict[str, Any]:
    row = session.get(AttributionSettings, merchant_id)
    if row is None:
        return dict(_DEFAULTS)
    return {name: getattr(row, name) for name in _DEFAULTS}


def update_settings(session: Session, merchant_id: str, **changes: Any) -> dict[str, Any]:
    row = session.get(AttributionSettings, merchant_id)
    if row is None:
        row = AttributionSettings(merchant_id=merchant_id, **_DEFAULTS)
        session.add(row)
    for name, value in changes.items():
        if value is not None:
            setattr(row, name, value)
    session.flush()
    return get_settings(session, merchant_id)
