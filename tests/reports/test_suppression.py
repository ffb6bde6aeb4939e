"""k-suppression of figures drawn from partner data, complementary suppression included."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from commerce.reports import attribution
from commerce.reports.attribution import AttributedPurchase
from commerce.reports.privacy import COMPLEMENTARY, FEWER_THAN_K, Cell, Group, suppress
from tests.helpers import bearer, create_merchant
from tests.reports.helpers import add_sale

K = 5


def _cell(name: str, holders: int, *, offset: int = 0) -> Cell:
    people = frozenset(f"{name}-{i + offset}" for i in range(holders))
    return Cell(name, {"revenue": 100 * holders}, people)


def _total(members: list[Cell]) -> Cell:
    return Cell(
        "total",
        {"revenue": sum(m.values["revenue"] for m in members)},
        frozenset().union(*(m.holders for m in members)),
    )


def test_a_small_cell_is_hidden_and_so_is_one_more_so_the_total_does_not_reveal_it():
    small, a, b = _cell("small", 2), _cell("a", 9), _cell("b", 6)
    total = _total([small, a, b])
    suppress([small, a, b, total], [Group(total, [small, a, b])], K)
    assert small.suppressed == FEWER_THAN_K
    # total - a - b would be `small`: the smallest other cell is hidden too.
    assert b.suppressed == COMPLEMENTARY
    assert a.suppressed is None
    assert total.suppressed is None


def test_hidden_cells_together_must_cover_k_cardholders():
    one, two, big, bigger = _cell("one", 1), _cell("two", 2), _cell("big", 7), _cell("bigger", 8)
    total = _total([one, two, big, bigger])
    suppress([one, two, big, bigger, total], [Group(total, [one, two, big, bigger])], K)
    # one + two = 3 people: their sum, total minus the shown cells, is still too small.
    assert (one.suppressed, two.suppressed) == (FEWER_THAN_K, FEWER_THAN_K)
    assert big.suppressed == COMPLEMENTARY
    assert bigger.suppressed is None


def test_cardholders_are_counted_once_however_many_purchases():
    regular = Cell("regular", {"revenue": 10_000, "count": 40}, frozenset({"same-card"}))
    total = _total([regular])
    suppress([regular, total], [Group(total, [regular])], K)
    assert regular.suppressed == FEWER_THAN_K
    assert total.suppressed == FEWER_THAN_K


def test_the_total_goes_when_nothing_else_can_hide_the_cell():
    small, large = _cell("small", 3), _cell("large", 3, offset=100)
    total = _total([small, large])  # 6 people, above k, but both cells are below
    suppress([small, large, total], [Group(total, [small, large])], K)
    assert small.suppressed == large.suppressed == FEWER_THAN_K
    assert total.suppressed is None  # 6 distinct people behind the two hidden cells

    lonely, fine = _cell("lonely", 2), _cell("fine", 5)
    total = _total([lonely, fine])
    upper = _total([total])
    suppress([lonely, fine, total], [Group(total, [lonely, fine])], K)
    assert fine.suppressed == COMPLEMENTARY
    assert upper.suppressed is None


def test_nothing_is_hidden_when_every_cell_has_k():
    cells = [_cell(str(i), K + i) for i in range(4)]
    total = _total(cells)
    suppress([*cells, total], [Group(total, cells)], K)
    assert all(c.suppressed is None for c in [*cells, total])


def test_no_shown_total_ever_reveals_a_small_group_on_random_tables():
    rng = random.Random(3)
    for _ in range(300):
        population = [f"p{i}" for i in range(rng.randrange(8, 40))]
        rows = [
            [
                Cell((r, c), {"revenue": 1}, frozenset(rng.sample(population, rng.randrange(1, 8))))
                for c in range(rng.randrange(1, 5))
            ]
            for r in range(rng.randrange(1, 5))
        ]
        row_totals = [_total(row) for row in rows]
        columns: dict[int, list[Cell]] = {}
        for row in rows:
            for cell in row:
                columns.setdefault(cell.key[1], []).append(cell)
        column_totals = {c: _total(members) for c, members in columns.items()}
        grand = _total(row_totals)
        groups = [Group(t, row) for t, row in zip(row_totals, rows, strict=True)]
        groups += [Group(column_totals[c], members) for c, members in columns.items()]
        groups += [Group(grand, row_totals), Group(grand, list(column_totals.values()))]
        every = [c for row in rows for c in row] + row_totals + list(column_totals.values())
        suppress([*every, grand], groups, K)
        for cell in [*every, grand]:
            if len(cell.holders) < K:
                assert cell.suppressed
        for group in groups:
            hidden = [m for m in group.members if m.suppressed]
            if hidden and not group.total.suppressed:
                assert len(frozenset().union(*(m.holders for m in hidden))) >= K


@pytest.fixture
def off_platform():
    """Attributed card purchases, standing in for commerce/attribution's reader in this test."""
    purchases: list[AttributedPurchase] = []

    def source(session, merchant_id, start, end, model="last_touch"):
        return list(purchases)

    previous = attribution.off_platform_source()
    attribution.register_off_platform(source)
    yield purchases
    attribution.register_off_platform(previous)


def test_the_attribution_report_hides_small_off_platform_cells(client, db, off_platform):
    merchant, key = create_merchant(client, timezone="UTC")
    a = add_sale(db, merchant["id"], datetime(2026, 6, 1, 12, tzinfo=UTC))
    b = add_sale(db, merchant["id"], datetime(2026, 6, 1, 13, tzinfo=UTC))

    def buy(sale, window, holder, amount=1000):
        off_platform.append(
            AttributedPurchase(sale.offer_id, sale.conversation_id, "USD", window, amount, holder)
        )

    for i in range(8):
        buy(a, "click_7d", f"card-{i}")
    for _ in range(5):
        buy(a, "view_1d", "card-repeat")  # five purchases, one cardholder
    for i in range(6):
        buy(b, "click_7d", f"card-b{i}")
    body = client.get(
        "/v1/reports/attribution",
        query_string={"from": "2026-06-01", "to": "2026-06-30"},
        headers=bearer(key),
    ).json
    off = body["off_platform"]
    assert off["available"] is True
    cells = {(r["offer_id"], r["window"]): r for r in off["rows"]}
    hidden = cells[(a.offer_id, "view_1d")]
    assert hidden == hidden | {
        "count": None,
        "revenue": None,
        "suppressed": True,
        "suppression": FEWER_THAN_K,
    }
    assert cells[(b.offer_id, "click_7d")]["revenue"] == 6000
    # The view_1d window total would be the hidden cell itself: hidden.
    windows = {t["window"]: t for t in off["totals"]["by_window"]}
    assert windows["view_1d"]["suppressed"] is True
    # Offer a's total minus its click cell would reveal the view cell: one of them is hidden.
    offers = {t["offer_id"]: t for t in off["totals"]["by_offer"]}
    assert offers[a.offer_id]["suppressed"] or cells[(a.offer_id, "click_7d")]["suppressed"]
    # And the grand total minus the shown window totals would too.
    grand = off["totals"]["by_currency"][0]
    assert grand["suppressed"] or windows["click_7d"]["suppressed"]
    assert "card-repeat" not in str(body)
