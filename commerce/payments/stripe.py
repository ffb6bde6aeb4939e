"""Stripe through its official SDK.

Amounts cross this boundary in ISO 4217 minor units and are converted to Stripe's
own convention here and only here: Stripe still expects ISK and UGX with two
decimals (an amount in whole krónur times 100), though ISO gives them none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import stripe

from commerce.errors import ProviderError
from commerce.payments import IntentResult, IntentStatus, RefundResult

#: Currencies where Stripe's API counts more decimals than ISO 4217 does.
_STRIPE_EXTRA_DIGITS = {"ISK": 2, "UGX": 2}


def to_stripe_amount(amount: int, currency: str) -> int:
    return amount * 10 ** _STRIPE_EXTRA_DIGITS.get(currency.upper(), 0)


def from_stripe_amount(amount: int, currency: str) -> int:
    return amount // 10 ** _STRIPE_EXTRA_DIGITS.get(currency.upper(), 0)


class StripeProvider:
    name = "stripe"

    def __init__(self, api_key: str, *, api_base: str | None = None) -> None:
        addresses: dict[str, str] = {}
        if api_base:
            addresses["api"] = api_base.rstrip("/")
        # The SDK retries connection errors and 409/5xx answers itself, reusing the
        # idempotency key, so a retry never creates a second object.
        self._client = stripe.StripeClient(
            api_key, base_addresses=addresses or None, max_network_retries=2
        )

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        connected_account: str | None,
    ) -> IntentResult:
        params: dict[str, Any] = {
            "amount": to_stripe_amount(amount, currency),
            "currency": currency.lower(),
            "description": description,
            "metadata": dict(metadata),
            "automatic_payment_methods": {"enabled": True},
        }
        intent = self._call(
            self._client.v1.payment_intents.create,
            params,
            self._options(idempotency_key, connected_account),
        )
        return IntentResult(intent.id, intent.client_secret, intent.status)

    def retrieve_payment_intent(
        self, intent_id: str, *, currency: str, connected_account: str | None
    ) -> IntentStatus:
        options = {"stripe_account": connected_account} if connected_account else {}
        intent = self._call(
            lambda params, opts: self._client.v1.payment_intents.retrieve(intent_id, params, opts),
            {},
            options,
        )
        charge = intent.latest_charge
        return IntentStatus(
            id=intent.id,
            status=intent.status,
            amount_capturable=from_stripe_amount(intent.amount_capturable or 0, currency),
            amount_received=from_stripe_amount(intent.amount_received or 0, currency),
            latest_charge=charge if isinstance(charge, str) or charge is None else charge.id,
        )

    def cancel_payment_intent(
        self, intent_id: str, *, idempotency_key: str, connected_account: str | None
    ) -> IntentResult:
        intent = self._call(
            lambda params, options: self._client.v1.payment_intents.cancel(
                intent_id, params, options
            ),
            {},
            self._options(idempotency_key, connected_account),
        )
        return IntentResult(intent.id, None, intent.status)

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
    ) -> RefundResult:
        params: dict[str, Any] = {
            "payment_intent": intent_id,
            "amount": to_stripe_amount(amount, currency),
            "metadata": dict(metadata),
        }
        if reason:
            params["reason"] = reason
        refund = self._call(
            self._client.v1.refunds.create,
            params,
            self._options(idempotency_key, connected_account),
        )
        return RefundResult(
            id=refund.id,
            status=refund.status or "pending",
            amount=from_stripe_amount(refund.amount, currency),
            failure_reason=getattr(refund, "failure_reason", None),
        )

    def list_events(
        self, *, since: int, connected_account: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every event Stripe still holds (30 days) created at or after `since`, oldest last,
        as plain dictionaries shaped like a webhook's body."""
        options = {"stripe_account": connected_account} if connected_account else {}
        page = self._call(
            self._client.v1.events.list, {"created": {"gte": since}, "limit": 100}, options
        )
        for event in page.auto_paging_iter():
            yield event.to_dict()

    @staticmethod
    def _options(idempotency_key: str, connected_account: str | None) -> dict[str, str]:
        options = {"idempotency_key": idempotency_key}
        if connected_account:
            options["stripe_account"] = connected_account
        return options

    @staticmethod
    def _call(method: Any, params: dict[str, Any], options: dict[str, str]) -> Any:
        try:
            return method(params, options)
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise ProviderError("Stripe could not be reached; try again.", retryable=True) from exc
        except stripe.APIError as exc:
            raise ProviderError(
                "Stripe answered with an error; try again.", retryable=True
            ) from exc
        except stripe.StripeError as exc:
            # Stripe's own message names the parameter; it never carries card data
            # because chatledger never sends any.
            raise ProviderError(
                f"Stripe refused the request: {exc.user_message or 'invalid request'}",
                retryable=False,
                provider_code=getattr(exc, "code", None),
            ) from exc
