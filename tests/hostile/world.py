"""Objects of every kind, made through the API, whose ids the hostile tests put in paths."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.api.test_isolation import Tenant, paid_tenant
from tests.helpers import OPERATOR
from tests.support.stripe_server import StripeServer


@dataclass
class World:
    """A paid tenant (merchant, conversation, offer, sale, webhook endpoint and delivery)
    and, on the operator's side, a partner with an agreement."""

    tenant: Tenant
    partner: dict[str, Any]
    agreement: dict[str, Any]

    @property
    def ids(self) -> dict[str, str]:
        return {
            **self.tenant.ids,
            "merchant_id": self.tenant.shop.merchant["id"],
            "customer_id": self.tenant.sale["customer_id"],
            "partner_id": self.partner["id"],
            "agreement_id": self.agreement["id"],
        }

    @property
    def merchant_headers(self) -> dict[str, str]:
        return self.tenant.shop.headers


def make_world(client: FlaskClient, stripe: StripeServer, db: Session) -> World:
    tenant = paid_tenant(client, stripe, db)
    partner = client.post("/v1/partners", json={"name": "Bank"}, headers=OPERATOR)
    assert partner.status_code == 201, partner.json
    agreement = client.post(
        f"/v1/partners/{partner.json['id']}/agreements",
        json={
            "scopes": ["transactions"],
            "purposes": ["sales_attribution"],
            "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "retention_days": 30,
        },
        headers=OPERATOR,
    )
    assert agreement.status_code == 201, agreement.json
    return World(tenant, partner.json, agreement.json)
