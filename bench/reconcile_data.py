"""A reconciliation data set with known ground truth, written set-based into a migrated
database.

The data is made of *cases*. A case is one cardholder's card at one merchant (so one card
group: the merchant and the card's last four digits, distinct for every case of a
merchant) and a small scenario from `TEMPLATES`: the sales, their Stripe events, the card
transactions a partner reported, and what the rules of docs/RECONCILIATION.md say must
come out of it: the matches and the exceptions. The truth is stated per template by hand,
from the rules, never by running the engine; each case instantiates one template with its
own ids, amount, currency, card brand and time. Most cases are plain (a paid sale and its
authorization and clearing); the others are the difficult parts: tips and partial captures,
several partial refunds, reversals, duplicates, amount and currency errors, orphans, late
clearings, Stripe duplicate charges, disputes and chargebacks, card data that must not be
used (no consent, another purpose, another merchant's MID), and near-collisions whose
outcome follows from the ranking (time apart, then amount apart, then sale id and
purchase key).

Everything is written with INSERT ... SELECT over `generate_series`, deterministic from
the seed. Besides the product's tables it fills the schema `truth`:

- `truth.matches` (sale_id, kind, source_key, rule, confidence) and `truth.exceptions`
  (merchant_id, type, subject_key, status): what the rules call for;
- `truth.f_sales`, `truth.f_sale_events`, `truth.f_card`: every fact, with the time it
  arrives; `truth.arrival` ranks them in arrival order (shuffled against the order they
  happened in), so a test can deliver them chunk by chunk (`deliver`) to the continuous
  path;
- `truth.params`: the period, `as_of` (the "now" of the truth) and the sizes.

Usage: python bench/reconcile_data.py --url postgresql+psycopg://... --sales 100000
(the database must exist and be migrated: `migrations.upgrade(url)`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

H = 3600
D = 86400
M = 60

PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)
#: Cases sit in windows of 5 days; a case's time is 1.5 to 3 days into its window.
WINDOW_DAYS = 5
WINDOWS = 26
#: The truth's "now": 7 days before it falls between windows 24 and 25, 10 days before it
#: between windows 23 and 24, so no authorization is near its clearing deadline.
AS_OF = PERIOD_START + timedelta(days=130.5)
PERIOD_END = PERIOD_START + timedelta(days=131)
OLD = (0, 22)  # old enough for both classes' clearing days, and room for +14 days
YOUNG = (25, 25)  # younger than both classes' clearing days
#: Merchant classes: the defaults, and one with a tolerance and tighter windows.
TOLERANT = {"amount_tolerance": 100, "time_window_seconds": 6 * H, "clearing_days": 10}
PARTNERS = ("prt_" + "0" * 21 + "1", "prt_" + "0" * 21 + "2")
MAX_CASES_PER_MERCHANT = 9000  # last four digits stay distinct within a merchant
MAX_DELAY = 2 * H  # facts arrive up to 2 hours after they happen (shuffled)
LATE = 1 * D  # ... or a day later, for facts marked late


# --------------------------------------------------------------------------- templates

Amount = tuple[int, int]  # (multiple of the case's base amount, added minor units)
A: Amount = (1, 0)


@dataclass(frozen=True)
class Sale:
    rank: int  # orders the sale ids within a case (a smaller rank is a smaller id)
    t: int = 0  # checkout, seconds from the case's time
    amount: Amount = A
    currency: str = "same"  # "same": the case's currency
    card: bool = True  # Stripe's charge told chatledger the card
    brand: str = "same"  # "same" | "null"


@dataclass(frozen=True)
class Ev:
    sale: int  # rank of the sale
    kind: str
    ref: str  # "sale", "pi", or a prefix and number: "ch1", "re2", "du1"
    t: int
    amount: Amount | None = None
    late: bool = False


@dataclass(frozen=True)
class Card:
    txn: int  # the transaction's code: its transaction id within the case
    kind: str
    t: int
    amount: Amount = A
    orig: int | None = None  # code of the purchase a reversal/refund/chargeback names
    partner: int = 1
    currency: str = "same"  # "same" | "other"
    brand: str = "same"  # "same" | "other" | "null"
    cardref: bool = True  # the partner's card links to the same card reference
    usable: str = "ok"  # "ok" | "revoked" (consent revoked) | "nopurpose"
    mid: str = "own"  # "own" | "foreign" (a store that is not the merchant's)
    late: bool = False


@dataclass(frozen=True)
class Match:
    sale: int
    kind: str
    source: str | int  # a Stripe ref name ("ch1", "pi", "re1") or a card txn code
    rule: str
    confidence: str


@dataclass(frozen=True)
class Exc:
    type: str
    subject: str | int  # "s1:stripe", "s1:card", "s1" or a card txn code


@dataclass(frozen=True)
class Template:
    name: str
    weight: int
    sales: Sequence[Sale] = ()
    events: Sequence[Ev] = ()
    cards: Sequence[Card] = ()
    matches: Sequence[Match] = ()
    exceptions: Sequence[Exc] = ()
    windows: tuple[int, int] = OLD
    classes: tuple[str, ...] = ("default", "tolerant")
    partners: dict[int, int] = field(default_factory=dict)


def paid(s: int = 1, *, t: int = 0, amount: Amount = A, charge: str = "ch1", late=False):
    """Checkout at t, the charge a minute later."""
    return [
        Ev(s, "checkout_created", "sale", t, amount),
        Ev(s, "payment_succeeded", charge, t + M, amount, late=late),
    ]


def ac(code: int, t: int, amount: Amount = A, *, clear: Amount | None = None, **kw):
    """An authorization and its clearing a day later (of `clear`, default the same)."""
    return [
        Card(code, "authorized", t, amount, **kw),
        Card(code, "cleared", t + D, clear or amount, **kw),
    ]


def charge(s: int = 1, ref: str = "ch1") -> Match:
    return Match(s, "stripe_charge", ref, "payment_intent", "1.00")


def exact(s: int, code: int, confidence: str = "1.00") -> Match:
    return Match(s, "card_purchase", code, "card_exact", confidence)


def refund(s: int, ref: str) -> Match:
    return Match(s, "stripe_refund", ref, "refund_id", "1.00")


def card_refund(s: int, code: int) -> Match:
    return Match(s, "card_refund", code, "refund_amount", "0.90")


def by_time(s: int, code: int) -> Match:
    return Match(s, "card_purchase", code, "card_time", "0.50")


S1 = [Sale(1)]

TEMPLATES: list[Template] = [
    Template("clean", 300, S1, paid(), ac(1, 2 * M), [charge(), exact(1, 1)]),
    Template(
        "clean_other_ref",
        40,
        S1,
        paid(),
        ac(1, 2 * M, cardref=False),
        [charge(), exact(1, 1, "0.95")],
    ),
    # Most cardholders never consented: their sales have no card data at all.
    Template("no_card_data", 1360, S1, paid(), [], [charge()]),
    Template("pending", 30, [Sale(1, card=False)], [Ev(1, "checkout_created", "sale", 0, A)]),
    Template(
        "tip",
        30,
        S1,
        paid(),
        ac(1, 2 * M, clear=(1, 250)),
        [charge(), exact(1, 1)],
        [Exc("amount_mismatch", "s1:card")],
    ),
    Template(
        "partial_clearing",
        20,
        S1,
        paid(),
        ac(1, 2 * M, clear=(1, -400)),
        [charge(), exact(1, 1)],
        [Exc("amount_mismatch", "s1:card")],
    ),
    Template(
        "clearing_only",
        40,
        S1,
        paid(),
        [Card(1, "cleared", 3 * H)],
        [charge(), exact(1, 1)],
    ),
    Template(
        "amount_error",
        30,
        S1,
        paid(),
        ac(1, 2 * M, (1, 700)),
        [charge(), by_time(1, 1)],
        [Exc("amount_mismatch", "s1:card")],
    ),
    Template(
        "within_tolerance",
        60,
        S1,
        paid(),
        ac(1, 2 * M, (1, 60)),
        [charge(), Match(1, "card_purchase", 1, "card_tolerance", "0.80")],
        classes=("tolerant",),
    ),
    Template(
        "currency_error",
        20,
        S1,
        paid(),
        ac(1, 2 * M, currency="other"),
        [charge(), by_time(1, 1)],
        [Exc("currency_mismatch", "s1:card")],
    ),
    Template(
        "partial_refunds",
        40,
        S1,
        [
            *paid(),
            Ev(1, "refund_succeeded", "re1", 2 * D, (0, 500)),
            Ev(1, "refund_succeeded", "re2", 3 * D, (0, 700)),
            Ev(1, "refund_succeeded", "re3", 4 * D, (0, 500)),
        ],
        [
            *ac(1, 2 * M),
            Card(11, "refunded", 2 * D + 2 * H, (0, 500), orig=1),
            Card(12, "refunded", 3 * D + 2 * H, (0, 700), orig=1),
            Card(13, "refunded", 4 * D + 2 * H, (0, 500), orig=1),
        ],
        [
            charge(),
            refund(1, "re1"),
            refund(1, "re2"),
            refund(1, "re3"),
            exact(1, 1),
            card_refund(1, 11),
            card_refund(1, 12),
            card_refund(1, 13),
        ],
    ),
    Template(
        "refund_mismatch",
        20,
        S1,
        [
            *paid(),
            Ev(1, "refund_succeeded", "re1", 2 * D, (0, 500)),
            Ev(1, "refund_succeeded", "re2", 3 * D, (0, 900)),
            Ev(1, "refund_succeeded", "re3", 4 * D, (0, 600)),
            Ev(1, "refund_failed", "re3", 4 * D + 3 * H, (0, 600)),
        ],
        [
            *ac(1, 2 * M),
            Card(11, "refunded", 2 * D + 2 * H, (0, 500), orig=1),
            Card(12, "refunded", 2 * D + 3 * H, (0, 300), orig=1),
            Card(13, "refunded", 4 * D + 4 * H, (0, 600), orig=1),
        ],
        [charge(), refund(1, "re1"), refund(1, "re2"), exact(1, 1), card_refund(1, 11)],
        [Exc("refund_mismatch", 12), Exc("refund_mismatch", 13)],
    ),
    Template(
        # Two card refunds of one amount, one Stripe refund of it: the first by time pairs
        # (its transaction id is the larger one).
        "refund_order",
        10,
        S1,
        [*paid(), Ev(1, "refund_succeeded", "re1", 2 * D, (0, 500))],
        [
            *ac(1, 2 * M),
            Card(22, "refunded", 2 * D + 1 * H, (0, 500), orig=1),
            Card(21, "refunded", 3 * D, (0, 500), orig=1),
        ],
        [charge(), refund(1, "re1"), exact(1, 1), card_refund(1, 22)],
        [Exc("refund_mismatch", 21)],
    ),
    Template(
        "full_refund",
        10,
        S1,
        [*paid(), Ev(1, "refund_succeeded", "re1", 2 * D, A)],
        [*ac(1, 2 * M), Card(11, "refunded", 2 * D + 2 * H, A, orig=1)],
        [charge(), refund(1, "re1"), exact(1, 1), card_refund(1, 11)],
    ),
    Template(
        # An old authorization, reversed: neither an orphan nor a missing clearing.
        "reversed_alone",
        20,
        [],
        [],
        [Card(1, "authorized", 0), Card(2, "reversed", 3 * H, orig=1)],
    ),
    Template(
        "reversed_extra",
        20,
        S1,
        paid(),
        [
            *ac(1, 2 * M),
            Card(2, "authorized", 3 * H, (1, 1234)),
            Card(3, "reversed", 5 * H, (1, 1234), orig=2),
        ],
        [charge(), exact(1, 1)],
    ),
    Template("orphan", 30, [], [], ac(1, 0), [], [Exc("orphan_transaction", 1)]),
    Template(
        "orphan_with_refund",
        10,
        [],
        [],
        [*ac(1, 0), Card(11, "refunded", 2 * D, (0, 500), orig=1)],
        [],
        [Exc("orphan_transaction", 1)],
    ),
    Template(
        "duplicate_card",
        30,
        S1,
        paid(),
        [*ac(1, 10 * M), *ac(2, 40 * M)],
        [charge(), exact(1, 1)],
        [Exc("duplicate_charge", 2)],
    ),
    Template(
        # Stripe authorized (the card is known) but never captured; the bank cleared.
        "missing_payment",
        20,
        S1,
        [Ev(1, "checkout_created", "sale", 0, A), Ev(1, "payment_authorized", "pi", M, A)],
        ac(1, 2 * M),
        [exact(1, 1)],
        [Exc("missing_payment", "s1")],
    ),
    Template(
        "young_authorization",
        10,
        S1,
        [Ev(1, "checkout_created", "sale", 0, A), Ev(1, "payment_authorized", "pi", M, A)],
        [Card(1, "authorized", 5 * M)],
        [exact(1, 1)],
        windows=YOUNG,
    ),
    Template(
        "old_authorization",
        20,
        S1,
        paid(),
        [Card(1, "authorized", 5 * M)],
        [charge(), exact(1, 1)],
        [Exc("missing_clearing", 1)],
    ),
    Template(
        "late_clearing",
        20,
        S1,
        paid(),
        [Card(1, "authorized", 5 * M), Card(1, "cleared", 10 * D)],
        [charge(), exact(1, 1)],
    ),
    Template(
        "orphan_old_authorization",
        10,
        [],
        [],
        [Card(1, "authorized", 0)],
        [],
        [Exc("orphan_transaction", 1), Exc("missing_clearing", 1)],
    ),
    Template(
        "orphan_young_authorization",
        10,
        [],
        [],
        [Card(1, "authorized", 0)],
        [],
        [Exc("orphan_transaction", 1)],
        windows=YOUNG,
    ),
    Template(
        "stripe_duplicate_charge",
        20,
        S1,
        [*paid(), Ev(1, "payment_succeeded", "ch2", 90, A)],
        ac(1, 2 * M),
        [charge(), charge(1, "ch2"), exact(1, 1)],
        [Exc("duplicate_charge", "s1:stripe")],
    ),
    Template(
        "intent_without_charge",
        20,
        S1,
        paid(charge="pi"),
        ac(1, 2 * M),
        [charge(1, "pi"), exact(1, 1)],
    ),
    Template(
        "intent_and_charge",
        20,
        S1,
        [*paid(charge="pi"), Ev(1, "payment_succeeded", "ch1", 61, A)],
        ac(1, 2 * M),
        [charge(), exact(1, 1)],
    ),
    Template(
        "stripe_partial_capture",
        20,
        S1,
        [Ev(1, "checkout_created", "sale", 0, A), Ev(1, "payment_succeeded", "ch1", M, (1, -300))],
        ac(1, 2 * M, clear=(1, -300)),
        [charge(), exact(1, 1)],
        [Exc("amount_mismatch", "s1:stripe")],
    ),
    Template(
        "disputed_with_chargeback",
        10,
        S1,
        [*paid(), Ev(1, "dispute_opened", "du1", 5 * D, A)],
        [*ac(1, 2 * M), Card(31, "chargeback", 5 * D + H, A, orig=1)],
        [charge(), exact(1, 1)],
        [Exc("disputed", "s1:stripe")],
    ),
    Template(
        "chargeback_only",
        10,
        S1,
        paid(),
        [*ac(1, 2 * M), Card(31, "chargeback", 5 * D, A, orig=1)],
        [charge(), exact(1, 1)],
        [Exc("disputed", 31)],
    ),
    Template(
        "dispute_won",
        10,
        S1,
        [*paid(), Ev(1, "dispute_opened", "du1", 5 * D, A), Ev(1, "dispute_won", "du1", 8 * D, A)],
        ac(1, 2 * M),
        [charge(), exact(1, 1)],
    ),
    Template(
        "disputed_without_card",
        10,
        S1,
        [*paid(), Ev(1, "dispute_opened", "du1", 5 * D, A)],
        [],
        [charge()],
        [Exc("disputed", "s1:stripe")],
    ),
    # ----- near-collisions: the ranking decides, and the truth follows from it
    Template(
        # Two sales of one card and amount, one purchase: the nearer sale in time takes it.
        "nearer_sale",
        10,
        [Sale(1, 0), Sale(2, 4 * H)],
        [*paid(1), *paid(2, t=4 * H)],
        ac(1, 3 * H),
        [charge(1), charge(2), exact(2, 1)],
    ),
    Template(
        # Greedy one-to-one: s2-p1 (10 min) first, then s1-p2 (140 min).
        "crossing",
        10,
        [Sale(1, 0), Sale(2, 2 * H)],
        [*paid(1), *paid(2, t=2 * H)],
        [*ac(1, 110 * M), *ac(2, 140 * M)],
        [charge(1), charge(2), exact(2, 1), exact(1, 2)],
    ),
    Template(
        # Equally far in time: the nearer amount wins (time pass); the other is an orphan.
        "amount_tiebreak",
        10,
        S1,
        paid(),
        [*ac(2, -30 * M, (1, 100)), *ac(1, 30 * M, (1, 200))],
        [charge(), by_time(1, 2)],
        [Exc("amount_mismatch", "s1:card"), Exc("orphan_transaction", 1)],
        classes=("default",),
    ),
    Template(
        # One purchase halfway between two equal sales: the smaller sale id (the later sale).
        "sale_id_tiebreak",
        10,
        [Sale(2, 0), Sale(1, 2 * H)],
        [*paid(2), *paid(1, t=2 * H)],
        ac(1, 1 * H),
        [charge(1), charge(2), exact(1, 1)],
    ),
    Template(
        # Two equal purchases as far before as after: the smaller purchase key (the later);
        # the other would have matched exactly: a duplicate.
        "purchase_key_tiebreak",
        10,
        S1,
        paid(),
        [*ac(2, -1 * H), *ac(1, 1 * H)],
        [charge(), exact(1, 1)],
        [Exc("duplicate_charge", 2)],
    ),
    Template(
        # Two partners may use the same transaction id: two purchases.
        "same_id_two_partners",
        10,
        S1,
        paid(),
        [*ac(5, 10 * M), Card(5, "authorized", 2 * H, (1, 500), partner=2)],
        [charge(), exact(1, 5)],
        [Exc("orphan_transaction", "p2:5"), Exc("missing_clearing", "p2:5")],
    ),
    Template(
        "brand_disagrees",
        10,
        S1,
        paid(),
        [*ac(1, 5 * M, brand="other"), *ac(2, 3 * H)],
        [charge(), exact(1, 2)],
        [Exc("orphan_transaction", 1)],
    ),
    Template(
        "brand_unknown_on_card", 10, S1, paid(), ac(1, 5 * M, brand="null"), [charge(), exact(1, 1)]
    ),
    Template(
        "brand_unknown_on_sale",
        10,
        [Sale(1, brand="null")],
        paid(),
        ac(1, 5 * M),
        [charge(), exact(1, 1)],
    ),
    Template(
        "outside_window",
        10,
        S1,
        paid(),
        [*ac(1, 25 * H), *ac(2, 23 * H)],
        [charge(), exact(1, 2)],
        [Exc("orphan_transaction", 1)],
        classes=("default",),
    ),
    Template(
        "outside_window_tolerant",
        10,
        S1,
        paid(),
        [*ac(1, 7 * H), *ac(2, 5 * H + 30 * M)],
        [charge(), exact(1, 2)],
        [Exc("orphan_transaction", 1)],
        classes=("tolerant",),
    ),
    Template(
        # The nearer purchase's cardholder revoked consent: it is never looked at.
        "unusable_twin",
        10,
        S1,
        paid(),
        [*ac(1, 5 * M, usable="revoked"), *ac(2, 2 * H)],
        [charge(), exact(1, 2)],
    ),
    Template("other_purpose_only", 10, S1, paid(), ac(1, 5 * M, usable="nopurpose"), [charge()]),
    Template("foreign_mid", 10, S1, paid(), ac(1, 5 * M, mid="foreign"), [charge()]),
    Template(
        # An exact match later in time beats a nearer purchase of another amount.
        "exact_before_time",
        10,
        S1,
        paid(),
        [*ac(1, 5 * M, (1, 900)), *ac(2, 4 * H)],
        [charge(), exact(1, 2)],
        [Exc("orphan_transaction", 1)],
    ),
    Template(
        "exact_before_tolerance",
        10,
        S1,
        paid(),
        [*ac(1, 5 * M, (1, 50)), *ac(2, 3 * H)],
        [charge(), exact(1, 2)],
        [Exc("orphan_transaction", 1)],
        classes=("tolerant",),
    ),
    Template(
        # The same card and amount four days apart: each sale its own purchase.
        "repeat_customer",
        20,
        [Sale(1, 0), Sale(2, 4 * D)],
        [*paid(1), *paid(2, t=4 * D)],
        [*ac(1, 10 * M), *ac(2, 4 * D + 10 * M)],
        [charge(1), charge(2), exact(1, 1), exact(2, 2)],
    ),
    Template(
        # Stripe's charge (and so the card) is known a day late: the purchase arrives first.
        "card_known_late",
        20,
        S1,
        paid(late=True),
        ac(1, 2 * M),
        [charge(), exact(1, 1)],
    ),
]


def _check_templates() -> None:
    names = [t.name for t in TEMPLATES]
    assert len(names) == len(set(names)), "template names repeat"
    for t in TEMPLATES:
        ranks = {s.rank for s in t.sales}
        codes = {(c.partner, c.txn) for c in t.cards}
        for e in t.events:
            assert e.sale in ranks, (t.name, e)
        for m in t.matches:
            assert m.sale in ranks, (t.name, m)
            if isinstance(m.source, int):
                assert (1, m.source) in codes, (t.name, m)
        for x in t.exceptions:
            if isinstance(x.subject, int):
                assert (1, x.subject) in codes, (t.name, x)


_check_templates()


def _subject(x: Exc) -> tuple[str, int, int, int]:
    """(form, sale rank, partner, txn code) of an exception's subject."""
    if isinstance(x.subject, int):
        return ("txn", 0, 1, x.subject)
    if x.subject.startswith("p"):
        partner, code = x.subject[1:].split(":")
        return ("txn", 0, int(partner), int(code))
    sale, _, source = x.subject.partition(":")
    return ("sale" + (":" + source if source else ""), int(sale[1:]), 0, 0)


