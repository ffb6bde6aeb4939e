"""Celery tasks of outbound webhooks. Each takes a delivery id (or nothing) and is safe to
repeat: an attempt first claims its delivery, so a second task for it does nothing."""

from __future__ import annotations

import logging

from celery import shared_task

from commerce import runtime
from commerce.db import transaction, utcnow
from commerce.outbound import services
from commerce.outbound.guard import AddressPolicy

log = logging.getLogger(__name__)


@shared_task(name="outbound.deliver")
def deliver(delivery_id: str) -> str | None:
    """One attempt of a delivery. A failure is recorded on the delivery with its next time;
    the sweep sends it then, so no task waits in the broker for hours."""
    # The strict policy, always: nothing in the worker's configuration can loosen it.
    return services.deliver(runtime.sessions(), delivery_id, policy=AddressPolicy.strict())


@shared_task(name="outbound.sweep")
def sweep() -> int:
    """Send every pending delivery whose next attempt is due."""
    with transaction(runtime.sessions()) as session:
        ids = services.due(session, now=utcnow())
    for delivery_id in ids:
        deliver.apply_async(args=[delivery_id])
    if ids:
        log.info("sweep sent %d webhook deliveries", len(ids))
    return len(ids)
