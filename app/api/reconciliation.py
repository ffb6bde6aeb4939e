"""Reconciliation: exceptions (JSON or CSV), acknowledging one, the merchant's tolerances,
and batch runs over a period. Rules: docs/RECONCILIATION.md."""

from __future__ import annotations

import json
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate
from sqlalchemy import select

from app.api import Blueprint
from app.api.csvfile import csv_file, wants_csv
from app.api.fields import PageQuerySchema, Text, Timestamp, page_of
from app.auth import (
    BEARER,
    idempotent,
    is_operator,
    merchant_id,
    merchant_only,
    merchant_or_operator,
)
from app.web import db
from commerce.db import after_commit
from commerce.errors import InvalidInput, NotFound
from commerce.pagination import paginate
from commerce.reconciliation import services
from commerce.reconciliation.models import (
    EXCEPTION_STATUSES,
    EXCEPTION_TYPES,
    ReconciliationException,
    ReconciliationRun,
)

blp = Blueprint(
    "reconciliation",
    __name__,
    url_prefix="/v1/reconciliation",
    description="Reconciliation of sales with Stripe and card data",
)

#: CSV exports stop here; narrow the filter for more.
CSV_LIMIT = 100_000


class MatchSchema(Schema):
    kind = fields.String(
        metadata={"enum": ["stripe_charge", "stripe_refund", "card_purchase", "card_refund"]}
    )
    source_key = fields.String(
        metadata={"description": "A Stripe charge or refund id, or `partner:transaction`."}
    )
    rule = fields.String(metadata={"description": "The rule that made the match."})
    fields_ = fields.Dict(
        data_key="fields", attribute="fields", metadata={"description": "What agreed."}
    )
    confidence = fields.Float()
    amount = fields.Integer(allow_none=True)
    currency = fields.String(allow_none=True)
    created_at = Timestamp()


class ExceptionSchema(Schema):
    id = fields.String()
    merchant_id = fields.String()
    type = fields.String(metadata={"enum": list(EXCEPTION_TYPES)})
    status = fields.String(metadata={"enum": list(EXCEPTION_STATUSES)})
    subject_key = fields.String(
        metadata={"description": "What it is about: `sale:...`, `txn:...` or `payout:...`."}
    )
    sale_id = fields.String(allow_none=True)
    payout_id = fields.String(allow_none=True)
    fields_ = fields.Dict(
        data_key="fields",
        attribute="fields",
        metadata={"description": "The fields that differ, each with both values."},
    )
    opened_at = Timestamp(metadata={"description": "When what it is about happened."})
    resolved_at = Timestamp(allow_none=True)
    acknowledged_at = Timestamp(allow_none=True)
    note = fields.String(allow_none=True)
    updated_at = Timestamp()


class SaleReconciliationSchema(Schema):
    status = fields.String(metadata={"enum": ["unpaid", "reconciled", "exceptions"]})
    matches = fields.List(fields.Nested(MatchSchema))
    exceptions = fields.List(fields.Nested(ExceptionSchema))


class ExceptionQuerySchema(PageQuerySchema):
    type = fields.List(fields.String(validate=validate.OneOf(EXCEPTION_TYPES)), load_default=list)
    status = fields.List(
        fields.String(validate=validate.OneOf(EXCEPTION_STATUSES)), load_default=list
    )
    from_ = Timestamp(data_key="from", load_default=None)
    to = Timestamp(load_default=None)
    merchant_id = fields.String(
        load_default=None,
        validate=validate.Length(max=32),
        metadata={"description": "The operator's filter; refused from a merchant's key."},
    )


class AcknowledgeSchema(Schema):
    note = Text(required=True, max_length=2000)


class SettingsSchema(Schema):
    amount_tolerance = fields.Integer(
        validate=validate.Range(min=0, max=10**9),
        metadata={"description": "Minor units by which a card amount may differ and match."},
    )
    time_window_seconds = fields.Integer(
        validate=validate.Range(min=60, max=30 * 86400),
        metadata={"description": "How far apart a card purchase and the checkout may be."},
    )
    clearing_days = fields.Integer(
        validate=validate.Range(min=1, max=90),
        metadata={"description": "Days after which an authorization not cleared is missing."},
    )


class RunCreateSchema(Schema):
    from_ = Timestamp(data_key="from", required=True)
    to = Timestamp(required=True)
    merchant_id = fields.String(
        load_default=None,
        validate=validate.Length(max=32),
        metadata={
            "description": "The operator's choice of one merchant (every merchant if left"
            " out); refused from a merchant's key, which runs its own."
        },
    )


class RunSchema(Schema):
    id = fields.String()
    merchant_id = fields.String(allow_none=True, metadata={"description": "None: every merchant."})
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed"]})
    from_ = Timestamp(data_key="from", attribute="period_start")
    to = Timestamp(attribute="period_end")
    summary = fields.Dict(
        allow_none=True,
        metadata={
            "description": "Sales of the period: reconciled, with exceptions, unpaid, matched"
            " to card data, amounts by currency; exceptions by type and status."
        },
    )
    error = fields.String(allow_none=True)
    created_at = Timestamp()
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


