"""The fraud rules: pure functions of one purchase and the cardholder's earlier purchases.

Each rule has its own threshold (in `Thresholds`) and says why it fired in a reason text a
cardholder can read. A rule sees only purchases that occurred before the one it judges,
ordered by (occurred_at, transaction id): the partner's clock, never the order of arrival,
so the same purchases give the same findings whichever way their events came in.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from commerce.money import format_amount


@dataclass(frozen=True, slots=True)
class Purchase:
    """What the rules know of one card purchase; built from a stored card transaction."""

    transaction_id: str
    occurred_at: datetime
    #: Minor units of `currency`.
    amount: int
    currency: str
    #: The store: its card-acceptor id, or its name when the partner sent no id.
    merchant: str | None
    merchant_name: str | None
    country: str | None
    card_present: bool | None

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.occurred_at, self.transaction_id)


@dataclass(frozen=True, slots=True)
class Thresholds:
    #: Velocity: this many purchases (this one included) within the window fire.
    velocity_count: int = 5
    velocity_window: timedelta = timedelta(minutes=10)
    #: Unusual amount: at least `amount_factor` times the median of the cardholder's earlier
    #: purchases in the currency, once there are `amount_min_history` of them to judge by.
    amount_factor: int = 5
    amount_min_history: int = 5
    #: New country: judged once this many earlier purchases have a known country.
    new_country_min_history: int = 3
    #: Duplicate: the same amount at the same store within this window.
    duplicate_window: timedelta = timedelta(minutes=5)
    #: Card not present at a new store: judged once there are this many earlier purchases.
    new_merchant_min_history: int = 3
    #: How far back the cardholder's history is read.
    lookback: timedelta = timedelta(days=90)

    @property
    def reach(self) -> timedelta:
        """How far ahead a purchase can change another's findings through the windowed rules:
        a purchase arriving late makes the ones after it within this reach worth judging again."""
        return max(self.velocity_window, self.duplicate_window)


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"rule": self.rule, "reason": self.reason}


def _where(purchase: Purchase) -> str:
    return purchase.merchant_name or "a store"


def velocity(purchase: Purchase, earlier: Sequence[Purchase], t: Thresholds) -> str | None:
    start = purchase.occurred_at - t.velocity_window
    recent = sum(1 for p in earlier if p.occurred_at >= start) + 1
    if recent < t.velocity_count:
        return None
    minutes = int(t.velocity_window.total_seconds() // 60)
    return f"{recent} card purchases within {minutes} minutes."


def unusual_amount(purchase: Purchase, earlier: Sequence[Purchase], t: Thresholds) -> str | None:
    amounts = [p.amount for p in earlier if p.currency == purchase.currency]
    if len(amounts) < t.amount_min_history:
        return None
    usual = statistics.median_low(amounts)
    if usual <= 0 or purchase.amount < usual * t.amount_factor:
        return None
    return (
        f"{format_amount(purchase.amount, purchase.currency)} is far above your usual "
        f"{format_amount(usual, purchase.currency)}."
    )


def new_country(purchase: Purchase, earlier: Sequence[Purchase], t: Thresholds) -> str | None:
    countries = [p.country for p in earlier if p.country]
    if not purchase.country or len(countries) < t.new_country_min_history:
        return None
    if purchase.country in countries:
        return None
    return f"A purchase in a country you have not used the card in before ({purchase.country})."


def duplicate(purchase: Purchase, earlier: Sequence[Purchase], t: Thresholds) -> str | None:
    if purchase.merchant is None:
        return None
    start = purchase.occurred_at - t.duplicate_window
    for p in earlier:
        if (
            p.occurred_at >= start
            and p.merchant == purchase.merchant
            and (p.amount, p.currency) == (purchase.amount, purchase.currency)
        ):
            minutes = int(t.duplicate_window.total_seconds() // 60)
            return (
                f"The same amount at {_where(purchase)} twice within {minutes} minutes: "
                "a possible double charge."
            )
    return None


def card_not_present_new_merchant(
    purchase: Purchase, earlier: Sequence[Purchase], t: Thresholds
) -> str | None:
    if purchase.card_present is not False or purchase.merchant is None:
        return None
    if len(earlier) < t.new_merchant_min_history:
        return None
    if any(p.merchant == purchase.merchant for p in earlier):
        return None
    return f"An online or phone purchase at {_where(purchase)}, where you have not shopped before."


Rule = Callable[[Purchase, Sequence[Purchase], Thresholds], "str | None"]

#: Every rule, in the order its findings are listed.
RULES: tuple[tuple[str, Rule], ...] = (
    ("velocity", velocity),
    ("unusual_amount", unusual_amount),
    ("new_country", new_country),
    ("duplicate", duplicate),
    ("card_not_present_new_merchant", card_not_present_new_merchant),
)


def evaluate(
    purchase: Purchase,
    history: Sequence[Purchase],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Finding]:
    """The rules that fire for `purchase`; `history` may hold any of the cardholder's
    purchases (later ones and the purchase itself are left out here)."""
    start = purchase.occurred_at - thresholds.lookback
    earlier = sorted(
        (
            p
            for p in history
            if p.order < purchase.order
            and p.transaction_id != purchase.transaction_id
            and p.occurred_at >= start
        ),
        key=lambda p: p.order,
    )
    findings = []
    for name, rule in RULES:
        reason = rule(purchase, earlier, thresholds)
        if reason is not None:
            findings.append(Finding(name, reason))
    return findings
