"""Partners and their data-sharing agreements: recorded by the operator."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.api.fields import Text, Timestamp
from app.auth import BEARER, idempotent, idempotent_without, operator_only
from app.web import db
from commerce.consent.services import apply_consent
from commerce.db import utcnow
from commerce.partners.models import PURPOSES, SCOPES
from commerce.partners.services import (
    create_partner,
    get_partner,
    record_agreement,
    rotate_secret,
)

blp = Blueprint("partners", __name__, url_prefix="/v1/partners", description="Partners")


class PartnerCreateSchema(Schema):
    name = Text(required=True, max_length=200)


class PartnerResponseSchema(Schema):
    id = fields.String()
    name = fields.String()
    created_at = Timestamp()
    pan_reports = fields.Integer(
        metadata={"description": "Card numbers this partner sent in the clear (hashed, dropped)."}
    )
    webhook_url = fields.Function(lambda p: f"/webhooks/partners/{p.id}")


class PartnerCreatedSchema(PartnerResponseSchema):
    webhook_secret = fields.String(
        metadata={"description": "Standard Webhooks signing secret; shown once."}
    )


class SecretRotatedSchema(Schema):
    webhook_secret = fields.String()


class AgreementCreateSchema(Schema):
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)),
        required=True,
        validate=validate.Length(min=1, max=len(SCOPES)),
    )
    purposes = fields.List(
        fields.String(validate=validate.OneOf(PURPOSES)),
        required=True,
        validate=validate.Length(min=1, max=len(PURPOSES)),
    )
    starts_at = Timestamp(required=True)
    ends_at = Timestamp(
        load_default=None, metadata={"description": "After `starts_at`; open-ended if omitted."}
    )
    retention_days = fields.Integer(strict=True, required=True, validate=validate.Range(1, 3650))


class AgreementResponseSchema(Schema):
    id = fields.String()
    partner_id = fields.String()
    scopes = fields.List(fields.String())
    purposes = fields.List(fields.String())
    starts_at = Timestamp()
    ends_at = Timestamp(allow_none=True)
    retention_days = fields.Integer()
    status = fields.String()
    created_at = Timestamp()


class ConsentCardSchema(Schema):
    token = Text(load_default=None, allow_none=True, min_length=0, max_length=128)
    par = Text(load_default=None, allow_none=True, min_length=0, max_length=64)
    brand = Text(load_default=None, allow_none=True, min_length=0, max_length=20)
    last4 = fields.String(load_default=None, validate=validate.Regexp(r"^[0-9]{4}$"))


class ConsentChatSchema(Schema):
    channel = Text(required=True, min_length=0, max_length=20)
    user_id = Text(required=True, min_length=0, max_length=128)


class ConsentCreateSchema(Schema):
    customer_ref = Text(required=True, max_length=128)
    status = fields.String(required=True, validate=validate.OneOf(("granted", "revoked")))
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), load_default=list)
    purposes = fields.List(fields.String(validate=validate.OneOf(PURPOSES)), load_default=list)
    expires_at = Timestamp(load_default=None)
    # Omitted or an object, never null: a nullable nested schema is documented by apispec as
    # "the schema, or any object", which is not what this field accepts.
    chat = fields.Nested(ConsentChatSchema, load_default=None, allow_none=False)
    cards = fields.List(fields.Nested(ConsentCardSchema), load_default=list)


class ConsentResponseSchema(Schema):
    id = fields.String()
    partner_id = fields.String()
    customer_ref = fields.String()
    status = fields.String()
    scopes = fields.List(fields.String())
    purposes = fields.List(fields.String())
    expires_at = Timestamp(allow_none=True)
    as_of = Timestamp()


@blp.route("")
class Partners(MethodView):
    @operator_only
    @idempotent_without("webhook_secret")
    @blp.arguments(PartnerCreateSchema)
    @blp.response(201, PartnerCreatedSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Register a partner; answers with its webhook signing secret, once."""
        partner, secret = create_partner(db(), **data)
        partner.webhook_secret = secret
        return partner


@blp.route("/<partner_id>")
class PartnerById(MethodView):
    @operator_only
    @blp.response(200, PartnerResponseSchema)
    @blp.doc(security=BEARER)
    def get(self, partner_id: str) -> Any:
        """One partner, with how many card numbers it sent in the clear (flagged)."""
        return get_partner(db(), partner_id)


@blp.route("/<partner_id>/secrets")
class PartnerSecrets(MethodView):
    @operator_only
    @blp.response(201, SecretRotatedSchema)
    @blp.doc(security=BEARER)
    def post(self, partner_id: str) -> Any:
        """Rotate the signing secret; the previous one keeps verifying for 24 hours."""
        return {"webhook_secret": rotate_secret(db(), partner_id)}


@blp.route("/<partner_id>/agreements")
class PartnerAgreements(MethodView):
    @operator_only
    @idempotent
    @blp.arguments(AgreementCreateSchema)
    @blp.response(201, AgreementResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], partner_id: str) -> Any:
        """Record a data-sharing agreement: scopes, purposes, period and retention."""
        return record_agreement(db(), partner_id=partner_id, **data)


@blp.route("/<partner_id>/consents")
class PartnerConsents(MethodView):
    @operator_only
    @blp.arguments(ConsentCreateSchema)
    @blp.response(201, ConsentResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], partner_id: str) -> Any:
        """Record a cardholder's consent (or its revocation) for a partner, as the partner's
        own `consent.*` events do: for consents given outside the partner's systems."""
        get_partner(db(), partner_id)
        granted = data.pop("status") == "granted"
        if data.get("expires_at") is not None:
            data["expires_at"] = data["expires_at"].isoformat()
        return apply_consent(
            db(), partner_id=partner_id, granted=granted, data=data, as_of=utcnow()
        )
