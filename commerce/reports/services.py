"""The merchant's reports, read from the rollups (never from the raw sales table).

Each query adds the rollup rows of the window to the change-log rows not folded yet, in one
statement (one snapshot), so a report is exact when it is read. A report only ever reads one
merchant's rows: the merchant id comes from the caller's credentials.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from commerce.db import utcnow
from commerce.errors import InvalidInput
from commerce.instants import utc_text
from commerce.merchants.models import Merchant
from commerce.reports import attribution as seam
from commerce.reports.models import FUNNEL, MEASURES, MONEY
from commerce.reports.periods import (
    GROUPINGS,
    Window,
    local_midnight,
    next_period,
    period_start,
    window,
    zone,
)
from commerce.reports.privacy import Cell, Group, suppress

DIMENSIONS = ("offer", "conversation")
#: The sales report's figures: `count` is the number of paid sales.
SALES_FIGURES = ("count", "gross", "refunds", "disputes", "net")
RATES = (
    ("viewed_per_delivered", "viewed", "delivered"),
    ("clicked_per_viewed", "clicked", "viewed"),
    ("accepted_per_clicked", "accepted", "clicked"),
    ("paid_per_accepted", "paid", "accepted"),
    ("paid_per_delivered", "paid", "delivered"),
)
_DIM_COLUMNS: dict[str | None, tuple[str, ...]] = {
    None: (),
    "offer": ("offer_id", "conversation_id"),
    "conversation": ("conversation_id",),
}


@dataclass(frozen=True, slots=True)
class Query:
    merchant_id: str
    window: Window
    grouping: str | None = None
    by: str | None = None


def make_query(
    session: Session,
    *,
    merchant_id: str,
    timezone: str | None,
    first: date | None,
    last: date | None,
    grouping: str | None = None,
    by: str | None = None,
) -> Query:
    """Validate a report's parameters; the zone defaults to the merchant's own."""
    if grouping is not None and grouping not in GROUPINGS:
        raise InvalidInput({"group_by": [f"Must be one of {', '.join(GROUPINGS)}."]})
    if by is not None and by not in DIMENSIONS:
        raise InvalidInput({"by": [f"Must be one of {', '.join(DIMENSIONS)}."]})
    if timezone is None:
        merchant = session.get(Merchant, merchant_id)
        timezone = merchant.timezone if merchant is not None else "UTC"
    today = utcnow().astimezone(zone(timezone)).date()
    return Query(merchant_id, window(timezone, first, last, today=today), grouping, by)


@dataclass(frozen=True, slots=True)
class _Cut:
    """The reported periods of a window, and the local days and UTC instants that cut it
    into them (each list of edges one longer than the periods), with their texts."""

    periods: tuple[date | None, ...]
    day_edges: tuple[date, ...]
    edges: tuple[datetime, ...]
    #: (period, start, end) of each period as the API writes them.
    labels: tuple[tuple[str | None, str, str], ...]
    #: The edges as PostgreSQL array literals, parsed by the server in one go (a Python list
    #: of a year of days is adapted element by element on every request).
    day_literal: str
    edge_literal: str


#: A window of three years holds 1,100 periods' texts (about 200 kB): 32 windows bound the
#: cache at a few MB per process whatever windows are asked for.
@lru_cache(maxsize=32)
def _cut(tz_name: str, first: date, last: date, grouping: str | None) -> _Cut:
    # Cached: a dashboard or a client polling a report asks for the same window again and
    # again, and a year by day is 366 zone conversions. The zone database does not change
    # while the process runs.
    tz = zone(tz_name)
    stop = last + timedelta(days=1)
    if grouping is None:
        periods: list[date | None] = [None]
        days = [first, stop]
    else:
        periods = []
        days = [first]
        day = period_start(first, grouping)
        while day <= last:
            periods.append(day)
            day = next_period(day, grouping)
            days.append(min(day, stop))
    edges = [local_midnight(d, tz) for d in days]
    texts = [utc_text(e) for e in edges]
    labels = tuple(
        (p.isoformat() if p is not None else None, texts[i], texts[i + 1])
        for i, p in enumerate(periods)
    )
    return _Cut(
        tuple(periods),
        tuple(days),
        tuple(edges),
        labels,
        "{" + ",".join(d.isoformat() for d in days) + "}",
        "{" + ",".join(e.isoformat() for e in edges) + "}",
    )


def _edges(query: Query) -> _Cut:
    w = query.window
    return _cut(w.tz_name, w.first, w.last, query.grouping)


@dataclass(frozen=True, slots=True)
class _Sums:
    cut: _Cut
    #: (slot, *dimension columns, currency, *measures); slot 1 is the first period.
    rows: list[Any]


def _sums(session: Session, query: Query, measures: Sequence[str]) -> _Sums:
    """Sums of the measures by (period, dimension columns, currency) over the window.

    Reads, with the log rows not folded yet, one of:
    - the merchant's day rollup, when the report is cut in the zone its days are cut in;
    - otherwise the hourly rollup (quarter-hourly for zones whose midnights are not on whole
      hours), or the per-offer rollup when asked by offer or conversation.
    The periods' edges are computed here (zoneinfo, DST and all) and handed to PostgreSQL,
    which files each row by a binary search over them (width_bucket): no time-zone
    arithmetic per rollup row. Every edge falls on a bucket boundary (periods.window chose
    the bucket width for that), so each bucket lies wholly inside one period.
    """
    w = query.window
    dims = _DIM_COLUMNS[query.by]
    cut = _edges(query)
    params: dict[str, Any] = {"m": query.merchant_id, "start": w.start, "end": w.end}
    day_zone = None
    if not query.by:
        day_zone = session.execute(
            text("SELECT timezone FROM report_day_zones WHERE merchant_id = :m"), params
        ).scalar_one_or_none()
    if day_zone == w.tz_name:
        table, key, slot = "report_merchant_days", "day", "width_bucket(t, CAST(:edges AS date[]))"
        delta_key = "(at AT TIME ZONE :tz)::date"
        where = "day >= :first AND day < :stop"
        params.update(edges=cut.day_literal, tz=w.tz_name, first=w.first, stop=cut.day_edges[-1])
    else:
        if query.by:
            table = "report_offer_rollups"
        elif w.bucket_minutes == 60:
            table = "report_merchant_hours"
        else:
            table = "report_merchant_quarters"
        key, slot = "bucket", "width_bucket(t, CAST(:edges AS timestamptz[]))"
        delta_key = "at"
        where = "bucket >= :start AND bucket < :end"
        params.update(edges=cut.edge_literal)
    columns = ", ".join(measures)
    dim_select = "".join(f"{d}, " for d in dims)
    group = ", ".join(["slot", *dims, "currency"])
    # sum(bigint) is numeric, computed digit by digit; float8 adds integers exactly up to
    # 2**53 minor units (90 trillion dollars), far beyond any merchant's total.
    sums = ", ".join(f"sum({m}::float8)::bigint AS {m}" for m in measures)
    sql = f"""
        SELECT {slot} AS slot, {dim_select}currency, {sums}
        FROM (
            SELECT {key} AS t, {dim_select}currency, {columns} FROM {table}
            WHERE merchant_id = :m AND {where}
            UNION ALL
            SELECT {delta_key}, {dim_select}currency, {columns} FROM report_deltas
            WHERE merchant_id = :m AND at >= :start AND at < :end
        ) AS figures
        GROUP BY {group}
        ORDER BY {group}
    """  # noqa: S608 - table and column names are fixed above, never from the request
    return _Sums(cut, session.execute(text(sql), params).all())


def _aggregate(
    session: Session, query: Query, measures: Sequence[str] = MEASURES
) -> list[dict[str, Any]]:
    """The rows of `_sums` as dicts: period, start, end, dimension columns, currency and
    the measures."""
    found = _sums(session, query, measures)
    edges = found.cut.edges
    names = ["period", "start", "end", *_DIM_COLUMNS[query.by], "currency", *measures]
    periods = found.cut.periods
    return [
        dict(zip(names, (periods[i - 1], edges[i - 1], edges[i], *rest), strict=True))
        for i, *rest in found.rows
    ]


def _titles(session: Session, merchant_id: str, offer_ids: Sequence[str]) -> dict[str, str]:
    if not offer_ids:
        return {}
    rows = session.execute(
        text("SELECT id, title FROM offers WHERE merchant_id = :m AND id = ANY(:ids)"),
        {"m": merchant_id, "ids": list(offer_ids)},
    )
    return {r.id: r.title for r in rows}


def _header(query: Query) -> dict[str, Any]:
    w = query.window
    return {
        "timezone": w.tz_name,
        "from": w.first.isoformat(),
        "to": w.last.isoformat(),
        "start": w.start,
        "end": w.end,
    }


def sales_report(session: Session, query: Query) -> dict[str, Any]:
    """Paid sales by period (and offer or conversation) and currency, with totals per currency.

    Rows are made straight from the query's tuples, with the periods' texts computed once
    per window: a year by day in three currencies is a thousand rows, and this loop is most
    of what such a request costs.
    """
    grouping = query.grouping or "day"
    query = Query(query.merchant_id, query.window, grouping, query.by)
    found = _sums(session, query, ("paid", *MONEY))
    labels = found.cut.labels
    dims = _DIM_COLUMNS[query.by]
    width = len(dims)
    rows = []
    totals: dict[str, list[int]] = {}
    for row in found.rows:
        slot, *named, currency, paid, gross, refunds, disputes, net = row
        if not (paid or gross or refunds or disputes or net):
            continue  # only touchpoints in this cell: nothing sold
        period, start, end = labels[slot - 1]
        out: dict[str, Any] = {"period": period, "start": start, "end": end}
        if width:
            out.update(zip(dims, named, strict=True))
        out |= {
            "currency": currency,
            "count": paid,
            "gross": gross,
            "refunds": refunds,
            "disputes": disputes,
            "net": net,
        }
        rows.append(out)
        total = totals.get(currency)
        if total is None:
            totals[currency] = [paid, gross, refunds, disputes, net]
        else:
            total[0] += paid
            total[1] += gross
            total[2] += refunds
            total[3] += disputes
            total[4] += net
    if query.by == "offer":
        titles = _titles(session, query.merchant_id, sorted({r["offer_id"] for r in rows}))
        for r in rows:
            r["offer_title"] = titles.get(r["offer_id"])
    return {
        **_header(query),
        "group_by": grouping,
        "by": query.by,
        "rows": rows,
        "totals": [
            {"currency": c, **dict(zip(SALES_FIGURES, t, strict=True))}
            for c, t in sorted(totals.items())
        ],
    }


def _rates(counts: dict[str, int]) -> dict[str, float | None]:
    return {
        name: (round(counts[num] / counts[den], 4) if counts[den] else None)
        for name, num, den in RATES
    }


def funnel_report(session: Session, query: Query) -> dict[str, Any]:
    """Offers delivered, viewed, clicked, accepted and paid over the window, with the rates
    from each stage to the next; per offer too with `by=offer`."""
    if query.by == "conversation":
        raise InvalidInput({"by": ["The funnel is reported in total or by offer."]})
    query = Query(query.merchant_id, query.window, None, query.by)
    total = dict.fromkeys(FUNNEL, 0)
    per_offer: dict[str, dict[str, Any]] = {}
    for row in _aggregate(session, query, FUNNEL):
        for stage in FUNNEL:
            total[stage] += row[stage]
        if query.by == "offer":
            entry = per_offer.setdefault(
                row["offer_id"],
                {"offer_id": row["offer_id"], "conversation_id": row["conversation_id"]}
                | dict.fromkeys(FUNNEL, 0),
            )
            for stage in FUNNEL:
                entry[stage] += row[stage]
    report: dict[str, Any] = {**_header(query), "funnel": total, "rates": _rates(total)}
    if query.by == "offer":
        titles = _titles(session, query.merchant_id, sorted(per_offer))
        report["rows"] = [
            {**e, "offer_title": titles.get(e["offer_id"]), "rates": _rates(e)}
            for _, e in sorted(per_offer.items())
            if any(e[s] for s in FUNNEL)
        ]
    return report


@dataclass
class _OffPlatform:
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    offers: dict[str, tuple[str, str]] = field(default_factory=dict)


def attribution_report(
    session: Session,
    query: Query,
    *,
    min_cardholders: int,
    limit: int = 100,
    model: str = "last_touch",
) -> dict[str, Any]:
    """Attributed revenue by offer: in chat (each paid sale belongs to its own offer and
    conversation) and off platform (card transactions attributed by commerce/attribution),
    by attribution window. Off-platform figures come from partner data: every cell, total and
    subtotal covering fewer than `min_cardholders` distinct cardholders is hidden, and so is
    any other cell that would let it be worked out by subtraction."""
    query = Query(query.merchant_id, query.window, None, "offer")
    in_chat: list[dict[str, Any]] = []
    chat_totals: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "revenue": 0})
    for row in _aggregate(session, query, ("paid", "net")):
        if not (row["paid"] or row["net"]):
            continue
        in_chat.append(
            {
                "offer_id": row["offer_id"],
                "conversation_id": row["conversation_id"],
                "currency": row["currency"],
                "window": "in_chat",
                "count": row["paid"],
                "revenue": row["net"],
            }
        )
        chat_totals[row["currency"]]["count"] += row["paid"]
        chat_totals[row["currency"]]["revenue"] += row["net"]
    in_chat.sort(key=lambda r: (-r["revenue"], r["offer_id"]))

    source = seam.off_platform_source()
    off = _off_platform(session, query, source, model) if source is not None else _OffPlatform()
    off_rows, off_totals = _suppressed(off, min_cardholders)

    shown = in_chat[:limit]
    titles = _titles(
        session,
        query.merchant_id,
        sorted({r["offer_id"] for r in shown} | {r["offer_id"] for r in off_rows}),
    )
    for r in (*shown, *off_rows):
        r["offer_title"] = titles.get(r["offer_id"])
    return {
        **_header(query),
        "min_cardholders": min_cardholders,
        "in_chat": {
            "rows": shown,
            "more": len(in_chat) > limit,
            "totals": [{"currency": c, **t} for c, t in sorted(chat_totals.items())],
        },
        "off_platform": {
            "available": source is not None,
            "rows": off_rows,
            "totals": off_totals,
        },
    }


def _off_platform(
    session: Session, query: Query, source: seam.OffPlatformSource, model: str
) -> _OffPlatform:
    holders: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    values: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
        lambda: {"count": 0, "revenue": 0}
    )
    result = _OffPlatform()
    for p in source(session, query.merchant_id, query.window.start, query.window.end, model):
        key = (p.currency, p.offer_id, p.window)
        holders[key].add(p.cardholder)
        values[key]["count"] += 1
        values[key]["revenue"] += p.amount
        result.offers[p.offer_id] = (p.conversation_id, p.currency)
    for key, figures in values.items():
        result.cells[key] = Cell(key, figures, frozenset(holders[key]))
    return result


def _total(key: Any, members: Sequence[Cell]) -> Cell:
    figures = {"count": 0, "revenue": 0}
    for m in members:
        figures["count"] += m.values["count"]
        figures["revenue"] += m.values["revenue"]
    return Cell(key, figures, frozenset().union(*(m.holders for m in members)))


def _suppressed(
    off: _OffPlatform, k: int
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Cells and totals of off-platform revenue, each shown or marked suppressed."""
    cells = list(off.cells.values())
    by_window: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    by_offer: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    by_currency: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        currency, offer_id, win = cell.key
        by_window[(currency, win)].append(cell)
        by_offer[(currency, offer_id)].append(cell)
        by_currency[currency].append(cell)
    window_totals = {key: _total(key, members) for key, members in by_window.items()}
    offer_totals = {key: _total(key, members) for key, members in by_offer.items()}
    currency_totals = {key: _total(key, members) for key, members in by_currency.items()}
    groups = [Group(window_totals[key], members) for key, members in by_window.items()]
    groups += [Group(offer_totals[key], members) for key, members in by_offer.items()]
    for currency, total in currency_totals.items():
        groups.append(Group(total, [t for (c, _), t in window_totals.items() if c == currency]))
        groups.append(Group(total, [t for (c, _), t in offer_totals.items() if c == currency]))
    everything = [*cells, *window_totals.values(), *offer_totals.values()]
    suppress([*everything, *currency_totals.values()], groups, k)

    def shown(cell: Cell, **labels: Any) -> dict[str, Any]:
        hidden = cell.suppressed is not None
        return {
            **labels,
            "count": None if hidden else cell.values["count"],
            "revenue": None if hidden else cell.values["revenue"],
            "suppressed": hidden,
            "suppression": cell.suppressed,
        }

    rows = [
        shown(
            cell,
            offer_id=cell.key[1],
            conversation_id=off.offers[cell.key[1]][0],
            currency=cell.key[0],
            window=cell.key[2],
        )
        for cell in sorted(cells, key=lambda c: c.key)
    ]
    totals = {
        "by_currency": [shown(t, currency=c) for c, t in sorted(currency_totals.items())],
        "by_window": [
            shown(t, currency=c, window=w) for (c, w), t in sorted(window_totals.items())
        ],
        "by_offer": [
            shown(t, currency=c, offer_id=o) for (c, o), t in sorted(offer_totals.items())
        ],
    }
    return rows, totals