def _ref(ref: str) -> tuple[str, str]:
    """A Stripe reference's id prefix and suffix: the id is prefix + sale digits + suffix."""
    if ref == "sale":
        return ("sale_", "")
    if ref == "pi":
        return ("pi_", "")
    return (ref[:2] + "_", ref[2:])


# --------------------------------------------------------------------------- SQL

SCHEMA = """
DROP SCHEMA IF EXISTS truth CASCADE;
CREATE SCHEMA truth;
CREATE TABLE truth.params (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE truth.tpl (tpl text PRIMARY KEY, weight int, wmin int, wmax int,
    cls_default bool, cls_tolerant bool);
CREATE TABLE truth.tpl_sale (tpl text, rank int, t int, am int, aa int, other_currency bool,
    card bool, brand_null bool);
CREATE TABLE truth.tpl_event (tpl text, no int, rank int, kind text, ref_prefix text,
    ref_suffix text, t int, am int, aa int, has_amount bool, late bool);
CREATE TABLE truth.tpl_card (tpl text, no int, code int, kind text, t int, am int, aa int,
    orig int, partner int, other_currency bool, brand text, cardref bool, usable text,
    foreign_mid bool, late bool);
CREATE TABLE truth.tpl_match (tpl text, rank int, kind text, ref_prefix text, ref_suffix text,
    code int, partner int, rule text, confidence numeric(3, 2));
CREATE TABLE truth.tpl_exc (tpl text, type text, form text, rank int, partner int, code int);
"""

