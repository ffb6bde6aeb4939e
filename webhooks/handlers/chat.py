"""Chat platform events -> customers, conversations, touchpoints, and cardholders' requests.

A postback or quick reply whose payload is `chatledger:offer:<offer id>:<touchpoint>`
records that touchpoint, once per message id. Every message on a merchant's page creates
the customer and the conversation on first sight.

A cardholder's answer to a fraud alert (`chatledger:alert:<alert id>:me|not_me`) is
recorded on the alert, and a message reading "balance" is answered with their balances
(sent by a task after the commit); both may come on any page, a merchant's or not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.alerts.balances import asks_for_balance
from commerce.alerts.models import ANSWERS
from commerce.alerts.services import record_answer
from commerce.alerts.tasks import enqueue_balance
from commerce.chat.services import open_conversation
from commerce.db import after_commit, utcnow
from commerce.errors import NotFound
from commerce.merchants.models import ChatPage
from commerce.offers.models import TOUCHPOINT_KINDS
from commerce.offers.services import record_touchpoint
from webhooks.inbox import Ignored, Waiting, handles
from webhooks.models import InboxEvent

ALERT_PAYLOAD = re.compile(
    r"^chatledger:alert:(?P<alert>fal_[0-9A-Za-z]{22}):(?P<answer>" + "|".join(ANSWERS) + r")$"
)
OFFER_PAYLOAD = re.compile(
    r"^chatledger:offer:(?P<offer>ofr_[0-9A-Za-z]{22}):(?P<kind>"
    + "|".join(TOUCHPOINT_KINDS)
    + r")$"
)


def _payload(item: dict[str, Any]) -> str | None:
    payload = (item.get("postback") or {}).get("payload") or (
        ((item.get("message") or {}).get("quick_reply") or {}).get("payload")
    )
    return payload if isinstance(payload, str) else None


def offer_payload(item: dict[str, Any]) -> tuple[str, str] | None:
    """(offer id, touchpoint kind) named by a postback or quick reply, if any."""
    match = OFFER_PAYLOAD.match(_payload(item) or "")
    return (match["offer"], match["kind"]) if match else None


def alert_payload(item: dict[str, Any]) -> tuple[str, str] | None:
    """(alert id, answer) named by a postback or quick reply, if any."""
    match = ALERT_PAYLOAD.match(_payload(item) or "")
    return (match["alert"], match["answer"]) if match else None


def _occurred_at(item: dict[str, Any]) -> datetime | None:
    timestamp = item.get("timestamp")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return datetime.fromtimestamp(timestamp / 1000, UTC)
    return None


def _cardholder_request(
    session: Session, channel: str, sender_id: str, item: dict[str, Any]
) -> bool:
    """Handle an answer to a fraud alert or a request for balances; True if it was one."""
    answered = alert_payload(item)
    if answered is not None:
        alert_id, answer = answered
        # Only the chat the alert went to can answer it; anyone else's answer is dropped.
        record_answer(
            session,
            alert_id=alert_id,
            answer=answer,
            channel=channel,
            user_id=sender_id,
            at=_occurred_at(item) or utcnow(),
        )
        return True
    message = item.get("message") or {}
    if not message.get("is_echo") and asks_for_balance(message.get("text")):
        # Answered from the page the cardholder wrote to.
        page_id = (item.get("recipient") or {}).get("id")
        after_commit(session, lambda: enqueue_balance(channel, sender_id, page_id))
        return True
    return False


@handles("chat")
def handle(session: Session, row: InboxEvent) -> None:
    channel = row.source.split(":", 1)[1]
    item = row.payload
    page_id = str((item.get("recipient") or {}).get("id") or "")
    sender_id = str((item.get("sender") or {}).get("id") or "")
    if not page_id or not sender_id:
        raise Ignored("a chat event without page and sender")
    merchant_id = session.scalar(
        select(ChatPage.merchant_id).where(ChatPage.channel == channel, ChatPage.page_id == page_id)
    )
    if merchant_id is not None:
        # On Messenger a thread is one page talking to one person: the sender id names it.
        open_conversation(
            session,
            merchant_id=merchant_id,
            channel=channel,
            thread_id=sender_id,
            customer_user_id=sender_id,
        )
    if _cardholder_request(session, channel, sender_id, item):
        return
    if merchant_id is None:
        raise Ignored(f"{channel} page {page_id} is not registered to a merchant")
    named = offer_payload(item)
    if named is None:
        return
    offer_id, kind = named
    occurred_at = _occurred_at(item)
    try:
        record_touchpoint(
            session,
            merchant_id=merchant_id,
            offer_id=offer_id,
            kind=kind,
            occurred_at=occurred_at,
            external_id=row.event_id[:128],
            source="chat",
        )
    except NotFound:
        # Offers are created through the API; one not visible yet may still be committing.
        raise Waiting(f"offer:{offer_id}") from None
