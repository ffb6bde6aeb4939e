"""A Stripe payout against its balance transactions, line by line.

When a payout is paid, its balance transactions are listed from Stripe (through the SDK,
as the connected account when the payout is one) and stored as `PayoutLine`s, once each.
Every charge, refund and dispute line is tied to the sale it came from, by the id Stripe
gave it and the sale's own history: a charge by the `source_ref` of the sale's
`payment_succeeded` event, a refund by its `refund_succeeded`, a dispute by its
`dispute_opened`. Fee and payout lines belong to no sale.

The payout's amount must equal the sum of its lines' net (its own `payout` line aside).
A difference, or a charge, refund or dispute that belongs to no sale, is one
`payout_mismatch` exception about `payout:<id>`, with both values of what differs; the
payout checked again and found fine, the exception is resolved.

A line whose sale is known but whose event has not been processed yet is not a mismatch
yet: `record_lines` says to wait, and the task tries again later (`final=False`), until
its last try records what is still unexplained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import case, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from commerce import payments
from commerce.db import utcnow
from commerce.errors import ProviderError
from commerce.ids import new_id
from commerce.merchants.models import Merchant
from commerce.payments.stripe import from_stripe_amount, to_stripe_amount
from commerce.payouts.models import Payout
from commerce.reconciliation.engine import announce
from commerce.reconciliation.models import PayoutLine, ReconciliationException
from commerce.sales.models import Sale, SaleEvent
from commerce.sales.states import EventKind

log = logging.getLogger(__name__)

MISMATCH = "payout_mismatch"
#: Stripe's line type of the payout itself: not part of the sum it is checked against.
PAYOUT_LINE = "payout"
#: Lines per page when listing a payout's balance transactions (Stripe's maximum).
PAGE_SIZE = 100
#: How far back the sweep looks for payouts whose lines were never listed.
SWEEP_WITHIN = timedelta(days=3)

#: Which event of a sale's history names the source of a line of each type.
_TIES: Mapping[str, tuple[str, ...]] = {
    "charge": (EventKind.PAYMENT_SUCCEEDED,),
    "payment": (EventKind.PAYMENT_SUCCEEDED,),
    "refund": (EventKind.REFUND_SUCCEEDED,),
    "payment_refund": (EventKind.REFUND_SUCCEEDED,),
    "refund_failure": (EventKind.REFUND_SUCCEEDED, EventKind.REFUND_FAILED),
    "payment_failure_refund": (EventKind.REFUND_SUCCEEDED, EventKind.REFUND_FAILED),
    # Disputes move money as `adjustment` lines whose source is the dispute (dp_...).
    "adjustment": (EventKind.DISPUTE_OPENED,),
}


def _id(value: Any) -> str | None:
    """Stripe fields hold an id, or the object itself when expanded."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value


def _tie_kinds(line: Mapping[str, Any]) -> tuple[str, ...]:
    """The sale events that may name this line's source; () for lines of no sale."""
    kinds = _TIES.get(line["type"], ())
    if line["type"] == "adjustment" and not (_id(line.get("source")) or "").startswith("dp_"):
        return ()  # an adjustment that is not a dispute's (a correction by Stripe)
    return kinds


def _minor(amount: int, currency: str) -> int:
    """Stripe's amount in ISO 4217 minor units, truncated toward zero for withdrawals too."""
    magnitude = from_stripe_amount(abs(int(amount)), currency)
    return magnitude if amount >= 0 else -magnitude


# --------------------------------------------------------------------------------------------
# Stripe
# --------------------------------------------------------------------------------------------


def _stripe_client() -> stripe.StripeClient:
    # The process's provider holds the one configured SDK client (API key, API base, retries).
    client = getattr(payments.provider(), "_client", None)
    if not isinstance(client, stripe.StripeClient):
        raise ProviderError(
            "Payout lines are read from Stripe, and the payment provider is not Stripe.",
            retryable=False,
        )
    return client


