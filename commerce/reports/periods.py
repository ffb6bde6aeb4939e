"""Report periods: local calendar days in any IANA zone, as exact UTC instants.

A report asks for the days `start`..`end` (inclusive, local dates) in a time zone. Each local
day begins at its local midnight, wherever DST puts it: America/New_York's 2026-03-08 has 23
hours and 2026-11-01 has 25. Where a zone skips midnight (a DST change at 00:00), the day
begins at the first instant that exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from commerce.errors import InvalidInput

GROUPINGS = ("day", "week", "month")
#: Longest period one report covers (three years and a day).
MAX_DAYS = 3 * 366


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    if name not in _zone_names():
        raise InvalidInput({"timezone": ["Must be an IANA time zone name, e.g. Europe/Paris."]})
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput({"timezone": ["Unknown time zone."]}) from None


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which `day` begins in `tz`.

    For a midnight that does not exist (skipped by DST), fold=0 resolves to the instant of
    the change, which is when the day begins.
    """
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def period_start(day: date, grouping: str) -> date:
    if grouping == "day":
        return day
    if grouping == "week":  # ISO weeks: Monday
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(day: date, grouping: str) -> date:
    if grouping == "day":
        return day + timedelta(days=1)
    if grouping == "week":
        return day + timedelta(days=7)
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True, slots=True)
class Window:
    """The local days first..last in `tz`, as [start, end) in UTC."""

    tz_name: str
    tz: ZoneInfo
    first: date
    last: date
    start: datetime
    end: datetime
    #: 60 when every local midnight of the window falls on a whole UTC hour, else 15.
    bucket_minutes: int


def window(tz_name: str, first: date | None, last: date | None, *, today: date) -> Window:
    """The window asked for; by default the 30 days ending today (local)."""
    tz = zone(tz_name)
    last = last or today
    first = first or last - timedelta(days=29)
    if first > last:
        raise InvalidInput({"from": ["Must not be after `to`."]})
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidInput({"to": [f"A report covers at most {MAX_DAYS} days."]})
    return Window(
        tz_name=tz_name,
        tz=tz,
        first=first,
        last=last,
        start=local_midnight(first, tz),
        end=local_midnight(last + timedelta(days=1), tz),
        bucket_minutes=_bucket_minutes(tz_name, first, last),
    )


@lru_cache(maxsize=256)
def _bucket_minutes(tz_name: str, first: date, last: date) -> int:
    """60 when every local midnight from `first` to the day after `last` falls on a whole UTC
    hour, else 15. (Cached: the same windows are asked for again and again, and a year is
    367 zone conversions; the zone database does not change while the process runs.)"""
    tz = zone(tz_name)
    minutes = 60
    day = first
    while day <= last + timedelta(days=1):
        instant = local_midnight(day, tz)
        if instant.second or instant.microsecond or instant.minute % 15:
            # No zone has done this since 1972 (Liberia, -0:44:30); refuse rather than misfile.
            raise InvalidInput({"timezone": ["Days in this zone do not begin on a quarter hour."]})
        if instant.minute:
            minutes = 15
        day += timedelta(days=1)
    return minutes
