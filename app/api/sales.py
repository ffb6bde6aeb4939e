"""Sales: checkout of an offer, reading sales with their history, and refunds."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, pre_dump, validate
from sqlalchemy import select

from app.api import Blueprint
from app.api.fields import Amount, PageQuerySchema, Timestamp, page_of
from app.api.reconciliation import SaleReconciliationSchema
from app.auth import BEARER, idempotent, merchant_id, merchant_only
from app.web import db
from commerce.pagination import paginate
from commerce.reconciliation.services import sale_reconciliation
from commerce.sales.models import Sale
from commerce.sales.services import (
    REFUND_REASONS,
    checkout,
    get_sale,
    request_refund,
    sync_payment,
)
from commerce.sales.states import SaleState
from webhooks import inbox

blp = Blueprint("sales", __name__, url_prefix="/v1", description="Sales and refunds")


class SaleEventSchema(Schema):
    id = fields.String()
    kind = fields.String()
    source = fields.String()
    source_ref = fields.String()
    amount = fields.Integer(allow_none=True)
    occurred_at = Timestamp()
    recorded_at = Timestamp()
    outcome_on_arrival = fields.String()


class RefundResponseSchema(Schema):
    id = fields.String()
    sale_id = fields.String()
    amount = fields.Integer()
    currency = fields.String()
    reason = fields.String(allow_none=True)
    status = fields.String()
    provider_refund_id = fields.String(allow_none=True)
    failure_reason = fields.String(allow_none=True)
    created_at = Timestamp()
    updated_at = Timestamp()


class SaleSummarySchema(Schema):
    id = fields.String()
    offer_id = fields.String()
    conversation_id = fields.String()
    customer_id = fields.String()
    state = fields.String(metadata={"enum": [s.value for s in SaleState]})
    amount = fields.Integer()
    currency = fields.String()
    quantity = fields.Integer()
    amount_captured = fields.Integer()
    amount_refunded = fields.Integer()
    amount_disputed = fields.Integer()
    payment_intent_id = fields.String(allow_none=True)
    card_brand = fields.String(allow_none=True)
    card_last4 = fields.String(allow_none=True)
    card_alias = fields.String(
        allow_none=True,
        metadata={"description": "This merchant's own name for the card; never its number."},
    )
    created_at = Timestamp()
    updated_at = Timestamp()


class SaleAttributionSchema(Schema):
    channel = fields.String(metadata={"enum": ["in_chat"]})
    offer_id = fields.String()
    conversation_id = fields.String()


class SaleResponseSchema(SaleSummarySchema):
    events = fields.List(fields.Nested(SaleEventSchema))
    refunds = fields.List(fields.Nested(RefundResponseSchema))
    reconciliation = fields.Nested(
        SaleReconciliationSchema,
        metadata={
            "description": "The sale's reconciliation status, its matches, and its open or"
            " acknowledged exceptions."
        },
    )

    attribution = fields.Nested(
        SaleAttributionSchema,
        allow_none=True,
        metadata={
            "description": "A sale made in the chat is attributed to its own offer and"
            " conversation, once it is paid; null before."
        },
    )

    @pre_dump
    def _with_reconciliation(self, sale: Sale, **_: Any) -> Any:
        return _Reconciled(sale, sale_reconciliation(db(), sale))


class _Reconciled:
    """A sale as dumped: its own attributes, its reconciliation and its attribution."""

    def __init__(self, sale: Sale, reconciliation: dict[str, Any]) -> None:
        self._sale = sale
        self.reconciliation = reconciliation
        self.attribution = (
            {
                "channel": "in_chat",
                "offer_id": sale.offer_id,
                "conversation_id": sale.conversation_id,
            }
            if sale.amount_captured > 0
            else None
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sale, name)


class PaymentSchema(Schema):
    provider = fields.String()
    payment_intent_id = fields.String()
    client_secret = fields.String(
        metadata={"description": "Hand to the chat's payment sheet to collect payment."}
    )


class CheckoutResponseSchema(Schema):
    sale = fields.Nested(SaleSummarySchema)
    payment = fields.Nested(PaymentSchema)


class SaleListQuerySchema(PageQuerySchema):
    state = fields.String(load_default=None, validate=validate.OneOf([s.value for s in SaleState]))


class RefundCreateSchema(Schema):
    amount = Amount(
        load_default=None,
        metadata={"description": "Minor units; omit to refund all that is still refundable."},
    )
    reason = fields.String(load_default=None, validate=validate.OneOf(REFUND_REASONS))


@blp.route("/offers/<offer_id>/checkout")
class OfferCheckout(MethodView):
    @merchant_only
    @idempotent
    @blp.response(201, CheckoutResponseSchema)
    @blp.alt_response(200, schema=CheckoutResponseSchema, description="Already checked out")
    @blp.doc(security=BEARER)
    def post(self, offer_id: str) -> Any:
        """Accept the offer: create its sale and a Stripe PaymentIntent."""
        result = checkout(db(), merchant_id=merchant_id(), offer_id=offer_id)
        sale = result.sale
        if result.created and sale.payment_intent_id:
            # Stripe may have told us about this intent before this checkout committed.
            inbox.wake(db(), f"payment_intent:{sale.payment_intent_id}")
        body = {
            "sale": sale,
            "payment": {
                "provider": sale.payment_provider,
                "payment_intent_id": sale.payment_intent_id,
                "client_secret": sale.client_secret,
            },
        }
        return body, (201 if result.created else 200)


@blp.route("/sales")
class Sales(MethodView):
    @merchant_only
    @blp.arguments(SaleListQuerySchema, location="query")
    @blp.response(200, page_of(SaleSummarySchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """The merchant's sales, newest first."""
        statement = select(Sale).where(Sale.merchant_id == merchant_id())
        if query["state"]:
            statement = statement.where(Sale.state == query["state"])
        page = paginate(
            db(),
            statement,
            created_at=Sale.created_at,
            id_=Sale.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


@blp.route("/sales/<sale_id>")
class SaleById(MethodView):
    @merchant_only
    @blp.response(200, SaleResponseSchema)
    @blp.doc(security=BEARER)
    def get(self, sale_id: str) -> Any:
        """One sale with its event history and refunds."""
        return get_sale(db(), merchant_id=merchant_id(), sale_id=sale_id)


@blp.route("/sales/<sale_id>/refunds")
class SaleRefunds(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(RefundCreateSchema)
    @blp.response(202, RefundResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], sale_id: str) -> Any:
        """Refund all or part of a sale. Accepted at once, sent to Stripe by the worker."""
        return request_refund(db(), merchant_id=merchant_id(), sale_id=sale_id, **data)


@blp.route("/sales/<sale_id>/sync")
class SaleSync(MethodView):
    @merchant_only
    @blp.response(200, SaleResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, sale_id: str) -> Any:
        """Check the payment with Stripe now, without waiting for its webhook."""
        return sync_payment(db(), merchant_id=merchant_id(), sale_id=sale_id)