#: A deterministic pseudo-random non-negative integer from the seed, a number and a salt.
HASH = (
    "(('x' || substr(md5(:seed || ':' || ({n})::text || '-{salt}'), 1, 8))::bit(32)::int"
    " & 2147483647)"
)


def _h(n: str, salt: str) -> str:
    return HASH.format(n=n, salt=salt)


CASES = f"""
CREATE TABLE truth.cases AS
WITH picks AS MATERIALIZED (
    SELECT tpl, cls, sum(weight) OVER (PARTITION BY cls ORDER BY tpl) - weight AS lo,
           sum(weight) OVER (PARTITION BY cls ORDER BY tpl) AS hi,
           sum(weight) OVER (PARTITION BY cls) AS total, wmin, wmax
    FROM truth.tpl, LATERAL (VALUES ('default', cls_default), ('tolerant', cls_tolerant))
         AS c(cls, allowed)
    WHERE allowed
),
n AS MATERIALIZED (
    SELECT c, c % :merchants AS m, c / :merchants AS k,
           CASE WHEN c % :merchants % 5 = 4 THEN 'tolerant' ELSE 'default' END AS cls,
           {_h("c", "tpl")} AS pick
    FROM generate_series(0, :cases - 1) AS c
)
SELECT n.c, n.m, n.k, n.cls, p.tpl,
       ((n.c::bigint * 7368787 + CAST(:seed AS bigint) * 7919) % 10000000) AS scr,
       lpad(((n.k * 7919 + n.m * 13) % 10000)::text, 4, '0') AS last4,
       (ARRAY['visa', 'mastercard', 'amex', 'discover'])[1 + {_h("n.c", "brand")} % 4] AS brand,
       (ARRAY['USD', 'USD', 'EUR', 'GBP'])[1 + {_h("n.c", "cur")} % 4] AS currency,
       3000 + {_h("n.c", "amount")} % 47000 AS base,
       p.wmin + {_h("n.c", "window")} % (p.wmax - p.wmin + 1) AS win
FROM n JOIN picks p
  ON p.cls = n.cls AND n.pick % p.total >= p.lo AND n.pick % p.total < p.hi;
ALTER TABLE truth.cases ADD COLUMN t timestamptz;
UPDATE truth.cases SET t = CAST(:start AS timestamptz)
    + make_interval(days => win * {WINDOW_DAYS})
    + make_interval(secs => 129600 + {_h("c", "time")} % 129600);
ALTER TABLE truth.cases ADD COLUMN digits text;
UPDATE truth.cases SET digits = lpad(scr::text, 20, '0');
ALTER TABLE truth.cases ADD COLUMN merchant_id text;
UPDATE truth.cases SET merchant_id = 'mer_' || lpad(m::text, 22, '0');
ALTER TABLE truth.cases ADD PRIMARY KEY (c);
ANALYZE truth.cases;
"""  # noqa: S608 - the SQL text holds fixed names only

