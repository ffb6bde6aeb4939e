"""The payment provider, behind an interface.

Stripe is the one implementation (`commerce.payments.stripe`); the tests reach a
local stand-in through the same class, pointed at another API base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class IntentResult:
    id: str
    client_secret: str | None
    status: str


@dataclass(frozen=True, slots=True)
class IntentStatus:
    """What the provider currently says about a PaymentIntent."""

    id: str
    #: requires_payment_method | requires_confirmation | requires_action | processing
    #: | requires_capture | canceled | succeeded
    status: str
    amount_capturable: int
    amount_received: int
    #: The charge that moved the money, once there is one.
    latest_charge: str | None


@dataclass(frozen=True, slots=True)
class RefundResult:
    id: str
    #: pending | succeeded | failed | canceled | requires_action
    status: str
    amount: int
    failure_reason: str | None = None


class PaymentProvider(Protocol):
    name: str

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        connected_account: str | None,
    ) -> IntentResult: ...

    def retrieve_payment_intent(
        self, intent_id: str, *, currency: str, connected_account: str | None
    ) -> IntentStatus: ...

    def cancel_payment_intent(
        self, intent_id: str, *, idempotency_key: str, connected_account: str | None
    ) -> IntentResult: ...

    def create_refund(
        self,
        *,
        intent_id: str,
        amount: int,
        currency: str,
        reason: str | None,
        metadata: Mapping[str, str],
        idempotency_key: str,
        connected_account: str | None,
    ) -> RefundResult: ...


_provider: PaymentProvider | None = None


def configure(provider: PaymentProvider | None) -> None:
    """Install the process's provider; the web app and the worker do this at start."""
    global _provider
    _provider = provider


def provider() -> PaymentProvider:
    from commerce.errors import ProviderError

    if _provider is None:
        raise ProviderError(
            "No payment provider is configured: set CHATLEDGER_STRIPE_API_KEY.", retryable=False
        )
    return _provider
