"""Merchants, the card-acceptor ids (MIDs) their stores are known by, and their chat pages."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from commerce.db import Base, utcnow


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: IANA time zone in which the merchant's reports are cut into days.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: The Stripe connected account that takes this merchant's payments, if any.
    stripe_account: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    mids: Mapped[list[MerchantMid]] = relationship(
        back_populates="merchant", cascade="all, delete-orphan", order_by="MerchantMid.mid"
    )
    chat_pages: Mapped[list[ChatPage]] = relationship(
        back_populates="merchant", cascade="all, delete-orphan", order_by="ChatPage.page_id"
    )


class MerchantMid(Base):
    """A card-acceptor id: how the card networks name one of the merchant's stores."""

    __tablename__ = "merchant_mids"
    __table_args__ = (CheckConstraint("mid ~ '^[0-9A-Za-z]{1,15}$'", name="mid_format"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id", ondelete="CASCADE"))
    #: Unique across merchants: one store belongs to one merchant.
    mid: Mapped[str] = mapped_column(String(15), unique=True)

    merchant: Mapped[Merchant] = relationship(back_populates="mids")


class ChatPage(Base):
    """A chat identity (a Messenger page, a WhatsApp number id) that speaks for the merchant."""

    __tablename__ = "chat_pages"
    __table_args__ = (UniqueConstraint("channel", "page_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(20))
    page_id: Mapped[str] = mapped_column(String(64))

    merchant: Mapped[Merchant] = relationship(back_populates="chat_pages")
