"""Operator endpoints for privacy: cardholders' data rights, the audit log, deletion receipts,
and ending an agreement."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import Schema, fields
from sqlalchemy import select

from app.api import Blueprint
from app.api.fields import PageQuerySchema, Timestamp, page_of
from app.auth import BEARER, operator_only
from app.web import db
from commerce.audit.models import AuditEntry
from commerce.consent.cascade import delete_partner_data
from commerce.consent.models import DeletionReceipt
from commerce.consent.rights import erase, export
from commerce.errors import InvalidInput, NotFound
from commerce.pagination import paginate
from commerce.partners.models import Agreement
from webhooks import inbox

blp = Blueprint("privacy", __name__, url_prefix="/v1", description="Privacy and audit")


class ReceiptSchema(Schema):
    id = fields.String()
    created_at = Timestamp()
    reason = fields.String()
    partner_id = fields.String(allow_none=True)
    customer_ref = fields.String(allow_none=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = Timestamp()
    actor = fields.String()
    action = fields.String()
    subject_type = fields.String(allow_none=True)
    subject_id = fields.String(allow_none=True)
    purpose = fields.String(allow_none=True)
    detail = fields.Dict()


class AgreementEndedSchema(Schema):
    id = fields.String()
    status = fields.String()
    receipt = fields.Nested(ReceiptSchema, allow_none=True)


class CustomerExportSchema(Schema):
    customer = fields.Dict()
    conversations = fields.List(fields.Dict())
    touchpoints = fields.List(fields.Dict())
    sales = fields.List(fields.Dict())
    consents = fields.List(fields.Dict())
    card_transactions = fields.List(fields.Dict())
    balances = fields.List(fields.Dict())


def _actor() -> str:
    return g.api_key.id


@blp.route("/customers/<customer_id>/export")
class CustomerExport(MethodView):
    @operator_only
    @blp.response(200, CustomerExportSchema)
    @blp.doc(security=BEARER)
    def get(self, customer_id: str) -> Any:
        """Everything held about a cardholder, as JSON."""
        return export(db(), customer_id=customer_id, actor=_actor())


@blp.route("/customers/<customer_id>")
class Customer(MethodView):
    @operator_only
    @blp.response(200, ReceiptSchema)
    @blp.doc(security=BEARER)
    def delete(self, customer_id: str) -> Any:
        """Erase a cardholder: merchants keep their sales, no longer linked to the person."""
        receipt, channel, user_id = erase(db(), customer_id=customer_id, actor=_actor())
        forgotten = inbox.forget_chat_user(db(), channel=channel, user_id=user_id)
        receipt.counts = {**receipt.counts, "chat_events": forgotten}
        return receipt


@blp.route("/partners/<partner_id>/agreements/<agreement_id>/terminate")
class AgreementTermination(MethodView):
    @operator_only
    @blp.response(200, AgreementEndedSchema)
    @blp.doc(security=BEARER)
    def post(self, partner_id: str, agreement_id: str) -> Any:
        """End an agreement now: the partner's flow stops, and what no other agreement in
        force covers is deleted, with a receipt."""
        agreement = db().get(Agreement, agreement_id, with_for_update=True)
        if agreement is None or agreement.partner_id != partner_id:
            raise NotFound("agreement")
        agreement.status = "terminated"
        db().flush()
        receipt = None
        others = db().scalar(
            select(Agreement.id).where(
                Agreement.partner_id == partner_id, Agreement.status == "active"
            )
        )
        if others is None:
            receipt = delete_partner_data(
                db(), partner_id=partner_id, customer_ref=None, reason="agreement_ended"
            )
        return {"id": agreement.id, "status": agreement.status, "receipt": receipt}


@blp.route("/deletion-receipts")
class DeletionReceipts(MethodView):
    @operator_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_of(ReceiptSchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """Receipts for deleted partner data and erased cardholders, newest first."""
        page = paginate(
            db(),
            select(DeletionReceipt),
            created_at=DeletionReceipt.created_at,
            id_=DeletionReceipt.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


@blp.route("/audit-log")
class AuditLog(MethodView):
    @operator_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_of(AuditEntrySchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """The audit log, newest first: reads of partner data and every operator action."""
        limit = max(1, min(query["limit"], 100))
        statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
        if query["cursor"]:
            if not query["cursor"].isdigit():
                raise InvalidInput({"cursor": ["Not a cursor this API returned."]})
            statement = statement.where(AuditEntry.id < int(query["cursor"]))
        rows = list(db().scalars(statement))
        more = len(rows) > limit
        rows = rows[:limit]
        return {"data": rows, "next_cursor": str(rows[-1].id) if more else None}
