"""Celery tasks for fraud alerts and balances. Each takes ids only, opens its own
transactions, and is safe to run twice (late acknowledgement may deliver it again)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task

from commerce import runtime
from commerce.alerts import balances, services
from commerce.chat import send
from commerce.chat.send import ChatSendError
from commerce.db import transaction, utcnow

log = logging.getLogger(__name__)

#: An alert left pending this long was never queued, or waited for a send API: resend it.
SWEEP_AFTER = timedelta(minutes=2)
MAX_RETRIES = 8


class SendFailed(Exception):
    """A sending attempt failed in a way that may pass; Celery retries the task."""


@shared_task(
    bind=True,
    name="alerts.send_alert",
    autoretry_for=(SendFailed,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def send_alert(self, alert_id: str) -> str | None:  # type: ignore[no-untyped-def]
    # The outcome of each attempt commits before the retry is raised, so it stays recorded.
    with transaction(runtime.sessions()) as session:
        outcome = services.send_alert(
            session, alert_id, send.sender(), last_attempt=self.request.retries >= MAX_RETRIES
        )
    if outcome is not None and outcome.retry:
        raise SendFailed(f"fraud alert {alert_id} not sent yet")
    return outcome.state if outcome is not None else None


@shared_task(name="alerts.sweep_unsent")
def sweep_unsent() -> int:
    if send.sender() is None:
        return 0
    with transaction(runtime.sessions()) as session:
        ids = services.unsent_alerts(session, older_than=utcnow() - SWEEP_AFTER)
    for alert_id in ids:
        send_alert.apply_async(args=[alert_id])
    return len(ids)


@shared_task(
    name="alerts.send_balance",
    autoretry_for=(ChatSendError,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
    # A cardholder waiting in chat: an answer later than a few minutes is not worth sending.
    expires=300,
)
def send_balance(channel: str, user_id: str, page_id: str | None = None) -> bool:
    """Tell the cardholder their balances, from the page they wrote to (`page_id`) or,
    when it is not given, from the send API's default page."""
    sender = send.sender()
    if sender is None:
        log.warning("balance not sent: no chat send API is configured")
        return False
    with transaction(runtime.sessions()) as session:
        try:
            balances.send_balance(
                session, sender, channel=channel, user_id=user_id, page_id=page_id
            )
        except ChatSendError as exc:
            if not exc.retryable:
                log.warning("balance not sent: %s", exc.detail)
                return False
            raise
    return True


def enqueue_balance(channel: str, user_id: str, page_id: str | None = None) -> None:
    """Send the balance task now (the caller has committed)."""
    try:
        send_balance.apply_async(args=[channel, user_id, page_id])
    except Exception:  # the broker's errors vary by transport; the cardholder may ask again
        log.warning("balance reply not queued")
