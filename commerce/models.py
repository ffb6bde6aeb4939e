"""Every model, imported once, so the metadata Alembic and the tests see is complete."""

from __future__ import annotations

from commerce.access.models import ApiKey, IdempotencyRecord
from commerce.alerts.models import FraudAlert
from commerce.attribution.models import Attribution, AttributionSettings
from commerce.audit.models import AuditEntry
from commerce.cards.models import CardAlias, CardRef, CardTransaction, MerchantCardAlias
from commerce.chat.models import Conversation, Customer
from commerce.consent.models import BalanceSnapshot, Consent, DeletionReceipt
from commerce.db import Base
from commerce.merchants.models import ChatPage, Merchant, MerchantMid
from commerce.offers.models import Offer, Touchpoint
from commerce.outbound.models import (
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointSecret,
)
from commerce.partners.models import Agreement, Partner, PartnerSecret
from commerce.payouts.models import Payout
from commerce.reconciliation.models import (
    PayoutLine,
    ReconciliationException,
    ReconciliationMatch,
    ReconciliationQueue,
    ReconciliationRun,
    ReconciliationSettings,
)
from commerce.reports.models import (
    DashboardSession,
    MerchantDayRollup,
    MerchantHourRollup,
    MerchantQuarterRollup,
    OfferRollup,
    ReportDayZone,
    ReportDelta,
)
from commerce.sales.models import Refund, Sale, SaleEvent

metadata = Base.metadata

__all__ = [
    "Agreement",
    "ApiKey",
    "Attribution",
    "AttributionSettings",
    "AuditEntry",
    "BalanceSnapshot",
    "CardAlias",
    "CardRef",
    "CardTransaction",
    "ChatPage",
    "Consent",
    "Conversation",
    "Customer",
    "DashboardSession",
    "DeletionReceipt",
    "FraudAlert",
    "IdempotencyRecord",
    "Merchant",
    "MerchantCardAlias",
    "MerchantDayRollup",
    "MerchantHourRollup",
    "MerchantMid",
    "MerchantQuarterRollup",
    "Offer",
    "OfferRollup",
    "OutboundEvent",
    "Partner",
    "PartnerSecret",
    "Payout",
    "PayoutLine",
    "ReconciliationException",
    "ReconciliationMatch",
    "ReconciliationQueue",
    "ReconciliationRun",
    "ReconciliationSettings",
    "Refund",
    "ReportDayZone",
    "ReportDelta",
    "Sale",
    "SaleEvent",
    "Touchpoint",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointSecret",
    "metadata",
]
