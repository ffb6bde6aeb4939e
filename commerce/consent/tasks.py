"""The privacy sweep: deletes what consents, agreements and retention no longer cover."""

from __future__ import annotations

import logging

from celery import shared_task

from commerce import runtime
from commerce.consent.cascade import sweep
from commerce.db import transaction

log = logging.getLogger(__name__)


@shared_task(name="privacy.sweep")
def privacy_sweep() -> int:
    with transaction(runtime.sessions()) as session:
        receipts = sweep(session)
    if receipts:
        log.info("privacy sweep deleted partner data: %d receipts", len(receipts))
    return len(receipts)
