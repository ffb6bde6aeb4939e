"""The sale's state machine: for each state and event, what comes next.

A sale's current state is never written directly. It is derived by folding the
sale's append-only events through `transition`, one at a time, in a canonical
order (`canonical_order`), so the result after all of a sale's events have
arrived is the same whatever order they arrived in:

1. the checkout comes first;
2. payment attempts next, in lifecycle order (failed < authorized < canceled <
   succeeded): a customer may fail and then succeed, never the reverse;
3. refunds and disputes last, in the order they happened at the provider.

For each (state, event kind) the table answers with the next state, STALE (the
event is older than what is known: recorded, state unchanged) or INVALID (it
cannot apply yet or at all: recorded, not applied; if it is waiting for an event
that has not arrived, a later fold applies it).

Amounts follow set rules, never running totals from the provider: a refund counts
once per refund id, and not at all once that refund is reported failed; a charge
is captured once, whatever the number of deliveries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum


class SaleState(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    AUTHORIZED = "authorized"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    FAILED = "failed"
    CANCELED = "canceled"
    DISPUTED = "disputed"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


class EventKind(StrEnum):
    CHECKOUT_CREATED = "checkout_created"
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_AUTHORIZED = "payment_authorized"
    PAYMENT_CANCELED = "payment_canceled"
    PAYMENT_SUCCEEDED = "payment_succeeded"
    REFUND_SUCCEEDED = "refund_succeeded"
    REFUND_FAILED = "refund_failed"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


class Outcome(StrEnum):
    APPLIED = "applied"
    #: Older than what is already known; kept in the history, changes nothing.
    STALE = "stale"
    #: Cannot apply in this state (now, or until the event it depends on arrives).
    INVALID = "invalid"
    #: The same fact again (same kind and reference); changes nothing.
    DUPLICATE = "duplicate"


S = SaleState
E = EventKind

#: Rule markers for the table below, besides a plain next state.
STALE = Outcome.STALE
INVALID = Outcome.INVALID
#: The next state depends on the amounts after the refund: refunded or partially refunded.
BY_AMOUNT = "by_amount"
#: Amounts change but the state stays as it is (a refund during an open dispute).
KEEP = "keep"

_UNPAID = (S.PENDING_PAYMENT, S.FAILED, S.AUTHORIZED, S.CANCELED)
_SETTLED = (S.PAID, S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED, S.DISPUTE_WON, S.DISPUTE_LOST)

Rule = SaleState | Outcome | str


def _row(default: Rule, **overrides: Rule) -> dict[SaleState, Rule]:
    row: dict[SaleState, Rule] = dict.fromkeys(SaleState, default)
    row.update({SaleState(k): v for k, v in overrides.items()})
    return row


#: TABLE[event kind][current state] -> next state, or STALE / INVALID / BY_AMOUNT / KEEP.
TABLE: Mapping[EventKind, Mapping[SaleState, Rule]] = {
    # The checkout opens the history (the fold puts it first, whenever it arrived).
    E.CHECKOUT_CREATED: _row(STALE, pending_payment=S.PENDING_PAYMENT),
    E.PAYMENT_FAILED: _row(STALE, pending_payment=S.FAILED, failed=S.FAILED),
    E.PAYMENT_AUTHORIZED: _row(
        STALE, pending_payment=S.AUTHORIZED, failed=S.AUTHORIZED, authorized=S.AUTHORIZED
    ),
    E.PAYMENT_CANCELED: _row(
        STALE,
        pending_payment=S.CANCELED,
        failed=S.CANCELED,
        authorized=S.CANCELED,
        canceled=S.CANCELED,
    ),
    # Money that moved wins over an earlier cancellation: the books follow the money.
    E.PAYMENT_SUCCEEDED: _row(
        STALE,
        pending_payment=S.PAID,
        failed=S.PAID,
        authorized=S.PAID,
        canceled=S.PAID,
    ),
    # A refund before the payment is known waits (INVALID until the payment arrives).
    E.REFUND_SUCCEEDED: _row(
        INVALID,
        paid=BY_AMOUNT,
        partially_refunded=BY_AMOUNT,
        refunded=BY_AMOUNT,
        dispute_won=BY_AMOUNT,
        disputed=KEEP,
    ),
    E.REFUND_FAILED: _row(
        INVALID,
        paid=BY_AMOUNT,
        partially_refunded=BY_AMOUNT,
        refunded=BY_AMOUNT,
        dispute_won=KEEP,
        disputed=KEEP,
        dispute_lost=KEEP,
    ),
    E.DISPUTE_OPENED: _row(
        INVALID,
        paid=S.DISPUTED,
        partially_refunded=S.DISPUTED,
        refunded=S.DISPUTED,
        disputed=S.DISPUTED,
        dispute_won=S.DISPUTED,
        dispute_lost=STALE,
    ),
    E.DISPUTE_WON: _row(INVALID, disputed=S.DISPUTE_WON, dispute_lost=STALE),
    E.DISPUTE_LOST: _row(INVALID, disputed=S.DISPUTE_LOST, dispute_won=STALE),
}

#: Phase 1 order: a later attempt outcome overrides an earlier one.
_PAYMENT_RANK = {
    E.PAYMENT_FAILED: 1,
    E.PAYMENT_AUTHORIZED: 2,
    E.PAYMENT_CANCELED: 3,
    E.PAYMENT_SUCCEEDED: 4,
}
#: Within one instant of phase 2, a dispute opens before it closes.
_AFTER_PAYMENT_RANK = {
    E.REFUND_SUCCEEDED: 1,
    E.REFUND_FAILED: 2,
    E.DISPUTE_OPENED: 3,
    E.DISPUTE_WON: 4,
    E.DISPUTE_LOST: 4,
}


@dataclass(frozen=True, slots=True)
class Fact:
    """One event as the state machine sees it."""

    id: str
    kind: EventKind
    occurred_at: datetime
    #: The provider's id for the thing the event is about (refund id, dispute id, charge id).
    ref: str | None = None
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class Ledger:
    """A sale's derived state and amounts, in minor units of the sale's currency."""

    state: SaleState = S.PENDING_PAYMENT
    amount: int = 0
    amount_captured: int = 0
    #: The charge whose capture is counted; another charge id is a duplicate charge.
    charge_ref: str | None = None
    #: Refund id -> amount, for refunds that succeeded and were not later reported failed.
    refunds: Mapping[str, int] = field(default_factory=dict)
    #: Refund ids reported failed: never counted, whenever their success arrives.
    failed_refunds: frozenset[str] = frozenset()
    #: Dispute id -> disputed amount.
    disputes: Mapping[str, int] = field(default_factory=dict)

    @property
    def amount_refunded(self) -> int:
        return sum(self.refunds.values())

    @property
    def amount_disputed(self) -> int:
        return sum(self.disputes.values())

    @property
    def refundable(self) -> int:
        return max(self.amount_captured - self.amount_refunded, 0)


def canonical_order(facts: Iterable[Fact]) -> list[Fact]:
    def key(fact: Fact) -> tuple:
        if fact.kind is E.CHECKOUT_CREATED:
            return (0, 0, 0.0, fact.id)
        if fact.kind in _PAYMENT_RANK:
            return (1, _PAYMENT_RANK[fact.kind], 0.0, fact.id)
        return (2, fact.occurred_at.timestamp(), _AFTER_PAYMENT_RANK[fact.kind], fact.id)

    return sorted(facts, key=key)


def _by_amount(ledger: Ledger) -> SaleState:
    if ledger.amount_refunded == 0:
        return S.PAID
    if ledger.amount_refunded >= ledger.amount_captured:
        return S.REFUNDED
    return S.PARTIALLY_REFUNDED


def transition(ledger: Ledger, fact: Fact) -> tuple[Outcome, Ledger]:
    """Apply one fact: the outcome, and the ledger after it (unchanged unless APPLIED)."""
    rule = TABLE[fact.kind][ledger.state]
    if rule in (STALE, INVALID):
        return Outcome(rule), ledger

    # Facts about one provider object count once, however often they are delivered.
    if fact.kind is E.REFUND_SUCCEEDED:
        if fact.ref in ledger.refunds:
            return Outcome.DUPLICATE, ledger
        if fact.ref in ledger.failed_refunds:
            return Outcome.STALE, ledger
        if not fact.amount or fact.amount > ledger.refundable:
            return Outcome.INVALID, ledger
        updated = replace(ledger, refunds={**ledger.refunds, fact.ref: fact.amount})
    elif fact.kind is E.REFUND_FAILED:
        if fact.ref in ledger.failed_refunds:
            return Outcome.DUPLICATE, ledger
        refunds = {k: v for k, v in ledger.refunds.items() if k != fact.ref}
        updated = replace(
            ledger, refunds=refunds, failed_refunds=ledger.failed_refunds | {fact.ref}
        )
    elif fact.kind is E.PAYMENT_SUCCEEDED:
        captured = fact.amount if fact.amount is not None else ledger.amount
        updated = replace(ledger, amount_captured=captured, charge_ref=fact.ref)
    elif fact.kind is E.DISPUTE_OPENED:
        if fact.ref in ledger.disputes:
            return Outcome.DUPLICATE, ledger
        updated = replace(ledger, disputes={**ledger.disputes, fact.ref: fact.amount or 0})
    elif fact.kind is E.CHECKOUT_CREATED:
        updated = replace(ledger, amount=fact.amount or 0)
    else:
        updated = ledger

    if rule == BY_AMOUNT:
        next_state = _by_amount(updated)
    elif rule == KEEP:
        next_state = ledger.state
    else:
        next_state = SaleState(rule)
    if next_state is ledger.state and updated == ledger:
        return Outcome.DUPLICATE, ledger
    return Outcome.APPLIED, replace(updated, state=next_state)


def fold(facts: Iterable[Fact]) -> tuple[Ledger, dict[str, Outcome]]:
    """The ledger after all facts in canonical order, and each fact's outcome by id."""
    ledger = Ledger()
    outcomes: dict[str, Outcome] = {}
    for fact in canonical_order(facts):
        outcome, ledger = transition(ledger, fact)
        outcomes[fact.id] = outcome
    return ledger, outcomes


def allowed_from(kind: EventKind) -> list[str]:
    """States in which `kind` may be applied: for error messages."""
    return [s.value for s, rule in TABLE[kind].items() if rule not in (STALE, INVALID)]


UNPAID_STATES = frozenset(_UNPAID)
SETTLED_STATES = frozenset(_SETTLED)
