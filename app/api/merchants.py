"""Merchants: registered by the operator, each with its first API key shown once."""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.fields import Identifier, Text, Timestamp
from app.auth import BEARER, idempotent_without, operator_only
from app.web import db
from commerce.chat.models import CHANNELS
from commerce.merchants.services import PageSpec, create_merchant

blp = Blueprint("merchants", __name__, url_prefix="/v1/merchants", description="Merchants")


class ChatPageSchema(Schema):
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    page_id = Identifier(required=True, max_length=64)


class MerchantCreateSchema(Schema):
    name = Text(required=True, max_length=200)
    timezone = Text(
        load_default="UTC",
        max_length=64,
        metadata={"description": "An IANA time zone.", "enum": sorted(available_timezones())},
    )
    mids = fields.List(
        fields.String(validate=validate.Regexp(r"^[0-9A-Za-z]{1,15}$")),
        load_default=list,
        validate=validate.Length(max=100),
        metadata={
            "description": "Card-acceptor ids under which the networks know the stores; a MID "
            "already registered to a merchant is refused (400)."
        },
    )
    chat_pages = fields.List(
        fields.Nested(ChatPageSchema), load_default=list, validate=validate.Length(max=50)
    )
    stripe_account = fields.String(
        load_default=None, validate=validate.Regexp(r"^acct_[0-9A-Za-z]{1,59}$")
    )


class ApiKeyCreatedSchema(Schema):
    id = fields.String()
    secret = fields.String(metadata={"description": "Shown once; only its hash is kept."})
    prefix = fields.String()


class MerchantResponseSchema(Schema):
    id = fields.String()
    name = fields.String()
    timezone = fields.String()
    mids = fields.Function(lambda m: [row.mid for row in m.mids])
    chat_pages = fields.Function(
        lambda m: [{"channel": p.channel, "page_id": p.page_id} for p in m.chat_pages]
    )
    stripe_account = fields.String(allow_none=True)
    created_at = Timestamp()


class MerchantCreatedSchema(MerchantResponseSchema):
    api_key = fields.Nested(ApiKeyCreatedSchema)


@blp.route("")
class Merchants(MethodView):
    @operator_only
    @idempotent_without("api_key.secret")
    @blp.arguments(MerchantCreateSchema)
    @blp.response(201, MerchantCreatedSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Register a merchant with its MIDs and chat pages; answers with its first API key."""
        pages = [PageSpec(p["channel"], p["page_id"]) for p in data.pop("chat_pages")]
        merchant, key, secret = create_merchant(db(), chat_pages=pages, **data)
        merchant.api_key = {"id": key.id, "secret": secret, "prefix": key.prefix}
        return merchant