def list_balance_transactions(
    payout_id: str, *, connected_account: str | None
) -> list[dict[str, Any]]:
    """Every balance transaction of the payout, its own `payout` line included, as plain
    dictionaries with `source` expanded (its PaymentIntent says whose the line is)."""
    client = _stripe_client()
    options: dict[str, Any] = {"stripe_account": connected_account} if connected_account else {}
    params = {"payout": payout_id, "limit": PAGE_SIZE, "expand": ["data.source"]}
    try:
        page = client.v1.balance_transactions.list(params=params, options=options)
        return [line.to_dict() for line in page.auto_paging_iter()]
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
        raise ProviderError("Stripe could not be reached; try again.", retryable=True) from exc
    except stripe.StripeError as exc:
        raise ProviderError(
            f"Stripe refused to list the payout's lines: {exc.user_message or 'invalid request'}",
            retryable=False,
            provider_code=getattr(exc, "code", None),
        ) from exc


# --------------------------------------------------------------------------------------------
# Tying lines to sales, and the check
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PayoutCheck:
    """What checking a payout found."""

    payout_id: str
    merchant_id: str | None
    lines: int
    #: Sum of the lines' net (its `payout` line aside) and the payout's amount, minor units.
    lines_net: int
    payout_amount: int
    #: Charge, refund and dispute lines tied to no sale, by balance transaction id.
    unmatched: list[str] = field(default_factory=list)
    #: Of those, the ones whose sale chatledger knows but whose event is not processed yet.
    waiting: list[str] = field(default_factory=list)
    #: What the exception records (empty: the payout is explained).
    fields: dict[str, Any] = field(default_factory=dict)
    #: open (an exception stands), resolved / fine (none), waiting (decided on a later try),
    #: unowned (a mismatch, but the payout belongs to no single merchant to record it for).
    status: str = "fine"


def _ties(
    session: Session, refs: Mapping[str, tuple[str, ...]], merchant_id: str | None
) -> dict[str, tuple[str, str]]:
    """source id -> (sale id, merchant id), for the sources named by the wanted events."""
    if not refs:
        return {}
    kinds = sorted({kind for wanted in refs.values() for kind in wanted})
    query = (
        select(SaleEvent.source_ref, SaleEvent.kind, Sale.id, Sale.merchant_id)
        .join(Sale, Sale.id == SaleEvent.sale_id)
        .where(SaleEvent.kind.in_(kinds), SaleEvent.source_ref.in_(sorted(refs)))
        .order_by(SaleEvent.source_ref, Sale.id)
    )
    if merchant_id is not None:
        query = query.where(Sale.merchant_id == merchant_id)
    found: dict[str, tuple[str, str]] = {}
    for source_ref, kind, sale_id, sale_merchant in session.execute(query):
        if kind in refs[source_ref]:
            found.setdefault(source_ref, (sale_id, sale_merchant))
    return found


def _worth_waiting(session: Session, lines: Iterable[Mapping[str, Any]]) -> set[str]:
    """Lines whose source was paid through chatledger (its PaymentIntent is a sale's, or the
    object carries a sale id): their sale's event is on its way."""
    intents: dict[str, str] = {}
    waiting: set[str] = set()
    for line in lines:
        source = line.get("source")
        if not isinstance(source, Mapping):
            continue
        if (source.get("metadata") or {}).get("sale_id"):
            waiting.add(line["id"])
        elif _id(source.get("payment_intent")):
            intents[line["id"]] = _id(source.get("payment_intent")) or ""
    if intents:
        known = set(
            session.scalars(
                select(Sale.payment_intent_id).where(
                    Sale.payment_intent_id.in_(sorted(set(intents.values())))
                )
            )
        )
        waiting |= {line_id for line_id, intent in intents.items() if intent in known}
    return waiting


def _merchant_for_account(session: Session, account: str | None) -> str | None:
    if account is None:
        return None
    ids = session.scalars(select(Merchant.id).where(Merchant.stripe_account == account)).all()
    return ids[0] if len(ids) == 1 else None