# Sales are kept to exactly the size asked: cases are taken in order while their sales fit,
# and the rest is made up with single-sale cases without card data.
TRIM = """
CREATE TEMP TABLE counted ON COMMIT DROP AS
SELECT c.c, coalesce(s.n, 0) AS n, sum(coalesce(s.n, 0)) OVER (ORDER BY c.c) AS upto
FROM truth.cases c
LEFT JOIN (SELECT tpl, count(*) AS n FROM truth.tpl_sale GROUP BY tpl) s USING (tpl);
UPDATE truth.cases SET tpl = 'no_card_data'
WHERE c = (SELECT min(c) FROM counted WHERE upto > :sales AND upto - n < :sales);
DELETE FROM truth.cases
WHERE c > (SELECT coalesce(min(c), 2147483647) FROM counted WHERE upto >= :sales);
"""

OTHER_CURRENCY = "CASE WHEN c.currency = 'EUR' THEN 'USD' ELSE 'EUR' END"
OTHER_BRAND = "CASE WHEN c.brand = 'visa' THEN 'mastercard' ELSE 'visa' END"
ARRIVE = (
    f"make_interval(secs => {{h}} % {MAX_DELAY})"
    f" + CASE WHEN {{late}} THEN interval '{LATE} seconds' ELSE interval '0' END"
)
SEV_DELAY = ARRIVE.format(h=_h("c.c * 100 + e.no", "sev"), late="e.late")
CARD_DELAY = ARRIVE.format(h=_h("c.c * 100 + k.no", "card"), late="k.late")

