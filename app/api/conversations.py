"""Conversations and the offers posted in them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.fields import Amount, CurrencyCode, Identifier, Text, Timestamp
from app.api.offers import OfferResponseSchema
from app.auth import BEARER, idempotent, merchant_id, merchant_only
from app.web import db
from commerce.chat.models import CHANNELS
from commerce.chat.services import get_conversation, open_conversation
from commerce.offers.services import post_offer

blp = Blueprint(
    "conversations", __name__, url_prefix="/v1/conversations", description="Conversations"
)

_DAY = 86_400


class ConversationCreateSchema(Schema):
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    thread_id = Identifier(required=True)
    customer_user_id = Identifier(
        required=True,
        metadata={
            "description": "The channel's id for the customer. A thread already open with "
            "another customer is refused (400)."
        },
    )


class ConversationResponseSchema(Schema):
    id = fields.String()
    channel = fields.String()
    thread_id = fields.String()
    customer_id = fields.String()
    created_at = Timestamp()


class OfferCreateSchema(Schema):
    title = Text(required=True, max_length=200)
    amount = Amount(required=True)
    currency = CurrencyCode(required=True)
    quantity = fields.Integer(strict=True, load_default=1, validate=validate.Range(1, 10_000))
    expires_at = Timestamp(load_default=None)
    click_window_seconds = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(60, 90 * _DAY)
    )
    view_window_seconds = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(60, 90 * _DAY)
    )
    return_period_days = fields.Integer(
        strict=True, load_default=None, validate=validate.Range(0, 365)
    )


@blp.route("")
class Conversations(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(ConversationCreateSchema)
    @blp.response(201, ConversationResponseSchema)
    @blp.alt_response(200, schema=ConversationResponseSchema, description="Already open")
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Open the conversation for a thread, or find the one already open."""
        conversation, created = open_conversation(db(), merchant_id=merchant_id(), **data)
        return conversation, (201 if created else 200)


@blp.route("/<conversation_id>")
class ConversationById(MethodView):
    @merchant_only
    @blp.response(200, ConversationResponseSchema)
    @blp.doc(security=BEARER)
    def get(self, conversation_id: str) -> Any:
        """One conversation."""
        return get_conversation(db(), merchant_id=merchant_id(), conversation_id=conversation_id)


@blp.route("/<conversation_id>/offers")
class ConversationOffers(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(OfferCreateSchema)
    @blp.response(201, OfferResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], conversation_id: str) -> Any:
        """Post an offer in the conversation."""
        return post_offer(db(), merchant_id=merchant_id(), conversation_id=conversation_id, **data)
