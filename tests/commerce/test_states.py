"""The sale's state machine: the table, stale and invalid events, and order independence."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from commerce.sales.states import (
    TABLE,
    EventKind,
    Fact,
    Ledger,
    Outcome,
    SaleState,
    fold,
    transition,
)

E, S = EventKind, SaleState
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def fact(kind: EventKind, n: int, ref: str | None = None, amount: int | None = None) -> Fact:
    return Fact(f"sev_{n:02d}", kind, T0 + timedelta(minutes=n), ref=ref, amount=amount)


CHECKOUT = fact(E.CHECKOUT_CREATED, 0, "sale_1", 5000)
PAID = fact(E.PAYMENT_SUCCEEDED, 1, "ch_1", 5000)


def test_every_state_and_event_has_an_answer():
    for kind in EventKind:
        assert set(TABLE[kind]) == set(SaleState), kind


def test_happy_path_with_two_partial_refunds():
    ledger, outcomes = fold(
        [
            CHECKOUT,
            PAID,
            fact(E.REFUND_SUCCEEDED, 2, "re_1", 1000),
            fact(E.REFUND_SUCCEEDED, 3, "re_2", 1500),
        ]
    )
    assert ledger.state is S.PARTIALLY_REFUNDED
    assert (ledger.amount_captured, ledger.amount_refunded) == (5000, 2500)
    assert set(outcomes.values()) == {Outcome.APPLIED}


def test_refunds_adding_up_to_the_capture_make_the_sale_refunded():
    ledger, _ = fold(
        [
            CHECKOUT,
            PAID,
            fact(E.REFUND_SUCCEEDED, 2, "re_1", 2000),
            fact(E.REFUND_SUCCEEDED, 3, "re_2", 3000),
        ]
    )
    assert ledger.state is S.REFUNDED
    assert ledger.refundable == 0


def test_the_same_refund_twice_counts_once():
    refund = fact(E.REFUND_SUCCEEDED, 2, "re_1", 1000)
    again = Fact("sev_99", E.REFUND_SUCCEEDED, refund.occurred_at, ref="re_1", amount=1000)
    ledger, outcomes = fold([CHECKOUT, PAID, refund, again])
    assert ledger.amount_refunded == 1000
    assert sorted(outcomes.values()) == sorted(
        [Outcome.APPLIED, Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE]
    )


def test_a_refund_beyond_what_was_captured_is_invalid():
    ledger, outcomes = fold([CHECKOUT, PAID, fact(E.REFUND_SUCCEEDED, 2, "re_1", 5001)])
    assert ledger.state is S.PAID
    assert outcomes["sev_02"] is Outcome.INVALID


def test_a_failed_refund_gives_its_amount_back_whatever_the_order():
    ok = fact(E.REFUND_SUCCEEDED, 2, "re_1", 1000)
    failed = fact(E.REFUND_FAILED, 3, "re_1", 1000)
    for order in ([ok, failed], [failed, ok]):
        ledger, _ = fold([CHECKOUT, PAID, *order])
        assert ledger.state is S.PAID
        assert ledger.amount_refunded == 0


def test_a_failure_after_success_is_stale():
    ledger, _ = fold([CHECKOUT, PAID])
    outcome, after = transition(ledger, fact(E.PAYMENT_FAILED, 5, "pi_1"))
    assert outcome is Outcome.STALE
    assert after == ledger


def test_a_retry_after_a_failed_attempt_pays():
    ledger, _ = fold([CHECKOUT, fact(E.PAYMENT_FAILED, 1, "pi_1:1"), PAID])
    assert ledger.state is S.PAID


def test_a_refund_before_its_payment_waits_then_applies():
    refund = fact(E.REFUND_SUCCEEDED, 2, "re_1", 1000)
    outcome, _ = transition(fold([CHECKOUT])[0], refund)
    assert outcome is Outcome.INVALID
    ledger, outcomes = fold([refund, CHECKOUT, PAID])
    assert ledger.state is S.PARTIALLY_REFUNDED
    assert outcomes[refund.id] is Outcome.APPLIED


@pytest.mark.parametrize(
    ("closing", "final"), [(E.DISPUTE_WON, S.DISPUTE_WON), (E.DISPUTE_LOST, S.DISPUTE_LOST)]
)
def test_disputes_open_and_close(closing, final):
    ledger, _ = fold(
        [CHECKOUT, PAID, fact(E.DISPUTE_OPENED, 2, "dp_1", 5000), fact(closing, 3, "dp_1")]
    )
    assert ledger.state is final
    assert ledger.amount_disputed == 5000


def test_a_dispute_on_an_unpaid_sale_is_invalid():
    outcome, _ = transition(Ledger(amount=5000), fact(E.DISPUTE_OPENED, 1, "dp_1", 5000))
    assert outcome is Outcome.INVALID


def test_every_arrival_order_gives_the_same_result():
    """Succeeded, two partial refunds and a dispute that is lost: all 720 orders agree."""
    events = [
        CHECKOUT,
        PAID,
        fact(E.REFUND_SUCCEEDED, 2, "re_1", 700),
        fact(E.REFUND_SUCCEEDED, 3, "re_2", 300),
        fact(E.DISPUTE_OPENED, 4, "dp_1", 4000),
        fact(E.DISPUTE_LOST, 5, "dp_1"),
    ]
    ledgers = [fold(order)[0] for order in itertools.permutations(events)]
    assert len(ledgers) == 720
    assert all(ledger == ledgers[0] for ledger in ledgers)
    ledger = ledgers[0]
    assert ledger.state is S.DISPUTE_LOST
    assert (ledger.amount_captured, ledger.amount_refunded, ledger.amount_disputed) == (
        5000,
        1000,
        4000,
    )
