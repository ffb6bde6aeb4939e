"""Sales and touchpoints written straight into the tables, at chosen times and amounts.

Reports must not depend on how a row got there (API, webhook, bulk SQL): the rollups are fed
by triggers on the tables, so these rows take the same path as the API's.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.orm import Session

from commerce.ids import new_id
from commerce.offers.models import Touchpoint
from tests.factories import ConversationFactory, OfferFactory, SaleFactory, use_session


@dataclass
class RawSale:
    id: str
    offer_id: str
    conversation_id: str
    currency: str
    created_at: datetime
    state: str
    captured: int
    refunded: int
    disputed: int

    @property
    def disputes(self) -> int:
        return self.disputed if self.state in ("disputed", "dispute_lost") else 0


def add_sale(
    session: Session,
    merchant_id: str,
    at: datetime,
    *,
    amount: int = 1000,
    currency: str = "USD",
    state: str = "paid",
    refunded: int = 0,
    disputed: int = 0,
    conversation_id: str | None = None,
) -> RawSale:
    use_session(session)
    conversation = (
        session.get_one(_conversation_model(), conversation_id)
        if conversation_id
        else ConversationFactory(merchant_id=merchant_id)
    )
    offer = OfferFactory(conversation=conversation, amount=amount, currency=currency)
    captured = 0 if state in ("pending_payment", "failed", "canceled", "authorized") else amount
    sale = SaleFactory(
        conversation=conversation,
        offer=offer,
        created_at=at,
        state=state,
        amount_captured=captured,
        amount_refunded=refunded,
        amount_disputed=disputed,
    )
    session.flush()
    return RawSale(
        sale.id, offer.id, conversation.id, currency, at, state, captured, refunded, disputed
    )


def _conversation_model() -> Any:
    from commerce.chat.models import Conversation

    return Conversation


def add_touchpoint(session: Session, sale_or_offer: RawSale, kind: str, at: datetime) -> None:
    session.add(
        Touchpoint(
            id=new_id("touchpoint"),
            merchant_id=session.execute(
                text("SELECT merchant_id FROM offers WHERE id = :o"), {"o": sale_or_offer.offer_id}
            ).scalar_one(),
            offer_id=sale_or_offer.offer_id,
            conversation_id=sale_or_offer.conversation_id,
            kind=kind,
            occurred_at=at,
        )
    )
    session.flush()


def update_sale(session: Session, sale: RawSale, **changes: Any) -> None:
    """Change a sale's derived columns in SQL, as derive() does through the ORM."""
    columns = {"state": "state", "refunded": "amount_refunded", "disputed": "amount_disputed"}
    assignments = ", ".join(f"{columns[k]} = :{k}" for k in changes)
    session.execute(
        text(f"UPDATE sales SET {assignments} WHERE id = :id"),  # noqa: S608
        {"id": sale.id, **changes},
    )
    for k, v in changes.items():
        setattr(sale, k, v)


def expected_sales(
    sales: list[RawSale], tz: str, first: date, last: date, unit: str = "day"
) -> dict[tuple[str, str], dict[str, int]]:
    """(period, currency) -> figures, summed in Python from the raw rows."""
    zone = ZoneInfo(tz)
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"count": 0, "gross": 0, "refunds": 0, "disputes": 0, "net": 0}
    )
    for s in sales:
        local = s.created_at.astimezone(zone).date()
        if not first <= local <= last or not (s.captured or s.refunded or s.disputes):
            continue
        if unit == "week":
            local -= timedelta(days=local.weekday())
        elif unit == "month":
            local = local.replace(day=1)
        cell = out[(local.isoformat(), s.currency)]
        cell["count"] += s.captured > 0
        cell["gross"] += s.captured
        cell["refunds"] += s.refunded
        cell["disputes"] += s.disputes
        cell["net"] += s.captured - s.refunded - s.disputes
    return dict(out)


def random_history(
    session: Session, merchant_ids: list[str], rng: random.Random, n: int, start: datetime
) -> list[RawSale]:
    """`n` sales over 60 days with touchpoints, refunds and disputes, some changed later."""
    sales = []
    for _ in range(n):
        at = start + timedelta(seconds=rng.randrange(60 * 24 * 3600))
        state = rng.choice(["paid", "paid", "paid", "pending_payment", "failed"])
        sale = add_sale(
            session,
            rng.choice(merchant_ids),
            at,
            amount=rng.randrange(100, 50_000),
            currency=rng.choice(["USD", "USD", "EUR", "JPY"]),
            state=state,
        )
        for kind in ("delivered", "viewed", "clicked", "accepted", "declined"):
            if rng.random() < 0.7:
                add_touchpoint(session, sale, kind, at - timedelta(minutes=rng.randrange(600)))
        sales.append(sale)
    for sale in rng.sample(sales, k=n // 3):
        if sale.state != "paid":
            continue
        roll = rng.random()
        if roll < 0.4:
            refunded = rng.randrange(1, sale.captured + 1)
            update_sale(
                session,
                sale,
                refunded=refunded,
                state="refunded" if refunded == sale.captured else "partially_refunded",
            )
        elif roll < 0.7:
            update_sale(session, sale, state="disputed", disputed=sale.captured)
            if rng.random() < 0.5:
                update_sale(session, sale, state=rng.choice(["dispute_won", "dispute_lost"]))
    return sales
