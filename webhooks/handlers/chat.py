"""Chat platform events -> customers, conversations and touchpoints.

A postback or quick reply whose payload is `chatledger:offer:<offer id>:<touchpoint>`
records that touchpoint, once per message id. Every message creates the customer and
the conversation on first sight.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.chat.services import open_conversation
from commerce.errors import NotFound
from commerce.merchants.models import ChatPage
from commerce.offers.models import TOUCHPOINT_KINDS
from commerce.offers.services import record_touchpoint
from webhooks.inbox import Ignored, Waiting, handles
from webhooks.models import InboxEvent

OFFER_PAYLOAD = re.compile(
    r"^chatledger:offer:(?P<offer>ofr_[0-9A-Za-z]{22}):(?P<kind>"
    + "|".join(TOUCHPOINT_KINDS)
    + r")$"
)


def offer_payload(item: dict[str, Any]) -> tuple[str, str] | None:
    """(offer id, touchpoint kind) named by a postback or quick reply, if any."""
    payload = (item.get("postback") or {}).get("payload") or (
        ((item.get("message") or {}).get("quick_reply") or {}).get("payload")
    )
    if not isinstance(payload, str):
        return None
    match = OFFER_PAYLOAD.match(payload)
    return (match["offer"], match["kind"]) if match else None


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
    if merchant_id is None:
        raise Ignored(f"{channel} page {page_id} is not registered to a merchant")
    # On Messenger a thread is one page talking to one person: the sender id names it.
    open_conversation(
        session,
        merchant_id=merchant_id,
        channel=channel,
        thread_id=sender_id,
        customer_user_id=sender_id,
    )
    named = offer_payload(item)
    if named is None:
        return
    offer_id, kind = named
    timestamp = item.get("timestamp")
    occurred_at = (
        datetime.fromtimestamp(int(timestamp) / 1000, UTC)
        if isinstance(timestamp, int) and not isinstance(timestamp, bool)
        else None
    )
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
