"""Currencies and amounts, checked against the published ISO 4217 table where present."""

from __future__ import annotations

import csv

import pytest

from commerce import money
from commerce.errors import InvalidInput
from tests.support.stripe_spec import require_shared_data


@pytest.mark.parametrize(("code", "exponent"), [("USD", 2), ("JPY", 0), ("KWD", 3), ("eur", 2)])
def test_minor_units(code, exponent):
    assert money.currency(code).exponent == exponent


@pytest.mark.parametrize("code", ["DEM", "VEF", "ZZZ", "US", "USDD", "12A", "", "€UR"])
def test_unknown_or_withdrawn_codes_are_refused(code):
    with pytest.raises(InvalidInput) as error:
        money.currency(code)
    assert "currency" in error.value.errors


@pytest.mark.parametrize("code", ["XAU", "XDR", "XTS", "XXX"])
def test_units_without_a_minor_unit_are_refused(code):
    with pytest.raises(InvalidInput) as error:
        money.currency(code)
    assert "no minor unit" in error.value.errors["currency"][0]


@pytest.mark.parametrize("amount", [0, -1, 1.5, 10.0, True, "100", None, money.MAX_AMOUNT + 1])
def test_amounts_that_are_refused(amount):
    with pytest.raises(InvalidInput):
        money.validate_amount(amount, "USD")


@pytest.mark.parametrize(
    ("amount", "code", "text"),
    [(1250, "USD", "12.50 USD"), (500, "JPY", "500 JPY"), (5, "KWD", "0.005 KWD")],
)
def test_format_amount(amount, code, text):
    assert money.format_amount(amount, code) == text


def test_table_agrees_with_iso_4217():
    path = require_shared_data("iso4217.csv")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    current = {r["AlphabeticCode"]: r["MinorUnit"] for r in rows if not r["WithdrawalDate"]}
    withdrawn = {r["AlphabeticCode"] for r in rows if r["WithdrawalDate"]} - set(current)
    assert current, "the ISO table has no current currencies"
    for code, minor in current.items():
        if minor.isdigit():
            assert money.currency(code).exponent == int(minor), code
        else:
            with pytest.raises(InvalidInput):
                money.currency(code)
    for code in withdrawn:
        if code:
            with pytest.raises(InvalidInput):
                money.currency(code)
