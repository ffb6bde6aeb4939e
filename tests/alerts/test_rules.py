"""Each fraud rule fires on its case and stays quiet on a near miss; the findings depend on
when purchases occurred, never on the order they are given in."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from commerce.alerts.rules import Purchase, Thresholds, evaluate

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RULES = Thresholds()


def purchase(n: int, *, minutes: float = 0, days: float = 0, **fields) -> Purchase:
    base = Purchase(
        transaction_id=f"txn_{n:03d}",
        occurred_at=T0 + timedelta(days=days, minutes=minutes),
        amount=2000,
        currency="USD",
        merchant=f"mid_{n:03d}",
        merchant_name=f"Store {n}",
        country="US",
        card_present=True,
    )
    return replace(base, **fields)


def routine(count: int = 6) -> list[Purchase]:
    """A cardholder's ordinary weeks: one purchase a day, at home, in person."""
    return [purchase(i, days=-(count - i)) for i in range(count)]


def fired(current: Purchase, history: list[Purchase]) -> set[str]:
    return {f.rule for f in evaluate(current, history, RULES)}


def test_a_routine_purchase_fires_nothing():
    assert fired(purchase(99), routine()) == set()


def test_velocity():
    burst = [purchase(50 + i, minutes=i) for i in range(4)]
    fifth = purchase(60, minutes=9)
    assert "velocity" in fired(fifth, routine() + burst)
    # Near miss: the first of the burst falls just outside the ten-minute window.
    late = purchase(60, minutes=10.01)
    assert "velocity" not in fired(late, routine() + burst)
    # Near miss: four purchases, not five.
    assert "velocity" not in fired(fifth, routine() + burst[1:])


def test_unusual_amount():
    assert "unusual_amount" in fired(purchase(99, amount=10_000), routine())
    assert "unusual_amount" not in fired(purchase(99, amount=9_999), routine())
    # Too little history to know what is usual.
    assert "unusual_amount" not in fired(purchase(99, amount=50_000), routine(4))
    # Another currency's history says nothing about this one.
    assert "unusual_amount" not in fired(purchase(99, amount=50_000, currency="EUR"), routine())


def test_new_country():
    assert "new_country" in fired(purchase(99, country="BR"), routine())
    history = [*routine(), purchase(40, days=-30, country="BR")]
    assert "new_country" not in fired(purchase(99, country="BR"), history)
    assert "new_country" not in fired(purchase(99, country="BR"), routine(2))


def test_duplicate():
    first = purchase(70, minutes=-4, merchant="mid_x", amount=4200)
    again = purchase(71, merchant="mid_x", amount=4200)
    assert "duplicate" in fired(again, [*routine(), first])
    # Near misses: a minute too late, a cent more, another store.
    assert "duplicate" not in fired(
        again, [*routine(), replace(first, occurred_at=T0 - timedelta(minutes=5, seconds=1))]
    )
    assert "duplicate" not in fired(replace(again, amount=4201), [*routine(), first])
    assert "duplicate" not in fired(replace(again, merchant="mid_y"), [*routine(), first])


def test_card_not_present_at_a_new_merchant():
    online = purchase(99, merchant="mid_new", card_present=False)
    assert "card_not_present_new_merchant" in fired(online, routine())
    # Near misses: a store used before; in person; no history to judge by.
    used = [*routine(), purchase(30, days=-40, merchant="mid_new")]
    assert "card_not_present_new_merchant" not in fired(online, used)
    assert "card_not_present_new_merchant" not in fired(
        replace(online, card_present=True), routine()
    )
    assert "card_not_present_new_merchant" not in fired(online, routine(2))


def test_thresholds_are_configurable():
    strict = Thresholds(velocity_count=2, amount_factor=2)
    findings = evaluate(purchase(99, amount=4000), [*routine(), purchase(98, minutes=-1)], strict)
    assert {f.rule for f in findings} == {"velocity", "unusual_amount"}
    assert all(f.reason for f in findings)


def test_later_purchases_and_the_order_given_do_not_change_findings():
    history = [*routine(), *(purchase(50 + i, minutes=i) for i in range(4))]
    current = purchase(60, minutes=9, amount=4200, country="BR", card_present=False)
    expected = evaluate(current, history, RULES)
    assert {f.rule for f in expected} == {
        "velocity",
        "new_country",
        "card_not_present_new_merchant",
    }
    later = [purchase(80 + i, minutes=9.5, merchant="mid_x") for i in range(3)]
    for seed in range(5):
        shuffled = [*history, *later, current]
        random.Random(seed).shuffle(shuffled)
        assert evaluate(current, shuffled, RULES) == expected


@pytest.mark.parametrize("amount", [0, 1])
def test_no_reason_names_a_card(amount):
    findings = evaluate(purchase(99, amount=10_000 + amount, country="BR"), routine())
    assert findings
    assert all("4242" not in f.reason for f in findings)
