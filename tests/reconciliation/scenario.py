"""Sales with their Stripe facts and a consenting cardholder's card transactions, built
through the domain's own writers, for reconciliation tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from commerce.cards.transactions import record_card_transaction
from commerce.reconciliation import engine
from commerce.reconciliation.models import ReconciliationException
from commerce.sales.models import Sale
from commerce.sales.services import record_event
from commerce.sales.states import EventKind
from tests.alerts.helpers import bank, consent
from tests.factories import MerchantFactory, SaleFactory, use_session

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


@dataclass
class Shop:
    """A merchant with one MID, and a bank whose cardholder `cust_1` consented."""

    db: Session
    merchant_id: str
    mid: str
    partner_id: str
    sales: list[Sale] = field(default_factory=list)

    def sale(
        self,
        amount: int = 1250,
        *,
        currency: str = "USD",
        last4: str | None = "4242",
        at: datetime = T0,
        captured: int | None = None,
        charges: tuple[str, ...] | None = None,
    ) -> Sale:
        """A sale checked out at `at`, paid at Stripe (`captured`, default the amount) by
        `charges` (default one), with the card's last four digits."""
        sale = SaleFactory(
            conversation__merchant_id=self.merchant_id,
            offer__amount=amount,
            offer__currency=currency,
            created_at=at,
        )
        self.db.flush()
        record_event(
            self.db,
            sale,
            kind=EventKind.CHECKOUT_CREATED,
            source="api",
            source_ref=sale.id,
            amount=amount,
            occurred_at=at,
        )
        for charge in charges if charges is not None else ("ch_" + secrets.token_hex(6),):
            record_event(
                self.db,
                sale,
                kind=EventKind.PAYMENT_SUCCEEDED,
                source="stripe",
                source_ref=charge,
                amount=captured if captured is not None else amount,
                occurred_at=at + timedelta(seconds=5),
            )
        sale.card_last4 = last4
        sale.card_brand = "visa" if last4 else None
        self.db.flush()
        self.sales.append(sale)
        return sale

    def refund(self, sale: Sale, amount: int, *, at: datetime, ref: str | None = None) -> str:
        ref = ref or "re_" + secrets.token_hex(6)
        record_event(
            self.db,
            sale,
            kind=EventKind.REFUND_SUCCEEDED,
            source="stripe",
            source_ref=ref,
            amount=amount,
            occurred_at=at,
        )
        return ref

    def card(
        self,
        kind: str,
        amount: int = 1250,
        *,
        txn: str | None = None,
        original: str | None = None,
        currency: str = "USD",
        last4: str = "4242",
        at: datetime = T0 + timedelta(minutes=1),
        mid: str | None = None,
        customer_ref: str = "cust_1",
    ) -> str:
        """A card transaction of the consenting cardholder; returns its transaction id."""
        txn = txn or "txn_" + secrets.token_hex(6)
        data: dict[str, Any] = {
            "transaction_id": txn,
            "original_transaction_id": original,
            "customer_ref": customer_ref,
            "card": {"token": "tok_1", "brand": "visa", "last4": last4},
            "merchant": {"mid": mid or self.mid, "name": "Shop", "mcc": "5814", "country": "US"},
            "amount": amount,
            "currency": currency,
        }
        record_card_transaction(
            self.db,
            partner_id=self.partner_id,
            kind=kind,
            data=data,
            occurred_at=at,
            purposes=["sales_attribution"],
        )
        self.db.flush()
        return txn

    def key(self, txn: str) -> str:
        return f"{self.partner_id}:{txn}"

    def matches(self) -> set[tuple[str, str, str, str]]:
        """Every match of the merchant's sales: stored, and read from Stripe's events."""
        rows = self.db.execute(
            text(
                f"SELECT sale_id, kind, source_key, rule FROM ({engine.MATCHES}) m"  # noqa: S608
                " WHERE m.merchant_id = :merchant_id"
            ),
            {"merchant_id": self.merchant_id},
        )
        return {(m.sale_id, m.kind, m.source_key, m.rule) for m in rows}

    def exceptions(self, *, status: str | None = "open") -> dict[tuple[str, str], dict]:
        query = select(ReconciliationException).where(
            ReconciliationException.merchant_id == self.merchant_id
        )
        if status is not None:
            query = query.where(ReconciliationException.status == status)
        rows = self.db.scalars(query.execution_options(populate_existing=True))
        return {(e.type, e.subject_key): e.fields for e in rows}


def open_shop(db: Session, client: Any) -> Shop:
    partner = bank(client, purposes=("sales_attribution",))
    consent(client, partner, scopes=("transactions",), purposes=("sales_attribution",))
    use_session(db)
    merchant = MerchantFactory()
    db.flush()
    return Shop(db, merchant.id, merchant.mids[0].mid, partner["id"])
