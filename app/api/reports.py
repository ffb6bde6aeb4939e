"""Reports: sales over time, the offer funnel and attributed revenue, as JSON or CSV.

Thin routes: the query is validated here, the figures come from commerce/reports/services.py
(which reads the rollups, never the raw sales). The dashboard's JSON endpoints call the same
`build` with the merchant of its session, so the page and the API show the same numbers.
`Accept: text/csv` answers a CSV file of the same rows.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import orjson
from flask import Response, current_app
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.csvfile import CSV, cell, wants_csv
from app.api.fields import Timestamp
from app.auth import BEARER, merchant_id, merchant_only
from app.web import db
from commerce.instants import utc_text
from commerce.reports import services
from commerce.reports.periods import GROUPINGS

blp = Blueprint("reports", __name__, url_prefix="/v1/reports", description="Reports")


class ReportQuerySchema(Schema):
    timezone = fields.String(
        load_default=None,
        validate=validate.Length(max=64),
        metadata={"description": "IANA zone the days are cut in; the merchant's by default."},
    )
    from_ = fields.Date(
        data_key="from",
        load_default=None,
        metadata={"description": "First local day (inclusive); 29 days before `to` by default."},
    )
    to = fields.Date(
        load_default=None, metadata={"description": "Last local day (inclusive); today by default."}
    )


class SalesQuerySchema(ReportQuerySchema):
    group_by = fields.String(load_default="day", validate=validate.OneOf(GROUPINGS))
    by = fields.String(load_default=None, validate=validate.OneOf(services.DIMENSIONS))


class FunnelQuerySchema(ReportQuerySchema):
    by = fields.String(load_default=None, validate=validate.OneOf(["offer"]))


class AttributionQuerySchema(ReportQuerySchema):
    model = fields.String(
        load_default="last_touch",
        validate=validate.OneOf(["last_touch", "first_touch", "linear"]),
        metadata={"description": "How an off-platform purchase is credited (docs/ATTRIBUTION.md)."},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=10_000),
        metadata={"description": "In-chat offers listed, highest revenue first."},
    )


_FIGURES = {name: fields.Integer() for name in services.SALES_FIGURES}
_HEADER = {
    "timezone": fields.String(),
    "from": fields.String(),
    "to": fields.String(),
    "start": Timestamp(),
    "end": Timestamp(),
}
SalesRowSchema = Schema.from_dict(
    {
        "period": fields.String(metadata={"description": "First local day of the period."}),
        "start": Timestamp(),
        "end": Timestamp(),
        "offer_id": fields.String(),
        "offer_title": fields.String(allow_none=True),
        "conversation_id": fields.String(),
        "currency": fields.String(),
        **_FIGURES,
    },
    name="SalesReportRowSchema",
)
SalesReportSchema = Schema.from_dict(
    {
        **_HEADER,
        "group_by": fields.String(),
        "by": fields.String(allow_none=True),
        "rows": fields.List(fields.Nested(SalesRowSchema)),
        "totals": fields.List(
            fields.Nested(
                Schema.from_dict({"currency": fields.String(), **_FIGURES}, name="SalesTotalSchema")
            )
        ),
    },
    name="SalesReportSchema",
)
_STAGES = {name: fields.Integer() for name in services.FUNNEL}
_RATES = Schema.from_dict(
    {name: fields.Float(allow_none=True) for name, _, _ in services.RATES}, name="FunnelRates"
)
FunnelReportSchema = Schema.from_dict(
    {
        **_HEADER,
        "funnel": fields.Nested(Schema.from_dict(_STAGES, name="FunnelCounts")),
        "rates": fields.Nested(_RATES),
        "rows": fields.List(
            fields.Nested(
                Schema.from_dict(
                    {
                        "offer_id": fields.String(),
                        "offer_title": fields.String(allow_none=True),
                        "conversation_id": fields.String(),
                        **_STAGES,
                        "rates": fields.Nested(_RATES),
                    },
                    name="FunnelOfferRow",
                )
            )
        ),
    },
    name="FunnelReportSchema",
)
_CELL = {
    "count": fields.Integer(allow_none=True),
    "revenue": fields.Integer(allow_none=True),
    "suppressed": fields.Boolean(),
    "suppression": fields.String(
        allow_none=True,
        metadata={"description": "fewer_than_k, or complementary (it would reveal another)."},
    ),
}
AttributionRowSchema = Schema.from_dict(
    {
        "offer_id": fields.String(),
        "offer_title": fields.String(allow_none=True),
        "conversation_id": fields.String(),
        "currency": fields.String(),
        "window": fields.String(),
        **_CELL,
    },
    name="AttributionRowSchema",
)
AttributionReportSchema = Schema.from_dict(
    {
        **_HEADER,
        "min_cardholders": fields.Integer(),
        "in_chat": fields.Dict(),
        "off_platform": fields.Dict(),
    },
    name="AttributionReportSchema",
)


def build(kind: str, args: dict[str, Any], merchant: str) -> dict[str, Any]:
    """The report `kind` (sales, funnel, attribution) for `merchant` with validated `args`."""
    session = db()
    query = services.make_query(
        session,
        merchant_id=merchant,
        timezone=args.get("timezone"),
        first=args.get("from_"),
        last=args.get("to"),
        grouping=args.get("group_by"),
        by=args.get("by"),
    )
    if kind == "sales":
        return services.sales_report(session, query)
    if kind == "funnel":
        return services.funnel_report(session, query)
    settings = current_app.config["CHATLEDGER"]
    return services.attribution_report(
        session,
        query,
        min_cardholders=settings.report_min_cardholders,
        limit=args.get("limit", 100),
        model=args.get("model", "last_touch"),
    )


def csv_response(kind: str, report: dict[str, Any]) -> Response:
    columns, rows = _csv_rows(kind, report)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    name = f"{kind}-{report['from']}-{report['to']}.csv"
    return Response(
        out.getvalue(),
        mimetype=CSV,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _csv_rows(kind: str, report: dict[str, Any]) -> tuple[list[str], Iterable[dict[str, Any]]]:
    if kind == "sales":
        dims = {
            None: [],
            "offer": ["offer_id", "offer_title", "conversation_id"],
            "conversation": ["conversation_id"],
        }[report["by"]]
        return ["period", "start", "end", *dims, "currency", *services.SALES_FIGURES], report[
            "rows"
        ]
    if kind == "funnel":
        rates = [name for name, _, _ in services.RATES]
        rows = report.get("rows")
        if rows is None:
            rows = [{"offer_id": None, **report["funnel"], "rates": report["rates"]}]
        flat = [{**r, **r["rates"]} for r in rows]
        return ["offer_id", "offer_title", *services.FUNNEL, *rates], flat
    columns = ["channel", "offer_id", "offer_title", "conversation_id", "currency", "window"]
    columns += ["count", "revenue", "suppressed", "suppression"]
    rows = [{"channel": "in_chat", **r} for r in report["in_chat"]["rows"]]
    rows += [{"channel": "off_platform", **r} for r in report["off_platform"]["rows"]]
    return columns, rows


@functools.lru_cache(maxsize=4096)
def _plain(value: Any) -> Any:
    """What the JSON encoder cannot write itself: times (UTC with a `Z`) and dates. (Cached:
    a year by day repeats the same 366 period edges in every currency.)"""
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_response(report: dict[str, Any]) -> Response:
    """The report as JSON, shaped as the response schemas document it (times in UTC with a
    `Z`, through `_plain`). Serialized directly, by orjson: a year by day is a thousand rows,
    and a schema dump of them, or the standard library's encoder, costs more than the query."""
    body = orjson.dumps(report, default=_plain, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return Response(body, mimetype="application/json")


def _answer(kind: str, args: dict[str, Any]) -> Any:
    report = build(kind, args, merchant_id())
    return csv_response(kind, report) if wants_csv() else json_response(report)


_CSV_DOC = {"responses": {"200": {"content": {CSV: {"schema": {"type": "string"}}}}}}


@blp.route("/sales")
class SalesReport(MethodView):
    @merchant_only
    @blp.arguments(SalesQuerySchema, location="query")
    @blp.response(200, SalesReportSchema)
    @blp.doc(security=BEARER, **_CSV_DOC)
    def get(self, args: dict[str, Any]) -> Any:
        """Paid sales by day, week or month in a time zone (DST-correct), optionally by offer
        or conversation, per currency: count, gross, refunds, disputes, net (minor units)."""
        return _answer("sales", args)


@blp.route("/funnel")
class FunnelReport(MethodView):
    @merchant_only
    @blp.arguments(FunnelQuerySchema, location="query")
    @blp.response(200, FunnelReportSchema)
    @blp.doc(security=BEARER, **_CSV_DOC)
    def get(self, args: dict[str, Any]) -> Any:
        """Offers delivered, viewed, clicked, accepted and paid, with the rate of each step."""
        return _answer("funnel", args)


@blp.route("/attribution")
class AttributionReport(MethodView):
    @merchant_only
    @blp.arguments(AttributionQuerySchema, location="query")
    @blp.response(200, AttributionReportSchema)
    @blp.doc(security=BEARER, **_CSV_DOC)
    def get(self, args: dict[str, Any]) -> Any:
        """Attributed revenue by offer, in chat and off platform by attribution window.
        Off-platform cells covering fewer than k distinct cardholders (and any cell that
        would reveal one by subtraction) are shown as null with `suppressed: true`."""
        return _answer("attribution", args)
