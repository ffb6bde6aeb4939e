"""Customers as a channel knows them, and the conversations they have with merchants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

CHANNELS = ("messenger", "whatsapp", "instagram", "webchat")


class Customer(Base):
    """A person as a channel knows them: the same id across merchants on that channel."""

    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("channel", "channel_user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20))
    channel_user_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Set when the person asked to be erased: the channel id is replaced, sales stay.
    erased_at: Mapped[datetime | None]


class Conversation(Base):
    """One thread between one customer and one merchant on one channel."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("merchant_id", "channel", "thread_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    #: The channel's own id for the thread.
    thread_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
