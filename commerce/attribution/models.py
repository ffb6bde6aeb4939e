"""Off-platform attributions, and a merchant's default windows.

An in-chat sale is attributed to its own offer and conversation directly and needs no row
here: reports read it from the sales. A row here is a card purchase at one of the
merchant's MIDs, made outside the chat, and one touchpoint of that cardholder with one of
the merchant's offers within its window before the purchase, with the touchpoint's place
among the purchase's touchpoints in time. The credit under each model follows from that
place alone, so it is not stored again per model: the view `attribution_credits`
(migration 0013) gives the last touch, the first touch and the linear shares.

It is derived data: `engine.attribute` recomputes it for a scope with the same SQL whether
one event or a batch asked, and it is deleted with the card transaction it came from when
the cardholder's consent ends, and with the touchpoint it credits (which goes with its
offer, conversation or merchant).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from commerce.db import Base, utcnow

MODELS = ("last_touch", "first_touch", "linear")
DEFAULT_MODEL = "last_touch"
DEFAULT_CLICK_WINDOW_SECONDS = 7 * 86400
DEFAULT_VIEW_WINDOW_SECONDS = 86400
DEFAULT_RETURN_PERIOD_DAYS = 30
#: Touchpoints that open a click window, and those that open a view window.
CLICK_KINDS = ("clicked", "accepted")
VIEW_KINDS = ("viewed",)


class AttributionSettings(Base):
    """A merchant's default windows; an offer's own windows, where set, come first."""

    __tablename__ = "attribution_settings"
    __table_args__ = (
        CheckConstraint("click_window_seconds > 0", name="click_window_positive"),
        CheckConstraint("view_window_seconds > 0", name="view_window_positive"),
        CheckConstraint("return_period_days >= 0", name="return_period_not_negative"),
    )

    merchant_id: Mapped[str] = mapped_column(
        ForeignKey("merchants.id", ondelete="CASCADE"), primary_key=True
    )
    click_window_seconds: Mapped[int] = mapped_column(Integer)
    view_window_seconds: Mapped[int] = mapped_column(Integer)
    return_period_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Attribution(Base):
    """One purchase and one touchpoint in its window: the n-th of the purchase's k
    touchpoints in time (ties by touchpoint id). Last touch gives the whole purchase to the
    k-th, first touch to the first, linear an equal share to each (the view
    `attribution_credits`)."""

    __tablename__ = "attributions"
    __table_args__ = (
        UniqueConstraint("purchase_key", "touchpoint_id"),
        CheckConstraint("status IN ('active', 'taken_back')", name="status_known"),
        CheckConstraint("touch_rank >= 1 AND touch_rank <= touches", name="touch_rank_range"),
        Index("ix_attributions_merchant_id_purchased_at", "merchant_id", "purchased_at"),
        Index("ix_attributions_cardholder", "cardholder"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The merchant, offer and conversation are the touchpoint's: deleting any of them
    #: deletes the touchpoint (or is refused while it exists), and the touchpoint takes the
    #: attribution with it, so they need nothing of their own here.
    merchant_id: Mapped[str] = mapped_column(String(32))
    #: The purchase, `partner:transaction id`, and its authorization (or clearing) row.
    purchase_key: Mapped[str] = mapped_column(String(260))
    #: Deleted with its card transaction and with its touchpoint, by the triggers of
    #: migration 0014: the engine holds both while it writes (see engine.py).
    card_transaction_id: Mapped[str] = mapped_column(String(32), index=True)
    offer_id: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str] = mapped_column(String(32))
    touchpoint_id: Mapped[str] = mapped_column(String(32))
    #: clicked, accepted or viewed, and the window it opened, e.g. `click_7d`, `view_1d`.
    touch_kind: Mapped[str] = mapped_column(String(16))
    window: Mapped[str] = mapped_column(String(16))
    #: This touchpoint is the `touch_rank`-th of the purchase's `touches` in its windows.
    touch_rank: Mapped[int] = mapped_column(Integer)
    touches: Mapped[int] = mapped_column(Integer)
    #: The purchase, and its refunds within the return period of this touchpoint's offer
    #: (at most the purchase), in minor units of `currency` (the card's presentment
    #: currency). A model's credit is its share of both.
    amount: Mapped[int]
    refunded: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str] = mapped_column(String(3))
    purchased_at: Mapped[datetime]
    touched_at: Mapped[datetime]
    #: taken_back: refunded in full or reversed within the offer's return period, under
    #: every model.
    status: Mapped[str] = mapped_column(String(16), default="active")
    #: A stable, opaque key of the cardholder, to count distinct cardholders in reports.
    cardholder: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