FACTS = f"""
CREATE TABLE truth.f_sales AS
SELECT 'sale_' || c.digits || lpad(s.rank::text, 2, '0') AS id,
       c.c, c.merchant_id,
       'ofr_' || c.digits || lpad(s.rank::text, 2, '0') AS offer_id,
       'cnv_' || c.digits || '00' AS conversation_id,
       'cus_' || c.digits || '00' AS customer_id,
       s.am * c.base + s.aa AS amount,
       CASE WHEN s.other_currency THEN {OTHER_CURRENCY} ELSE c.currency END AS currency,
       'pi_' || c.digits || lpad(s.rank::text, 2, '0') AS payment_intent_id,
       CASE WHEN s.card THEN 'crd_' || c.digits || '00' END AS card_ref_id,
       CASE WHEN s.card AND NOT s.brand_null THEN c.brand END AS card_brand,
       CASE WHEN s.card THEN c.last4 END AS card_last4,
       c.t + make_interval(secs => s.t) AS created_at
FROM truth.cases c JOIN truth.tpl_sale s USING (tpl);
ALTER TABLE truth.f_sales ADD PRIMARY KEY (id);

CREATE TABLE truth.f_sale_events AS
SELECT 'sev_' || c.digits || lpad((e.rank * 100 + e.no)::text, 4, '0') AS id,
       'sale_' || c.digits || lpad(e.rank::text, 2, '0') AS sale_id,
       e.kind,
       CASE WHEN e.kind = 'checkout_created' THEN 'api' ELSE 'stripe' END AS source,
       e.ref_prefix || c.digits || lpad(e.rank::text, 2, '0') || e.ref_suffix AS source_ref,
       CASE WHEN e.has_amount THEN e.am * c.base + e.aa END AS amount,
       c.t + make_interval(secs => e.t) AS occurred_at,
       c.t + make_interval(secs => e.t) + CASE WHEN e.kind = 'checkout_created'
           THEN interval '0' ELSE {SEV_DELAY} END
           AS recorded_at
FROM truth.cases c JOIN truth.tpl_event e USING (tpl);
ALTER TABLE truth.f_sale_events ADD PRIMARY KEY (id);

CREATE TABLE truth.f_card AS
SELECT 'ctx_' || c.digits || lpad(k.no::text, 2, '0') AS id,
       (CAST(:partners AS text[]))[k.partner] AS partner_id,
       k.kind,
       'T' || right(c.digits, 10) || lpad(k.code::text, 2, '0') AS transaction_id,
       CASE WHEN k.orig IS NOT NULL THEN 'T' || right(c.digits, 10) || lpad(k.orig::text, 2, '0')
       END AS original_transaction_id,
       'cust_' || c.digits || CASE WHEN k.usable = 'revoked' THEN 'x' ELSE '' END AS customer_ref,
       CASE WHEN k.cardref THEN 'crd_' || c.digits || '00' END AS card_ref_id,
       CASE k.brand WHEN 'same' THEN c.brand WHEN 'other' THEN {OTHER_BRAND} END AS card_brand,
       c.last4 AS card_last4,
       CASE WHEN k.foreign_mid THEN 'F' || lpad(c.m::text, 8, '0')
            ELSE 'M' || lpad(c.m::text, 8, '0') || (ARRAY['A', 'B'])[1 + k.no % 2] END AS mid,
       CASE WHEN NOT k.foreign_mid THEN c.merchant_id END AS merchant_id,
       CASE WHEN k.foreign_mid THEN 'Elsewhere ' ELSE 'Store ' END || c.m AS merchant_name,
       k.am * c.base + k.aa AS amount,
       CASE WHEN k.other_currency THEN {OTHER_CURRENCY} ELSE c.currency END AS currency,
       c.t + make_interval(secs => k.t) AS occurred_at,
       CASE WHEN k.usable = 'nopurpose' THEN ARRAY['fraud_alerts']
            ELSE ARRAY['sales_attribution', 'fraud_alerts'] END AS purposes,
       c.t + make_interval(secs => k.t)
           + {CARD_DELAY} AS created_at,
       k.usable
FROM truth.cases c JOIN truth.tpl_card k USING (tpl);
ALTER TABLE truth.f_card ADD PRIMARY KEY (id);

CREATE TABLE truth.arrival AS
SELECT row_number() OVER (ORDER BY at, fact, id) AS rank, fact, id, at
FROM (
    SELECT 0 AS fact, id, created_at AS at FROM truth.f_sales
    UNION ALL SELECT 1, id, recorded_at FROM truth.f_sale_events
    UNION ALL SELECT 2, id, created_at FROM truth.f_card
) AS facts;
ALTER TABLE truth.arrival ADD PRIMARY KEY (rank);
CREATE INDEX ON truth.arrival (fact, id);
ANALYZE truth.f_sales; ANALYZE truth.f_sale_events; ANALYZE truth.f_card; ANALYZE truth.arrival;
"""  # noqa: S608 - the SQL text holds fixed names only

TRUTH = """
CREATE TABLE truth.matches AS
SELECT c.merchant_id, 'sale_' || c.digits || lpad(m.rank::text, 2, '0') AS sale_id, m.kind,
       CASE WHEN m.code IS NULL
            THEN m.ref_prefix || c.digits || lpad(m.rank::text, 2, '0') || m.ref_suffix
            ELSE (CAST(:partners AS text[]))[m.partner] || ':' || 'T' || right(c.digits, 10)
                 || lpad(m.code::text, 2, '0')
       END AS source_key,
       m.rule, m.confidence, c.tpl
FROM truth.cases c JOIN truth.tpl_match m USING (tpl);

CREATE TABLE truth.exceptions AS
SELECT c.merchant_id, x.type,
       CASE WHEN x.form = 'txn'
            THEN 'txn:' || (CAST(:partners AS text[]))[x.partner] || ':' || 'T'
                 || right(c.digits, 10)
                 || lpad(x.code::text, 2, '0')
            ELSE 'sale:sale_' || c.digits || lpad(x.rank::text, 2, '0')
                 || coalesce(':' || nullif(split_part(x.form, ':', 2), ''), '')
       END AS subject_key,
       'open'::text AS status, c.tpl
FROM truth.cases c JOIN truth.tpl_exc x USING (tpl);
"""

