"""Every model, imported once, so the metadata Alembic and the tests see is complete."""

from __future__ import annotations

from commerce.access.models import ApiKey, IdempotencyRecord
from commerce.chat.models import Conversation, Customer
from commerce.db import Base
from commerce.merchants.models import ChatPage, Merchant, MerchantMid
from commerce.offers.models import Offer, Touchpoint
from commerce.sales.models import Refund, Sale, SaleEvent

metadata = Base.metadata

__all__ = [
    "ApiKey",
    "ChatPage",
    "Conversation",
    "Customer",
    "IdempotencyRecord",
    "Merchant",
    "MerchantMid",
    "Offer",
    "Refund",
    "Sale",
    "SaleEvent",
    "Touchpoint",
    "metadata",
]
