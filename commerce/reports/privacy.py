"""Small-cell suppression for figures drawn from partner data (SPEC 4.7).

A cell covering fewer than `k` distinct cardholders is suppressed (primary). A shown total
would then give the hidden cell away by subtraction (the total minus the other cells), so in
every group of cells that add up to a shown total, the hidden cells together must cover at
least `k` distinct cardholders: if they do not, the smallest shown cell is hidden as well
(complementary), and when none is left, the total is. This repeats over all groups until
nothing changes, since hiding a cell in one group can expose another group it belongs to.

Counts are of distinct cardholders, not purchases: one cardholder with ten purchases is one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

#: Why a cell is hidden.
FEWER_THAN_K = "fewer_than_k"
COMPLEMENTARY = "complementary"


@dataclass(eq=False)
class Cell:
    """One reported figure and who is behind it (kept in memory only, never shown)."""

    key: Hashable
    values: dict[str, int]
    holders: frozenset[str] = field(repr=False)
    suppressed: str | None = None


@dataclass(frozen=True)
class Group:
    """Cells that add up to `total` (so any one of them is `total` minus the others)."""

    total: Cell
    members: Sequence[Cell]


def suppress(cells: Iterable[Cell], groups: Sequence[Group], k: int) -> None:
    """Mark the cells (totals included) to hide, in place."""
    for cell in cells:
        if cell.suppressed is None and len(cell.holders) < k:
            cell.suppressed = FEWER_THAN_K
    changed = True
    while changed:
        changed = False
        for group in groups:
            hidden = [m for m in group.members if m.suppressed]
            if group.total.suppressed or not hidden:
                continue
            covered: frozenset[str] = frozenset().union(*(m.holders for m in hidden))
            if len(covered) >= k:
                continue
            shown = [m for m in group.members if not m.suppressed]
            if shown:
                smallest = min(shown, key=lambda m: (len(m.holders), sum(m.values.values())))
                smallest.suppressed = COMPLEMENTARY
            else:
                group.total.suppressed = COMPLEMENTARY
            changed = True
