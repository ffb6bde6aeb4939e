"""Registering merchants with their MIDs and chat pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import available_timezones

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.access.models import ApiKey
from commerce.access.services import MERCHANT, issue_key
from commerce.chat.models import CHANNELS
from commerce.errors import InvalidInput, NotFound
from commerce.ids import new_id
from commerce.merchants.models import ChatPage, Merchant, MerchantMid


@dataclass(frozen=True, slots=True)
class PageSpec:
    channel: str
    page_id: str


def create_merchant(
    session: Session,
    *,
    name: str,
    timezone: str = "UTC",
    mids: Sequence[str] = (),
    chat_pages: Sequence[PageSpec] = (),
    stripe_account: str | None = None,
) -> tuple[Merchant, ApiKey, str]:
    """A new merchant and its first API key; the key's secret is returned once, here."""
    if timezone not in available_timezones():
        raise InvalidInput({"timezone": [f"{timezone!r} is not an IANA time zone."]})
    if len(set(mids)) != len(mids):
        raise InvalidInput({"mids": ["Each MID may be listed once."]})
    pages = {(p.channel, p.page_id) for p in chat_pages}
    if len(pages) != len(chat_pages):
        raise InvalidInput({"chat_pages": ["Each page may be listed once."]})
    for page in chat_pages:
        if page.channel not in CHANNELS:
            raise InvalidInput({"chat_pages": [f"Unknown channel {page.channel!r}."]})

    taken_mids = session.scalars(select(MerchantMid.mid).where(MerchantMid.mid.in_(mids))).all()
    if taken_mids:
        raise InvalidInput(
            {"mids": [f"Already registered to a merchant: {', '.join(taken_mids)}."]}
        )
    for page in chat_pages:
        taken = session.scalar(
            select(ChatPage.id).where(
                ChatPage.channel == page.channel, ChatPage.page_id == page.page_id
            )
        )
        if taken is not None:
            raise InvalidInput(
                {"chat_pages": [f"{page.channel} page {page.page_id} is already registered."]}
            )

    merchant = Merchant(
        id=new_id("merchant"), name=name, timezone=timezone, stripe_account=stripe_account
    )
    merchant.mids = [MerchantMid(mid=mid) for mid in mids]
    merchant.chat_pages = [ChatPage(channel=p.channel, page_id=p.page_id) for p in chat_pages]
    session.add(merchant)
    session.flush()
    key, secret = issue_key(session, role=MERCHANT, merchant_id=merchant.id)
    return merchant, key, secret


def get_merchant(session: Session, merchant_id: str) -> Merchant:
    merchant = session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound("merchant")
    return merchant
