"""Instants as chatledger writes them, in the API, its CSV files, reports and webhooks:
ISO 8601 in UTC, with a `Z` (e.g. `2026-11-29T10:32:56.123456Z`)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(instant: datetime) -> str:
    """`instant` (timezone-aware) in UTC, ISO 8601, with a `Z`."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
