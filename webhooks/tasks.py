"""Celery tasks of the webhook door. Each takes an inbox id (or nothing) and is safe to repeat."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from commerce import runtime
from webhooks import inbox

log = logging.getLogger(__name__)

#: A just-stored event is left to the relays for this long before the sweep sends it.
SWEEP_GRACE = timedelta(seconds=20)


@shared_task(name="webhooks.process_event")
def process_event(inbox_id: str) -> str | None:
    """Process one stored event. A failure is kept on the row and retried by the sweep, with
    backoff: the schedule lives in the database, so it survives a broker that lost its queue."""
    try:
        return inbox.process(runtime.sessions(), inbox_id)
    except inbox.Busy:
        log.info("inbox event %s is held by another transaction; left to it", inbox_id)
        return "busy"
    except Exception:
        log.warning("inbox event %s failed; kept for retry", inbox_id, exc_info=True)
        return "failed"


@shared_task(name="webhooks.sweep")
def sweep() -> int:
    """Send every unfinished event whose next attempt is due and that no relay has claimed:
    the safety net behind the relays (webhooks/relay.py), which normally send them first."""
    from webhooks import relay

    engine = runtime.engine()
    total = 0
    try:
        while True:
            sent = relay.send_due(engine, grace=SWEEP_GRACE, limit=relay.BATCH)
            total += sent
            if sent < relay.BATCH:
                break
    finally:
        if total:
            log.info("sweep sent %d inbox events", total)
    return total