REFERENCE_DATA = """
INSERT INTO partners (id, name, created_at, pan_reports)
SELECT p, 'Bank ' || i, :start, 0 FROM unnest(CAST(:partners AS text[])) WITH ORDINALITY AS u(p, i);
INSERT INTO agreements (id, partner_id, scopes, purposes, starts_at, ends_at, retention_days,
                        status, created_at)
SELECT 'agr_' || lpad(i::text, 22, '0'), p, ARRAY['transactions'],
       ARRAY['sales_attribution', 'fraud_alerts'], '2020-01-01T00:00:00Z', NULL, 3650, 'active',
       '2020-01-01T00:00:00Z'
FROM unnest(CAST(:partners AS text[])) WITH ORDINALITY AS u(p, i);
INSERT INTO merchants (id, name, timezone, created_at)
SELECT 'mer_' || lpad(m::text, 22, '0'), 'Merchant ' || m, 'UTC', '2020-01-01T00:00:00Z'
FROM generate_series(0, :merchants - 1) AS m;
INSERT INTO merchant_mids (merchant_id, mid)
SELECT 'mer_' || lpad(m::text, 22, '0'), 'M' || lpad(m::text, 8, '0') || x
FROM generate_series(0, :merchants - 1) AS m, unnest(ARRAY['A', 'B']) AS x;
INSERT INTO reconciliation_settings (merchant_id, amount_tolerance, time_window_seconds,
                                     clearing_days, updated_at)
SELECT 'mer_' || lpad(m::text, 22, '0'), :tolerance, :window, :clearing, '2020-01-01T00:00:00Z'
FROM generate_series(0, :merchants - 1) AS m WHERE m % 5 = 4;
INSERT INTO customers (id, channel, channel_user_id, created_at)
SELECT 'cus_' || digits || '00', 'messenger', 'psid-' || digits, t - interval '1 day'
FROM truth.cases;
INSERT INTO conversations (id, merchant_id, customer_id, channel, thread_id, created_at)
SELECT 'cnv_' || digits || '00', merchant_id, 'cus_' || digits || '00', 'messenger',
       't-' || digits, t - interval '1 day'
FROM truth.cases;
INSERT INTO offers (id, merchant_id, conversation_id, title, amount, currency, quantity,
                    created_at)
SELECT offer_id, merchant_id, conversation_id, 'Offer', amount, currency, 1,
       created_at - interval '10 minutes'
FROM truth.f_sales;
INSERT INTO card_refs (id, brand, last4, created_at)
SELECT 'crd_' || digits || '00', brand, last4, t - interval '30 days' FROM truth.cases;
INSERT INTO consents (id, partner_id, customer_ref, chat_channel, chat_user_id, scopes, purposes,
                      expires_at, status, cards, as_of, created_at, updated_at)
SELECT 'cns_' || substr(md5(partner_id || customer_ref), 1, 22), partner_id, customer_ref,
       'messenger', NULL, ARRAY['transactions'], ARRAY['sales_attribution', 'fraud_alerts'],
       NULL, CASE WHEN usable = 'revoked' THEN 'revoked' ELSE 'granted' END,
       jsonb_build_array(jsonb_build_object('brand', card_brand, 'last4', card_last4)),
       '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'
FROM (SELECT DISTINCT ON (partner_id, customer_ref) partner_id, customer_ref, usable,
             card_brand, card_last4
      FROM truth.f_card ORDER BY partner_id, customer_ref, id) AS cardholders;
"""

# Delivering facts: a sale arrives at checkout (pending, card unknown); its events and the
# card transactions arrive at their own times. `:lo` < rank <= `:hi`.
DELIVER = """
INSERT INTO sales (id, merchant_id, offer_id, conversation_id, customer_id, amount, currency,
                   quantity, state, amount_captured, amount_refunded, amount_disputed,
                   payment_provider, payment_intent_id, created_at, updated_at)
SELECT s.id, s.merchant_id, s.offer_id, s.conversation_id, s.customer_id, s.amount, s.currency,
       1, 'pending_payment', 0, 0, 0, 'stripe', s.payment_intent_id, s.created_at, s.created_at
FROM truth.arrival a JOIN truth.f_sales s ON s.id = a.id
WHERE a.fact = 0 AND a.rank > :lo AND a.rank <= :hi;
INSERT INTO sale_events (id, sale_id, kind, source, source_ref, amount, occurred_at, recorded_at,
                         outcome_on_arrival, data)
SELECT e.id, e.sale_id, e.kind, e.source, e.source_ref, e.amount, e.occurred_at, e.recorded_at,
       'applied', '{}'::jsonb
FROM truth.arrival a JOIN truth.f_sale_events e ON e.id = a.id
WHERE a.fact = 1 AND a.rank > :lo AND a.rank <= :hi;
INSERT INTO card_transactions (id, partner_id, kind, transaction_id, original_transaction_id,
    customer_ref, card_ref_id, card_brand, card_last4, mid, merchant_id, merchant_name, mcc,
    merchant_country, amount, currency, occurred_at, auth_code, card_present, wallet, purposes,
    inbox_event_id, created_at)
SELECT k.id, k.partner_id, k.kind, k.transaction_id, k.original_transaction_id, k.customer_ref,
       k.card_ref_id, k.card_brand, k.card_last4, k.mid, k.merchant_id, k.merchant_name, '5814',
       'US', k.amount, k.currency, k.occurred_at, 'A1B2C3', false, NULL, k.purposes, NULL,
       k.created_at
FROM truth.arrival a JOIN truth.f_card k ON k.id = a.id
WHERE a.fact = 2 AND a.rank > :lo AND a.rank <= :hi;
"""

#: What the facts of a rank range touched: (merchant, sale ids, last four of card facts).
TOUCHED = """
SELECT merchant_id, array_agg(DISTINCT sale_id) FILTER (WHERE sale_id IS NOT NULL),
       array_agg(DISTINCT last4) FILTER (WHERE last4 IS NOT NULL)
FROM (
    SELECT s.merchant_id, s.id AS sale_id, NULL AS last4
    FROM truth.arrival a JOIN truth.f_sales s ON s.id = a.id
    WHERE a.fact = 0 AND a.rank > :lo AND a.rank <= :hi
    UNION ALL
    SELECT s.merchant_id, s.id, NULL
    FROM truth.arrival a JOIN truth.f_sale_events e ON e.id = a.id
    JOIN truth.f_sales s ON s.id = e.sale_id
    WHERE a.fact = 1 AND a.rank > :lo AND a.rank <= :hi
    UNION ALL
    SELECT k.merchant_id, NULL, k.card_last4
    FROM truth.arrival a JOIN truth.f_card k ON k.id = a.id
    WHERE a.fact = 2 AND a.rank > :lo AND a.rank <= :hi AND k.merchant_id IS NOT NULL
) AS touched
GROUP BY merchant_id ORDER BY merchant_id
"""

