"""Celery tasks of the webhook door. Each takes an inbox id (or nothing) and is safe to repeat."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from commerce import runtime
from commerce.db import transaction, utcnow
from webhooks import inbox

log = logging.getLogger(__name__)

#: A just-stored event is left to the task its door sent for this long before a sweep sends it.
SWEEP_GRACE = timedelta(seconds=20)


@shared_task(name="webhooks.process_event")
def process_event(inbox_id: str) -> str | None:
    """Process one stored event. A failure is kept on the row and retried by the sweep, with
    backoff: the schedule lives in the database, so it survives a broker that lost its queue."""
    try:
        return inbox.process(runtime.sessions(), inbox_id)
    except Exception:
        log.warning("inbox event %s failed; kept for retry", inbox_id, exc_info=True)
        return "failed"


@shared_task(name="webhooks.sweep")
def sweep() -> int:
    """Send every unfinished event whose next attempt is due: the ones the broker never got
    (Redis was down), whose worker died, that wait for something, or that failed."""
    with transaction(runtime.sessions()) as session:
        ids = inbox.due(session, now=utcnow(), grace=SWEEP_GRACE)
    for inbox_id in ids:
        process_event.apply_async(args=[inbox_id])
    if ids:
        log.info("sweep sent %d inbox events", len(ids))
    return len(ids)