def record_lines(
    session: Session, payout_id: str, listed: Sequence[Mapping[str, Any]], *, final: bool
) -> PayoutCheck | None:
    """Store the payout's listed lines (once each), tie them to sales and check the payout.

    With `final=False` a line whose sale's event is still on its way leaves the exception
    untouched (status `waiting`): the caller tries again later. None: no such payout.
    """
    payout = session.scalars(
        select(Payout).where(Payout.id == payout_id).with_for_update()
    ).one_or_none()
    if payout is None:
        return None
    currency = payout.currency
    merchant_id = payout.merchant_id or _merchant_for_account(session, payout.stripe_account)

    wanted: dict[str, tuple[str, ...]] = {}
    for line in listed:
        kinds = _tie_kinds(line)
        source_id = _id(line.get("source"))
        if kinds and source_id:
            wanted[source_id] = tuple(sorted(set(wanted.get(source_id, ()) + kinds)))
    ties = _ties(session, wanted, merchant_id)
    if merchant_id is None:
        owners = {owner for _, owner in ties.values()}
        if len(owners) == 1:
            merchant_id = owners.pop()
        elif owners:
            log.warning("payout %s pays the sales of several merchants", payout_id)

    rows = []
    unmatched: list[Mapping[str, Any]] = []
    for line in listed:
        source_id = _id(line.get("source"))
        tie = ties.get(source_id) if source_id else None
        if _tie_kinds(line) and tie is None:
            unmatched.append(line)
        line_currency = str(line["currency"]).upper()
        rows.append(
            {
                "payout_id": payout_id,
                "balance_transaction_id": line["id"],
                "type": line["type"],
                "source_id": source_id,
                "amount": _minor(line["amount"], line_currency),
                "fee": _minor(line.get("fee") or 0, line_currency),
                "net": _minor(line["net"], line_currency),
                "currency": line_currency,
                "sale_id": tie[0] if tie else None,
            }
        )
    _store(session, rows)
    payout.merchant_id = merchant_id
    payout.lines_fetched_at = utcnow()

    # Checked in Stripe's own units, so currencies Stripe counts differently stay exact.
    stripe_net = sum(int(line["net"]) for line in listed if line["type"] != PAYOUT_LINE)
    check = PayoutCheck(
        payout_id=payout_id,
        merchant_id=merchant_id,
        lines=len(rows),
        lines_net=_minor(stripe_net, currency),
        payout_amount=payout.amount,
        unmatched=sorted(line["id"] for line in unmatched),
    )
    check.waiting = sorted(_worth_waiting(session, unmatched))
    if stripe_net != to_stripe_amount(payout.amount, currency):
        check.fields["net"] = {"payout": payout.amount, "lines": check.lines_net}
    if check.unmatched:
        check.fields["unmatched_lines"] = check.unmatched
    if check.waiting and not final:
        check.status = "waiting"
        return check
    if merchant_id is None:
        # An exception belongs to a merchant; a payout of no one's (or several merchants')
        # sales keeps its lines, and the log says what did not add up.
        if check.fields:
            log.warning("payout %s does not reconcile: %s", payout_id, check.fields)
            check.status = "unowned"
        return check
    subject = f"payout:{payout_id}"
    if check.fields:
        record_exception(
            session,
            merchant_id=merchant_id,
            type=MISMATCH,
            subject_key=subject,
            fields=check.fields,
            payout_id=payout_id,
        )
        check.status = "open"
    else:
        check.status = (
            "resolved"
            if resolve_exception(
                session, merchant_id=merchant_id, type=MISMATCH, subject_key=subject
            )
            else "fine"
        )
    return check


def _store(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = PayoutLine.__table__
    statement = insert(PayoutLine)
    tie = func.coalesce(statement.excluded.sale_id, table.c.sale_id)
    # One statement, many rows: SQLAlchemy batches them into multi-row INSERTs.
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[PayoutLine.payout_id, PayoutLine.balance_transaction_id],
            # A line is Stripe's and does not change; only its tie may be found later.
            set_={"sale_id": tie},
            where=table.c.sale_id.is_distinct_from(tie),
        ),
        rows,
    )


# --------------------------------------------------------------------------------------------
# Exceptions: one row per merchant, type and subject
# --------------------------------------------------------------------------------------------


