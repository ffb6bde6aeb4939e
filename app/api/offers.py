"""Offers: reading one, recording touchpoints, and checking out."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.fields import Identifier, Timestamp
from app.auth import BEARER, idempotent, merchant_id, merchant_only
from app.web import db
from commerce.offers.models import TOUCHPOINT_KINDS
from commerce.offers.services import get_offer, record_touchpoint

blp = Blueprint("offers", __name__, url_prefix="/v1/offers", description="Offers")


class OfferResponseSchema(Schema):
    id = fields.String()
    conversation_id = fields.String()
    title = fields.String()
    amount = fields.Integer()
    currency = fields.String()
    quantity = fields.Integer()
    expires_at = Timestamp(allow_none=True)
    click_window_seconds = fields.Integer(allow_none=True)
    view_window_seconds = fields.Integer(allow_none=True)
    return_period_days = fields.Integer(allow_none=True)
    created_at = Timestamp()


class TouchpointCreateSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(TOUCHPOINT_KINDS))
    occurred_at = Timestamp(
        load_default=None,
        metadata={"description": "When it happened; now if omitted. Never in the future."},
    )
    external_id = Identifier(
        load_default=None,
        metadata={"description": "The sender's id for the interaction; repeats are ignored."},
    )


class TouchpointResponseSchema(Schema):
    id = fields.String()
    offer_id = fields.String()
    conversation_id = fields.String()
    kind = fields.String()
    occurred_at = Timestamp()
    external_id = fields.String(allow_none=True)
    source = fields.String()
    recorded_at = Timestamp()


@blp.route("/<offer_id>")
class OfferById(MethodView):
    @merchant_only
    @blp.response(200, OfferResponseSchema)
    @blp.doc(security=BEARER)
    def get(self, offer_id: str) -> Any:
        """One offer."""
        return get_offer(db(), merchant_id=merchant_id(), offer_id=offer_id)


@blp.route("/<offer_id>/touchpoints")
class OfferTouchpoints(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(TouchpointCreateSchema)
    @blp.response(201, TouchpointResponseSchema)
    @blp.alt_response(200, schema=TouchpointResponseSchema, description="Already recorded")
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], offer_id: str) -> Any:
        """Record a touchpoint: delivered, viewed, clicked, accepted or declined."""
        touchpoint, created = record_touchpoint(
            db(), merchant_id=merchant_id(), offer_id=offer_id, **data
        )
        return touchpoint, (201 if created else 200)