_CSV_COLUMNS = (
    "id",
    "type",
    "status",
    "subject_key",
    "sale_id",
    "payout_id",
    "opened_at",
    "resolved_at",
    "acknowledged_at",
    "note",
    "fields",
)


def _csv_rows(query: Any) -> Any:
    for row in db().scalars(
        query.order_by(ReconciliationException.opened_at.desc(), ReconciliationException.id.desc())
        .limit(CSV_LIMIT)
        .execution_options(yield_per=1000)
    ):
        yield [
            row.id,
            row.type,
            row.status,
            row.subject_key,
            row.sale_id,
            row.payout_id,
            row.opened_at,
            row.resolved_at,
            row.acknowledged_at,
            row.note,
            json.dumps(row.fields, sort_keys=True, separators=(",", ":")),
        ]


def _scope(requested: str | None = None) -> str | None:
    """Whose objects the key reaches: a merchant's own, always; the operator's, the merchant
    it names, or every merchant. A merchant key naming a merchant is refused: the key
    decides, never the request."""
    if is_operator():
        return requested
    if requested is not None:
        raise InvalidInput({"merchant_id": ["Only the operator names a merchant."]})
    return merchant_id()


@blp.route("/exceptions")
class Exceptions(MethodView):
    @merchant_or_operator
    @blp.arguments(ExceptionQuerySchema, location="query")
    @blp.response(200, page_of(ExceptionSchema))
    @blp.alt_response(200, content_type="text/csv", description="With `Accept: text/csv`.")
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """The merchant's reconciliation exceptions, newest first; filter by type, status and
        the period in which what they are about happened. `Accept: text/csv` answers every
        matching exception (up to 100,000) as CSV, without pages."""
        statement = services.exceptions_query(
            _scope(query["merchant_id"]),
            types=query["type"],
            statuses=query["status"],
            start=query["from_"],
            end=query["to"],
        )
        if wants_csv():
            return csv_file("reconciliation-exceptions.csv", _CSV_COLUMNS, _csv_rows(statement))
        page = paginate(
            db(),
            statement,
            created_at=ReconciliationException.opened_at,
            id_=ReconciliationException.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


@blp.route("/exceptions/<exception_id>")
class ExceptionById(MethodView):
    @merchant_or_operator
    @blp.response(200, ExceptionSchema)
    @blp.doc(security=BEARER)
    def get(self, exception_id: str) -> Any:
        """One exception."""
        return services.get_exception(db(), _scope(), exception_id)


@blp.route("/exceptions/<exception_id>/acknowledge")
class ExceptionAcknowledge(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(AcknowledgeSchema)
    @blp.response(200, ExceptionSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], exception_id: str) -> Any:
        """Acknowledge an open exception with a note. It stays acknowledged until later
        events explain it; a resolved exception answers 409."""
        return services.acknowledge(db(), merchant_id(), exception_id, data["note"])


@blp.route("/settings")
class Settings(MethodView):
    @merchant_only
    @blp.response(200, SettingsSchema)
    @blp.doc(security=BEARER)
    def get(self) -> Any:
        """The merchant's reconciliation tolerances."""
        return services.get_settings(db(), merchant_id())

    @merchant_only
    @blp.arguments(SettingsSchema)
    @blp.response(200, SettingsSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any]) -> Any:
        """Change the tolerances (fields left out keep their value). They apply to each sale
        from its next reconciliation; a run over a period applies them to it at once."""
        return services.update_settings(db(), merchant_id(), **data)


@blp.route("/runs")
class Runs(MethodView):
    @merchant_or_operator
    @idempotent
    @blp.arguments(RunCreateSchema)
    @blp.response(202, RunSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Reconcile the merchant's sales and card data of a period (at most 366 days) as a
        batch, then attribute its off-platform purchases. Accepted at once and run by the
        worker; running it again changes nothing. The operator may run every merchant."""
        from commerce.merchants.models import Merchant
        from commerce.reconciliation.tasks import run_batch

        session = db()
        scope = _scope(data["merchant_id"])
        if scope is not None and session.get(Merchant, scope) is None:
            raise NotFound("merchant")
        run = services.create_run(session, merchant_id=scope, start=data["from_"], end=data["to"])
        run_id = run.id
        after_commit(session, lambda: run_batch.delay(run_id))
        return run

    @merchant_or_operator
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_of(RunSchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """The merchant's runs (the operator: every run), newest first."""
        statement = select(ReconciliationRun)
        if not is_operator():
            statement = statement.where(ReconciliationRun.merchant_id == merchant_id())
        page = paginate(
            db(),
            statement,
            created_at=ReconciliationRun.created_at,
            id_=ReconciliationRun.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


@blp.route("/runs/<run_id>")
class RunById(MethodView):
    @merchant_or_operator
    @blp.response(200, RunSchema)
    @blp.doc(security=BEARER)
    def get(self, run_id: str) -> Any:
        """A run, with its summary once it has finished."""
        return services.get_run(db(), _scope(), run_id)
