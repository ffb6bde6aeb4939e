"""Celery tasks for sales. Each takes ids only, opens its own transaction, and is safe
to run twice (late acknowledgement means a task may be redelivered after a crash)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from commerce import runtime
from commerce.db import transaction, utcnow
from commerce.errors import ProviderError
from commerce.sales import services

log = logging.getLogger(__name__)

#: A refund left `requested` this long was never queued (the broker was down): resend it.
SWEEP_AFTER = timedelta(minutes=2)


@shared_task(
    bind=True,
    name="sales.submit_refund",
    autoretry_for=(ProviderError,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=12,
)
def submit_refund(self, refund_id: str) -> str | None:  # type: ignore[no-untyped-def]
    with transaction(runtime.sessions()) as session:
        refund = services.submit_refund(session, refund_id)
        return refund.status if refund is not None else None


@shared_task(name="sales.sweep_requested_refunds")
def sweep_requested_refunds() -> int:
    with transaction(runtime.sessions()) as session:
        ids = services.stale_requested_refunds(session, older_than=utcnow() - SWEEP_AFTER)
    for refund_id in ids:
        submit_refund.apply_async(args=[refund_id])
    if ids:
        log.info("resent %d refund submissions", len(ids))
    return len(ids)


#: A sale waiting this long for its payment outcome is checked with the provider.
SYNC_AFTER = timedelta(minutes=10)


@shared_task(name="sales.sync_unsettled_payments")
def sync_unsettled_payments() -> int:
    """Recover payment outcomes whose webhook never arrived."""
    with transaction(runtime.sessions()) as session:
        pending = services.unsettled_sales(session, older_than=utcnow() - SYNC_AFTER)
    synced = 0
    for merchant_id, sale_id in pending:
        try:
            with transaction(runtime.sessions()) as session:
                services.sync_payment(session, merchant_id=merchant_id, sale_id=sale_id)
            synced += 1
        except ProviderError:
            log.warning("payment of sale %s not synced; next sweep retries", sale_id)
    return synced
