"""Fraud alerts: judging a card transaction, sending the alert, recording the answer.

The cardholder's history, and the transaction itself, are read only through
`partnerdata.read(purpose="fraud_alerts")`: a transaction not stored for fraud alerts, or
whose cardholder's consent or partner's agreement no longer covers them, is never judged
and never told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import partnerdata
from commerce.alerts import config
from commerce.alerts.models import ANSWERS, FraudAlert
from commerce.alerts.rules import Purchase, Thresholds, evaluate
from commerce.cards.models import CardTransaction
from commerce.chat.send import ChatSender, ChatSendError
from commerce.consent.models import Consent
from commerce.db import after_commit, utcnow
from commerce.ids import new_id
from commerce.money import format_amount

log = logging.getLogger(__name__)

PURPOSE = "fraud_alerts"
ACTOR = "system:fraud_alerts"
#: Alerts are raised on authorizations, the moment a cardholder can still act; a clearing
#: of the same transaction id is the same purchase and only counts as history.
JUDGED_KINDS = ("authorized",)
PURCHASE_KINDS = ("authorized", "cleared")
#: Messenger's tag for account notices outside the 24-hour window, fraud alerts included.
ALERT_TAG = "ACCOUNT_UPDATE"
NO_SEND_API = "not sent: no chat send API is configured (CHATLEDGER_CHAT_API_BASE)"


def _read(session: Session, *where: object, order: bool = False) -> list[CardTransaction]:
    return partnerdata.read(
        session,
        CardTransaction,
        purpose=PURPOSE,
        actor=ACTOR,
        where=where,  # type: ignore[arg-type]
        order_by=(CardTransaction.occurred_at, CardTransaction.transaction_id) if order else (),
    )


def _purchase(row: CardTransaction) -> Purchase:
    return Purchase(
        transaction_id=row.transaction_id,
        occurred_at=row.occurred_at,
        amount=row.amount,
        currency=row.currency,
        merchant=row.mid or row.merchant_name,
        merchant_name=row.merchant_name,
        country=row.merchant_country,
        card_present=row.card_present,
    )


def _lock_cardholder(session: Session, partner_id: str, customer_ref: str) -> None:
    # One judge per cardholder at a time, until commit: a purchase judged second sees the
    # first one committed, whichever of the two occurred first.
    session.execute(
        select(
            func.pg_advisory_xact_lock(
                func.hashtextextended(f"alerts:{partner_id}:{customer_ref}", 0)
            )
        )
    )


def check_transaction(
    session: Session, card_transaction_id: str, thresholds: Thresholds | None = None
) -> list[str]:
    """Judge a stored card transaction, and the cardholder's purchases it may change the
    findings of (those shortly after it, when it arrived late); returns new alert ids.
    `thresholds` defaults to those configured from the settings (`alerts.config`).

    An alert already raised is never withdrawn: a late event can add alerts, not unsay one.
    """
    thresholds = thresholds or config.thresholds()
    found = _read(session, CardTransaction.id == card_transaction_id)
    if not found or found[0].kind not in PURCHASE_KINDS or not found[0].customer_ref:
        return []
    row = found[0]
    partner_id, customer_ref = row.partner_id, row.customer_ref
    _lock_cardholder(session, partner_id, customer_ref)
    rows = _read(
        session,
        CardTransaction.partner_id == partner_id,
        CardTransaction.customer_ref == customer_ref,
        CardTransaction.kind.in_(PURCHASE_KINDS),
        CardTransaction.occurred_at >= row.occurred_at - thresholds.lookback,
        CardTransaction.occurred_at <= row.occurred_at + thresholds.reach,
        order=True,
    )
    # One purchase per transaction id: the authorization when there is one.
    by_id: dict[str, CardTransaction] = {}
    for candidate in rows:
        kept = by_id.get(candidate.transaction_id)
        if kept is None or (kept.kind != "authorized" and candidate.kind == "authorized"):
            by_id[candidate.transaction_id] = candidate
    history = [_purchase(r) for r in by_id.values()]
    judged = _purchase(row)
    created = []
    for candidate in by_id.values():
        purchase = _purchase(candidate)
        if candidate.kind not in JUDGED_KINDS or purchase.order < judged.order:
            continue
        findings = evaluate(purchase, history, thresholds)
        if findings:
            alert_id = _raise_alert(session, candidate, [f.as_json() for f in findings])
            if alert_id is not None:
                created.append(alert_id)
    return created


def _raise_alert(
    session: Session, row: CardTransaction, reasons: list[dict[str, str]]
) -> str | None:
    alert_id = session.scalar(
        insert(FraudAlert)
        .values(
            id=new_id("fraud_alert"),
            card_transaction_id=row.id,
            partner_id=row.partner_id,
            customer_ref=row.customer_ref,
            reasons=reasons,
            state="pending",
            attempts=0,
        )
        # The same transaction judged again (its event delivered twice, or judged again
        # after a late neighbour) keeps the one alert it has.
        .on_conflict_do_nothing(index_elements=[FraudAlert.card_transaction_id])
        .returning(FraudAlert.id)
    )
    if alert_id is not None:
        after_commit(session, lambda: enqueue_send(alert_id))
    return alert_id


def enqueue_send(alert_id: str) -> None:
    """Send the sending task now (the caller has committed); a broker outage leaves the
    alert pending for the sweep."""
    from commerce.alerts import tasks

    try:
        tasks.send_alert.apply_async(args=[alert_id])
    except Exception:  # the broker's errors vary by transport; the sweep covers all of them
        log.warning("fraud alert %s not queued; the sweep will send it", alert_id)


def alert_message(alert: FraudAlert, row: CardTransaction) -> dict[str, object]:
    """The alert as a Messenger message: merchant, amount and the card's last four, never
    more of the card, and two quick replies that come back on the chat door."""
    card = f"your card ending {row.card_last4}" if row.card_last4 else "your card"
    lines = [
        f"Did you make this purchase? {format_amount(row.amount, row.currency)} at "
        f"{row.merchant_name or 'an unnamed store'} with {card}.",
        *(f"- {reason['reason']}" for reason in alert.reasons),
    ]
    return {
        "text": "\n".join(lines)[:2000],
        "quick_replies": [
            {
                "content_type": "text",
                "title": "That was me",
                "payload": f"chatledger:alert:{alert.id}:me",
            },
            {
                "content_type": "text",
                "title": "Not me",
                "payload": f"chatledger:alert:{alert.id}:not_me",
            },
        ],
    }


def _chat_identity(session: Session, partner_id: str, customer_ref: str) -> Consent | None:
    consent = session.scalars(
        select(Consent).where(
            Consent.partner_id == partner_id,
            Consent.customer_ref == customer_ref,
            Consent.status == "granted",
        )
    ).one_or_none()
    if consent is None or not consent.chat_user_id:
        return None
    return consent


@dataclass(frozen=True, slots=True)
class SendOutcome:
    state: str
    #: True when the attempt failed in a way a later attempt may not.
    retry: bool = False


def send_alert(
    session: Session, alert_id: str, sender: ChatSender | None, *, last_attempt: bool = False
) -> SendOutcome | None:
    """Send one alert and record the outcome on it; None when there is nothing to do here
    (no such alert, or another worker is sending it now)."""
    # The row stays locked through the HTTP call (bounded by the sender's timeouts), so a
    # task delivered twice sends once; the other copy skips it.
    alert = session.scalars(
        select(FraudAlert)
        .where(FraudAlert.id == alert_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if alert is None:
        return None
    if alert.state != "pending":
        return SendOutcome(alert.state)
    if sender is None:
        # Not an attempt: the alert waits, with the reason, until a send API is configured.
        alert.last_error = NO_SEND_API
        return SendOutcome(alert.state)
    found = _read(session, CardTransaction.id == alert.card_transaction_id)
    if not found:
        alert.state = "failed"
        alert.last_error = "the transaction may no longer be used for fraud alerts"
        return SendOutcome(alert.state)
    consent = _chat_identity(session, alert.partner_id, alert.customer_ref)
    if consent is None:
        alert.state = "failed"
        alert.last_error = "the cardholder's consent names no chat to send to"
        return SendOutcome(alert.state)
    alert.attempts += 1
    try:
        result = sender.send(
            recipient_id=str(consent.chat_user_id),
            message=alert_message(alert, found[0]),
            messaging_type="MESSAGE_TAG",
            tag=ALERT_TAG,
        )
    except ChatSendError as exc:
        alert.last_error = exc.detail[:2000]
        if exc.retryable and not last_attempt:
            return SendOutcome(alert.state, retry=True)
        alert.state = "failed"
        return SendOutcome(alert.state)
    alert.state = "sent"
    alert.sent_at = utcnow()
    alert.message_id = result.message_id
    alert.last_error = None
    return SendOutcome(alert.state)


def unsent_alerts(session: Session, *, older_than: datetime) -> Sequence[str]:
    """Pending alerts left since `older_than` (their task was never queued, or a send API
    has been configured since): the sweep sends them again."""
    return session.scalars(
        select(FraudAlert.id)
        .where(FraudAlert.state == "pending", FraudAlert.updated_at < older_than)
        .order_by(FraudAlert.created_at)
        .limit(500)
    ).all()


def record_answer(
    session: Session,
    *,
    alert_id: str,
    answer: str,
    channel: str,
    user_id: str,
    at: datetime,
) -> FraudAlert | None:
    """The cardholder's "me" / "not me"; only the chat the alert went to may answer it.
    The latest answer by the platform's clock stands, whatever order they arrive in."""
    if answer not in ANSWERS:
        return None
    alert = session.scalars(
        select(FraudAlert)
        .where(FraudAlert.id == alert_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if alert is None:
        return None
    consent = _chat_identity(session, alert.partner_id, alert.customer_ref)
    if consent is None or (consent.chat_channel, consent.chat_user_id) != (channel, user_id):
        return None
    if alert.answered_at is not None and alert.answered_at >= at:
        return alert
    alert.answer = answer
    alert.answered_at = at
    alert.state = "answered"
    session.flush()
    return alert