def record_exception(
    session: Session,
    *,
    merchant_id: str,
    type: str,  # the model's own field name
    subject_key: str,
    fields: dict[str, Any],
    payout_id: str | None = None,
    sale_id: str | None = None,
) -> None:
    """Found: insert it open, or update it. A resolved one opens again; an acknowledged one
    stays acknowledged. Found again unchanged, nothing is written. Each opening (new, or
    again after it was resolved) is announced to the merchant's webhooks, once."""
    table = ReconciliationException.__table__
    now = utcnow()
    previous = session.scalar(
        select(ReconciliationException.status)
        .where(
            ReconciliationException.merchant_id == merchant_id,
            ReconciliationException.type == type,
            ReconciliationException.subject_key == subject_key,
        )
        .with_for_update()
    )
    statement = insert(ReconciliationException).values(
        id=new_id("reconciliation_exception"),
        merchant_id=merchant_id,
        type=type,
        subject_key=subject_key,
        sale_id=sale_id,
        payout_id=payout_id,
        fields=fields,
        status="open",
        opened_at=now,
        updated_at=now,
    )
    was_resolved = table.c.status == "resolved"
    written = session.execute(
        statement.on_conflict_do_update(
            index_elements=[
                ReconciliationException.merchant_id,
                ReconciliationException.type,
                ReconciliationException.subject_key,
            ],
            set_={
                "fields": statement.excluded.fields,
                "sale_id": statement.excluded.sale_id,
                "payout_id": statement.excluded.payout_id,
                "status": case((was_resolved, "open"), else_=table.c.status),
                # Found again after it was resolved: a new finding, from now.
                "opened_at": case(
                    (was_resolved, statement.excluded.opened_at), else_=table.c.opened_at
                ),
                "resolved_at": None,
                "updated_at": statement.excluded.updated_at,
            },
            where=was_resolved
            | table.c.fields.is_distinct_from(statement.excluded.fields)
            | table.c.payout_id.is_distinct_from(statement.excluded.payout_id)
            | table.c.sale_id.is_distinct_from(statement.excluded.sale_id),
        ).returning(
            table.c.id,
            table.c.merchant_id,
            table.c.type,
            table.c.status,
            table.c.subject_key,
            table.c.sale_id,
            table.c.fields,
            table.c.opened_at,
            table.c.updated_at,
            literal_column("(xmax = 0)").label("inserted"),
        )
    ).one_or_none()
    if written is not None and (written.inserted or previous == "resolved"):
        announce(session, [written])


def resolve_exception(session: Session, *, merchant_id: str, type: str, subject_key: str) -> bool:
    """No longer found: resolve it (open or acknowledged). True when one was resolved."""
    now = utcnow()
    resolved = session.execute(
        update(ReconciliationException)
        .where(
            ReconciliationException.merchant_id == merchant_id,
            ReconciliationException.type == type,
            ReconciliationException.subject_key == subject_key,
            ReconciliationException.status != "resolved",
        )
        .values(status="resolved", resolved_at=now, updated_at=now)
    )
    return bool(resolved.rowcount)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Queueing
# --------------------------------------------------------------------------------------------


def enqueue_fetch(payout_id: str) -> None:
    """Send the task that lists and checks the payout's lines (the caller has committed);
    a broker outage leaves the payout unfetched for the sweep."""
    from commerce.reconciliation import tasks

    try:
        tasks.fetch_payout_lines.apply_async(args=[payout_id])
    except Exception:  # the broker's errors vary by transport; the sweep covers all of them
        log.warning("payout %s not queued; the sweep will fetch its lines", payout_id)


def payouts_explained_since(session: Session, *, limit: int = 500) -> list[str]:
    """Payouts with a charge, refund or dispute line tied to no sale whose sale event has
    been recorded since: checked again, their mismatch resolves."""
    kinds = sorted({kind for wanted in _TIES.values() for kind in wanted})
    return list(
        session.scalars(
            select(PayoutLine.payout_id)
            .distinct()
            .join(Payout, Payout.id == PayoutLine.payout_id)
            .join(SaleEvent, SaleEvent.source_ref == PayoutLine.source_id)
            .join(Sale, Sale.id == SaleEvent.sale_id)
            .where(
                PayoutLine.sale_id.is_(None),
                PayoutLine.type.in_(sorted(_TIES)),
                SaleEvent.kind.in_(kinds),
                (Payout.merchant_id.is_(None)) | (Payout.merchant_id == Sale.merchant_id),
            )
            .limit(limit)
        )
    )


def unfetched_payouts(session: Session, *, older_than: datetime) -> list[str]:
    """Payouts whose lines were never listed, received before `older_than` (and within the
    last days: one whose lines Stripe keeps refusing is not asked for forever)."""
    return list(
        session.scalars(
            select(Payout.id)
            .where(
                Payout.lines_fetched_at.is_(None),
                Payout.created_at < older_than,
                Payout.created_at >= older_than - SWEEP_WITHIN,
            )
            .order_by(Payout.created_at)
            .limit(500)
        )
    )
