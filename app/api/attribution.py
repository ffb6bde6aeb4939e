"""Attribution: the merchant's default windows and return period.

Attributed revenue itself is read from `GET /v1/reports/attribution`: off-platform figures
come from partner data and are shown as aggregates only, so there is no list of individual
attributed purchases. Rules: docs/ATTRIBUTION.md."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.api import Blueprint
from app.auth import BEARER, merchant_id, merchant_only
from app.web import db
from commerce.attribution import services

blp = Blueprint(
    "attribution",
    __name__,
    url_prefix="/v1/attribution",
    description="Attribution of purchases to conversations and offers",
)


class AttributionSettingsSchema(Schema):
    click_window_seconds = fields.Integer(
        validate=validate.Range(min=60, max=90 * 86400),
        metadata={"description": "After a click or an acceptance; an offer's own comes first."},
    )
    view_window_seconds = fields.Integer(
        validate=validate.Range(min=60, max=90 * 86400),
        metadata={"description": "After a view; an offer's own comes first."},
    )
    return_period_days = fields.Integer(
        validate=validate.Range(min=0, max=365),
        metadata={"description": "Refunds and reversals within it take the credit back."},
    )


@blp.route("/settings")
class Settings(MethodView):
    @merchant_only
    @blp.response(200, AttributionSettingsSchema)
    @blp.doc(security=BEARER)
    def get(self) -> Any:
        """The merchant's default attribution windows and return period."""
        return services.get_settings(db(), merchant_id())

    @merchant_only
    @blp.arguments(AttributionSettingsSchema)
    @blp.response(200, AttributionSettingsSchema)
    @blp.doc(security=BEARER)
    def put(self, data: dict[str, Any]) -> Any:
        """Change the defaults (fields left out keep their value). Purchases are credited
        under them from their next attribution; a reconciliation run over a period applies
        them to it at once."""
        return services.update_settings(db(), merchant_id(), **data)