# The sale's cached columns from the events present, as states.fold computes them for the
# histories the templates make (one capture counted, refunds counted once unless reported
# failed, a dispute opened and possibly won; refunds and disputes never mixed), and the
# card Stripe's charge reported once a charge (or an authorization) is known.
DERIVED = """
ev AS (
    SELECT e.sale_id, e.id, e.kind, e.amount, e.recorded_at,
           e.kind = 'refund_succeeded' AND NOT EXISTS (
               SELECT 1 FROM {events} f WHERE f.sale_id = e.sale_id
                  AND f.kind = 'refund_failed' AND f.source_ref = e.source_ref) AS counted
    FROM {events} e WHERE {where}
),
folded AS (
    SELECT sale_id,
           (array_agg(amount ORDER BY id) FILTER (WHERE kind = 'payment_succeeded'))[1]
               AS captured,
           bool_or(kind = 'payment_authorized') AS authorized,
           bool_or(kind = 'dispute_opened') AS opened,
           bool_or(kind = 'dispute_won') AS won,
           bool_or(kind = 'dispute_lost') AS lost,
           coalesce(sum(amount) FILTER (WHERE counted), 0) AS refunded,
           coalesce(sum(amount) FILTER (WHERE kind = 'dispute_opened'), 0) AS disputed,
           max(recorded_at) AS last_at
    FROM ev GROUP BY sale_id
),
derived AS (
    SELECT f.sale_id,
           CASE WHEN f.captured IS NULL THEN
                    CASE WHEN f.authorized THEN 'authorized' ELSE 'pending_payment' END
                WHEN f.won AND f.opened THEN 'dispute_won'
                WHEN f.lost AND f.opened THEN 'dispute_lost'
                WHEN f.opened THEN 'disputed'
                WHEN f.refunded = 0 THEN 'paid'
                WHEN f.refunded >= f.captured THEN 'refunded'
                ELSE 'partially_refunded' END AS state,
           coalesce(f.captured, 0) AS captured,
           CASE WHEN f.captured IS NULL THEN 0 ELSE f.refunded END AS refunded,
           CASE WHEN f.captured IS NULL THEN 0 ELSE f.disputed END AS disputed,
           (f.captured IS NOT NULL OR f.authorized) AS card_known,
           f.last_at
    FROM folded f
)
"""

# The touched sales' cached columns from the events delivered so far.
DERIVE = (
    "WITH "
    + DERIVED.format(events="sale_events", where="e.sale_id = ANY(CAST(:ids AS text[]))")
    + """
UPDATE sales s
SET state = d.state, amount_captured = d.captured, amount_refunded = d.refunded,
    amount_disputed = d.disputed,
    card_ref_id = CASE WHEN d.card_known THEN t.card_ref_id END,
    card_brand = CASE WHEN d.card_known THEN t.card_brand END,
    card_last4 = CASE WHEN d.card_known THEN t.card_last4 END,
    updated_at = greatest(s.updated_at, d.last_at)
FROM derived d JOIN truth.f_sales t ON t.id = d.sale_id
WHERE s.id = d.sale_id
  AND (s.state, s.amount_captured, s.amount_refunded, s.amount_disputed, s.card_ref_id,
       s.card_brand, s.card_last4)
      IS DISTINCT FROM
      (d.state, d.captured, d.refunded, d.disputed,
       CASE WHEN d.card_known THEN t.card_ref_id END,
       CASE WHEN d.card_known THEN t.card_brand END,
       CASE WHEN d.card_known THEN t.card_last4 END)
"""
)

# Every fact at once (the data set as it stands once everything arrived): the sales are
# written with the columns derived from all their events.
LOAD_ALL = (
    """
INSERT INTO sales (id, merchant_id, offer_id, conversation_id, customer_id, amount, currency,
                   quantity, state, amount_captured, amount_refunded, amount_disputed,
                   payment_provider, payment_intent_id, card_ref_id, card_brand, card_last4,
                   created_at, updated_at)
WITH """
    + DERIVED.format(events="truth.f_sale_events", where="true")
    + """
SELECT s.id, s.merchant_id, s.offer_id, s.conversation_id, s.customer_id, s.amount, s.currency,
       1, coalesce(d.state, 'pending_payment'), coalesce(d.captured, 0),
       coalesce(d.refunded, 0), coalesce(d.disputed, 0), 'stripe', s.payment_intent_id,
       CASE WHEN d.card_known THEN s.card_ref_id END,
       CASE WHEN d.card_known THEN s.card_brand END,
       CASE WHEN d.card_known THEN s.card_last4 END,
       s.created_at, greatest(s.created_at, d.last_at)
FROM truth.f_sales s LEFT JOIN derived d ON d.sale_id = s.id;
"""
    + DELIVER.split(";\n", 1)[1]
    .replace(
        "FROM truth.arrival a JOIN truth.f_sale_events e ON e.id = a.id",
        "FROM truth.f_sale_events e",
    )
    .replace("FROM truth.arrival a JOIN truth.f_card k ON k.id = a.id", "FROM truth.f_card k")
    .replace("WHERE a.fact = 1 AND a.rank > :lo AND a.rank <= :hi", "")
    .replace("WHERE a.fact = 2 AND a.rank > :lo AND a.rank <= :hi", "")
)


# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class DataSet:
    sales: int
    card_transactions: int
    sale_events: int
    merchants: int
    cases: int
    facts: int
    period_start: datetime
    period_end: datetime
    as_of: datetime
    seconds: float


def _template_rows() -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {
        "tpl": [],
        "tpl_sale": [],
        "tpl_event": [],
        "tpl_card": [],
        "tpl_match": [],
        "tpl_exc": [],
    }
    for t in TEMPLATES:
        rows["tpl"].append(
            {
                "tpl": t.name,
                "weight": t.weight,
                "wmin": t.windows[0],
                "wmax": t.windows[1],
                "cls_default": "default" in t.classes,
                "cls_tolerant": "tolerant" in t.classes,
            }
        )
        for s in t.sales:
            rows["tpl_sale"].append(
                {
                    "tpl": t.name,
                    "rank": s.rank,
                    "t": s.t,
                    "am": s.amount[0],
                    "aa": s.amount[1],
                    "other_currency": s.currency != "same",
                    "card": s.card,
                    "brand_null": s.brand == "null",
                }
            )
        for no, e in enumerate(t.events, 1):
            prefix, suffix = _ref(e.ref)
            rows["tpl_event"].append(
                {
                    "tpl": t.name,
                    "no": no,
                    "rank": e.sale,
                    "kind": e.kind,
                    "ref_prefix": prefix,
                    "ref_suffix": suffix,
                    "t": e.t,
                    "am": e.amount[0] if e.amount else 0,
                    "aa": e.amount[1] if e.amount else 0,
                    "has_amount": e.amount is not None,
                    "late": e.late,
                }
            )
        for no, c in enumerate(t.cards, 1):
            rows["tpl_card"].append(
                {
                    "tpl": t.name,
                    "no": no,
                    "code": c.txn,
                    "kind": c.kind,
                    "t": c.t,
                    "am": c.amount[0],
                    "aa": c.amount[1],
                    "orig": c.orig,
                    "partner": c.partner,
                    "other_currency": c.currency != "same",
                    "brand": c.brand,
                    "cardref": c.cardref,
                    "usable": c.usable,
                    "foreign_mid": c.mid == "foreign",
                    "late": c.late,
                }
            )
        for m in t.matches:
            is_card = isinstance(m.source, int)
            prefix, suffix = ("", "") if is_card else _ref(str(m.source))
            rows["tpl_match"].append(
                {
                    "tpl": t.name,
                    "rank": m.sale,
                    "kind": m.kind,
                    "ref_prefix": prefix,
                    "ref_suffix": suffix,
                    "code": m.source if is_card else None,
                    "partner": 1 if is_card else None,
                    "rule": m.rule,
                    "confidence": m.confidence,
                }
            )
        for x in t.exceptions:
            form, rank, partner, code = _subject(x)
            rows["tpl_exc"].append(
                {
                    "tpl": t.name,
                    "type": x.type,
                    "form": form,
                    "rank": rank,
                    "partner": partner,
                    "code": code,
                }
            )
    return rows


