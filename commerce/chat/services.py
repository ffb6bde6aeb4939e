"""Opening (or finding) conversations, creating customers on first sight."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce.chat.models import CHANNELS, Conversation, Customer
from commerce.errors import InvalidInput, NotFound
from commerce.ids import new_id


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise InvalidInput({"channel": [f"Must be one of {', '.join(CHANNELS)}."]})


def find_or_create_customer(session: Session, *, channel: str, channel_user_id: str) -> Customer:
    _check_channel(channel)
    # INSERT .. ON CONFLICT: two first messages from one person at once make one customer.
    session.execute(
        insert(Customer)
        .values(id=new_id("customer"), channel=channel, channel_user_id=channel_user_id)
        .on_conflict_do_nothing(index_elements=[Customer.channel, Customer.channel_user_id])
    )
    return session.scalars(
        select(Customer).where(
            Customer.channel == channel, Customer.channel_user_id == channel_user_id
        )
    ).one()


def open_conversation(
    session: Session, *, merchant_id: str, channel: str, thread_id: str, customer_user_id: str
) -> tuple[Conversation, bool]:
    """The conversation for this thread, created on first sight; True when it is new."""
    customer = find_or_create_customer(session, channel=channel, channel_user_id=customer_user_id)
    new = new_id("conversation")
    session.execute(
        insert(Conversation)
        .values(
            id=new,
            merchant_id=merchant_id,
            customer_id=customer.id,
            channel=channel,
            thread_id=thread_id,
        )
        .on_conflict_do_nothing(
            index_elements=[Conversation.merchant_id, Conversation.channel, Conversation.thread_id]
        )
    )
    conversation = session.scalars(
        select(Conversation).where(
            Conversation.merchant_id == merchant_id,
            Conversation.channel == channel,
            Conversation.thread_id == thread_id,
        )
    ).one()
    if conversation.customer_id != customer.id:
        raise InvalidInput(
            {"customer_user_id": ["This thread already belongs to another customer."]}
        )
    return conversation, conversation.id == new


def get_conversation(session: Session, *, merchant_id: str, conversation_id: str) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.merchant_id != merchant_id:
        raise NotFound("conversation")
    return conversation
