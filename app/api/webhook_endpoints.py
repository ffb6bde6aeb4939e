"""Outbound webhooks: a merchant's endpoints, their secrets, the delivery log, redelivery;
disabling an endpoint by hand, enabling it again (after a 410 too), and deleting it. Every
route is the merchant's own: another merchant's endpoint id answers 404."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.api import Blueprint
from app.api.fields import PageQuerySchema, Text, Timestamp, page_of
from app.auth import BEARER, idempotent, idempotent_without, merchant_id, merchant_only
from app.web import db
from commerce.outbound.models import (
    DELIVERY_STATUSES,
    EVENT_TYPES,
    WebhookDelivery,
    WebhookEndpoint,
)
from commerce.outbound.services import (
    create_endpoint,
    delete_endpoint,
    disable_endpoint,
    enable_endpoint,
    get_endpoint,
    redeliver,
    redeliver_many,
    rotate_secret,
)
from commerce.pagination import paginate

blp = Blueprint(
    "webhook_endpoints",
    __name__,
    url_prefix="/v1/webhook-endpoints",
    description="Outbound webhooks to the merchant",
)


class EndpointCreateSchema(Schema):
    url = Text(
        required=True,
        max_length=2048,
        metadata={"description": "http(s) URL on a public address; checked at every attempt."},
    )
    event_types = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        required=True,
        validate=validate.Length(min=1, max=len(EVENT_TYPES)),
    )


class EndpointResponseSchema(Schema):
    id = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String())
    status = fields.String(metadata={"enum": ["enabled", "disabled"]})
    disabled_reason = fields.String(
        allow_none=True,
        metadata={"description": "Why it is disabled: the receiver answered 410, or by hand."},
    )
    disabled_at = Timestamp(allow_none=True)
    created_at = Timestamp()


class EndpointCreatedSchema(EndpointResponseSchema):
    secret = fields.String(
        metadata={"description": "Standard Webhooks signing secret (`whsec_...`); shown once."}
    )


class EndpointSecretRotatedSchema(Schema):
    secret = fields.String(
        metadata={
            "description": "The new signing secret, shown once. The previous one keeps signing "
            "for 24 hours: deliveries carry one signature per valid secret."
        }
    )


class AttemptSchema(Schema):
    attempted_at = Timestamp()
    status_code = fields.Integer(allow_none=True)
    latency_ms = fields.Integer()
    outcome = fields.String(metadata={"enum": ["delivered", "retry", "disabled", "failed"]})
    error = fields.String(allow_none=True)


class DeliveryResponseSchema(Schema):
    id = fields.String()
    endpoint_id = fields.String()
    event_id = fields.String(metadata={"description": "Sent as `webhook-id`, on every attempt."})
    event_type = fields.Function(lambda d: d.event.type)
    status = fields.String(metadata={"enum": list(DELIVERY_STATUSES)})
    attempts = fields.Integer()
    next_attempt_at = Timestamp(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = Timestamp(allow_none=True)
    created_at = Timestamp()
    attempt_log = fields.List(fields.Nested(AttemptSchema), data_key="attempt_log")


class DeliveryListQuerySchema(PageQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf(DELIVERY_STATUSES))


class BulkRedeliverySchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(DELIVERY_STATUSES))
    since = Timestamp(load_default=None)
    until = Timestamp(load_default=None)


class BulkRedeliveryResponseSchema(Schema):
    redelivered = fields.Integer()


@blp.route("")
class Endpoints(MethodView):
    @merchant_only
    @idempotent_without("secret")
    @blp.arguments(EndpointCreateSchema)
    @blp.response(201, EndpointCreatedSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any]) -> Any:
        """Register an endpoint; answers with its signing secret, once."""
        endpoint, secret = create_endpoint(db(), merchant_id=merchant_id(), **data)
        endpoint.secret = secret
        return endpoint

    @merchant_only
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, page_of(EndpointResponseSchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any]) -> Any:
        """The merchant's endpoints, newest first."""
        page = paginate(
            db(),
            select(WebhookEndpoint).where(WebhookEndpoint.merchant_id == merchant_id()),
            created_at=WebhookEndpoint.created_at,
            id_=WebhookEndpoint.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


#: Another merchant's endpoint id answers as an unknown one does.
NOT_FOUND = "No endpoint of this merchant has this id."


@blp.route("/<endpoint_id>")
class Endpoint(MethodView):
    @merchant_only
    @blp.response(200, EndpointResponseSchema)
    @blp.alt_response(404, description=NOT_FOUND)
    @blp.doc(security=BEARER)
    def get(self, endpoint_id: str) -> Any:
        """One endpoint, with its status and why it is disabled."""
        return get_endpoint(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)

    @merchant_only
    @blp.response(204)
    @blp.alt_response(404, description=NOT_FOUND)
    @blp.doc(security=BEARER)
    def delete(self, endpoint_id: str) -> None:
        """Delete the endpoint with its secrets and delivery log. Deliveries still pending
        are dropped: nothing more is sent to it. The events themselves are kept."""
        delete_endpoint(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)


@blp.route("/<endpoint_id>/disable")
class EndpointDisable(MethodView):
    @merchant_only
    @blp.response(200, EndpointResponseSchema)
    @blp.alt_response(404, description=NOT_FOUND)
    @blp.doc(security=BEARER)
    def post(self, endpoint_id: str) -> Any:
        """Stop sending to the endpoint. Its pending deliveries are canceled (a redelivery
        sends them again once it is enabled); new events record no delivery for it."""
        return disable_endpoint(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)


@blp.route("/<endpoint_id>/enable")
class EndpointEnable(MethodView):
    @merchant_only
    @blp.response(200, EndpointResponseSchema)
    @blp.alt_response(404, description=NOT_FOUND)
    @blp.doc(security=BEARER)
    def post(self, endpoint_id: str) -> Any:
        """Send to the endpoint again, after a 410 Gone or a disable by hand. The URL is
        checked again as at registration (400 if it now names a non-public address).
        Canceled deliveries stay canceled until redelivered (`status: canceled`)."""
        return enable_endpoint(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)


@blp.route("/<endpoint_id>/secrets")
class EndpointSecrets(MethodView):
    @merchant_only
    @idempotent_without("secret")
    @blp.response(201, EndpointSecretRotatedSchema)
    @blp.doc(security=BEARER)
    def post(self, endpoint_id: str) -> Any:
        """Rotate the signing secret; the previous one keeps signing for 24 hours."""
        return {"secret": rotate_secret(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)}


@blp.route("/<endpoint_id>/deliveries")
class EndpointDeliveries(MethodView):
    @merchant_only
    @blp.arguments(DeliveryListQuerySchema, location="query")
    @blp.response(200, page_of(DeliveryResponseSchema))
    @blp.doc(security=BEARER)
    def get(self, query: dict[str, Any], endpoint_id: str) -> Any:
        """The endpoint's deliveries, newest first, each with every attempt made."""
        get_endpoint(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id)
        statement = (
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .options(selectinload(WebhookDelivery.event), selectinload(WebhookDelivery.attempt_log))
        )
        if query["status"]:
            statement = statement.where(WebhookDelivery.status == query["status"])
        page = paginate(
            db(),
            statement,
            created_at=WebhookDelivery.created_at,
            id_=WebhookDelivery.id,
            limit=query["limit"],
            cursor=query["cursor"],
        )
        return {"data": page.items, "next_cursor": page.next_cursor}


@blp.route("/<endpoint_id>/deliveries/<delivery_id>/redeliver")
class DeliveryRedelivery(MethodView):
    @merchant_only
    @blp.response(202, DeliveryResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, endpoint_id: str, delivery_id: str) -> Any:
        """Send one delivery again (same event, same `webhook-id`), with a new retry window."""
        return redeliver(
            db(), merchant_id=merchant_id(), endpoint_id=endpoint_id, delivery_id=delivery_id
        )


@blp.route("/<endpoint_id>/deliveries/redeliver")
class BulkRedelivery(MethodView):
    @merchant_only
    @idempotent
    @blp.arguments(BulkRedeliverySchema)
    @blp.response(202, BulkRedeliveryResponseSchema)
    @blp.doc(security=BEARER)
    def post(self, data: dict[str, Any], endpoint_id: str) -> Any:
        """Send again every delivery of the endpoint in a status (and created in a period),
        up to 1000 at a time, oldest first."""
        count = redeliver_many(db(), merchant_id=merchant_id(), endpoint_id=endpoint_id, **data)
        return {"redelivered": count}