def per_case() -> tuple[float, float]:
    """Expected sales and card transactions per case, from the weights (default class)."""
    chosen = [t for t in TEMPLATES if "default" in t.classes]
    total = sum(t.weight for t in chosen)
    sales = sum(t.weight * len(t.sales) for t in chosen) / total
    cards = sum(t.weight * len(t.cards) for t in chosen) / total
    return sales, cards


TRACE = False


def _run(connection: Connection, sql: str, params: dict[str, Any]) -> None:
    for statement in sql.split(";\n"):
        if statement.strip():
            started = time.perf_counter()
            connection.execute(text(statement), params)
            if TRACE:
                print(f"  {time.perf_counter() - started:6.2f}s {statement.strip()[:60]!r}")


def generate(url: str, *, sales: int, seed: int = 1, log: Any = None) -> DataSet:
    """Write a data set of `sales` sales into the migrated, empty database at `url`."""
    started = time.perf_counter()
    per_sales, _ = per_case()
    cases = int(sales / per_sales * 1.05) + 10
    merchants = max(2, -(-cases // MAX_CASES_PER_MERCHANT))
    params: dict[str, Any] = {
        "seed": str(seed),
        "cases": cases,
        "merchants": merchants,
        "sales": sales,
        "start": PERIOD_START,
        "partners": list(PARTNERS),
        "tolerance": TOLERANT["amount_tolerance"],
        "window": TOLERANT["time_window_seconds"],
        "clearing": TOLERANT["clearing_days"],
    }
    engine = create_engine(url)

    def step(name: str) -> None:
        if log is not None:
            log(f"{time.perf_counter() - started:7.1f}s {name}")

    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        _run(connection, SCHEMA, {})
        for table, rows in _template_rows().items():
            if rows:
                columns = list(rows[0])
                connection.execute(
                    text(
                        f"INSERT INTO truth.{table} ({', '.join(columns)}) VALUES "  # noqa: S608
                        f"({', '.join(':' + c for c in columns)})"
                    ),
                    rows,
                )
        step("templates")
        _run(connection, CASES, params)
        _run(connection, TRIM, params)
        have = connection.execute(
            text("SELECT count(*) FROM truth.cases c JOIN truth.tpl_sale s USING (tpl)")
        ).scalar_one()
        if have < sales:
            raise RuntimeError(f"only {have} sales in {cases} cases: raise the case count")
        step("cases")
        _run(connection, FACTS, params)
        step("facts")
        _run(connection, TRUTH, params)
        step("truth")
        _run(connection, REFERENCE_DATA, params)
        step("merchants, customers, offers, consents")
        last = connection.execute(text("SELECT max(rank) FROM truth.arrival")).scalar_one()
        _run(connection, LOAD_ALL, {})
        step("sales, events and card transactions")
        counts = connection.execute(
            text(
                "SELECT (SELECT count(*) FROM sales), (SELECT count(*) FROM card_transactions),"
                " (SELECT count(*) FROM sale_events), (SELECT count(*) FROM truth.cases)"
            )
        ).one()
        late_arrival = connection.execute(text("SELECT max(at) FROM truth.arrival")).scalar_one()
        assert late_arrival <= AS_OF, late_arrival
        facts = dict(
            sales=counts[0],
            card_transactions=counts[1],
            sale_events=counts[2],
            merchants=merchants,
            cases=counts[3],
            facts=last,
        )
        connection.execute(
            text("INSERT INTO truth.params (key, value) VALUES (:k, :v)"),
            [
                {"k": k, "v": str(v)}
                for k, v in {
                    **facts,
                    "seed": seed,
                    "period_start": PERIOD_START.isoformat(),
                    "period_end": PERIOD_END.isoformat(),
                    "as_of": AS_OF.isoformat(),
                }.items()
            ],
        )
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("ANALYZE"))
    engine.dispose()
    step("analyzed")
    return DataSet(
        **facts,
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        as_of=AS_OF,
        seconds=time.perf_counter() - started,
    )


def deliver(connection: Connection, lo: int, hi: int) -> list[tuple[str, list[str], list[str]]]:
    """Insert the facts of arrival ranks lo < rank <= hi, re-derive the sales they touched,
    and return what they touched: (merchant id, sale ids, last four of card facts)."""
    params = {"lo": lo, "hi": hi}
    touched = [
        (row[0], list(row[1] or []), list(row[2] or []))
        for row in connection.execute(text(TOUCHED), params)
    ]
    _run(connection, DELIVER, params)
    sale_ids = [s for _, sales, _ in touched for s in sales]
    if sale_ids:
        connection.execute(text(DERIVE), {"ids": sale_ids})
    return touched


def clear_facts(connection: Connection) -> None:
    """Remove the delivered facts and everything derived from them (the reference data and
    the truth stay), so the facts can be delivered again in arrival order."""
    connection.execute(
        text(
            "TRUNCATE reconciliation_matches, reconciliation_exceptions, sale_events,"
            " card_transactions, sales CASCADE"
        )
    )


def params(connection: Connection) -> dict[str, str]:
    return dict(connection.execute(text("SELECT key, value FROM truth.params")).all())


def check_cached_state(connection: Connection, sale_ids: Sequence[str]) -> list[str]:
    """Differences between the sales' cached columns and `states.fold` over their events."""
    from commerce.sales.states import EventKind, Fact, fold

    events: dict[str, list[Fact]] = {s: [] for s in sale_ids}
    for row in connection.execute(
        text(
            "SELECT sale_id, id, kind, occurred_at, source_ref, amount FROM sale_events"
            " WHERE sale_id = ANY(CAST(:ids AS text[]))"
        ),
        {"ids": list(sale_ids)},
    ):
        events[row.sale_id].append(
            Fact(
                row.id, EventKind(row.kind), row.occurred_at, ref=row.source_ref, amount=row.amount
            )
        )
    cached = {
        row.id: row
        for row in connection.execute(
            text(
                "SELECT id, state, amount_captured, amount_refunded, amount_disputed FROM sales"
                " WHERE id = ANY(CAST(:ids AS text[]))"
            ),
            {"ids": list(sale_ids)},
        )
    }
    problems = []
    for sale_id, facts in events.items():
        ledger, _ = fold(facts)
        want = (
            ledger.state.value,
            ledger.amount_captured,
            ledger.amount_refunded,
            ledger.amount_disputed,
        )
        row = cached[sale_id]
        have = (row.state, row.amount_captured, row.amount_refunded, row.amount_disputed)
        if want != have:
            problems.append(f"{sale_id}: fold {want}, cached {have}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="a migrated, empty database")
    parser.add_argument("--sales", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    data = generate(args.url, sales=args.sales, seed=args.seed, log=print)
    print(data)


if __name__ == "__main__":
    main()
