"""Money: an integer amount in the currency's minor unit plus an ISO 4217 code.

The minor unit comes from the ISO 4217 table (JPY has 0 decimals, KWD 3), as
published and packaged by the `iso4217` distribution; CLDR's display digits
(Babel) differ from the standard for a dozen currencies and are not used.
Withdrawn codes are absent from the current table and so are refused, and so are
units without a minor unit (gold, SDR, the test code XTS): nothing can be sold in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import iso4217

from commerce.errors import InvalidInput

#: The largest amount accepted in one sale, in minor units: Stripe's limit for a card payment.
MAX_AMOUNT = 99_999_999


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    #: Digits after the decimal point in the currency's minor unit (ISO 4217 "MinorUnit").
    exponent: int
    name: str


@cache
def _table() -> dict[str, Currency]:
    table: dict[str, Currency] = {}
    for entry in iso4217.Currency:
        if entry.exponent is None:
            continue
        table[entry.code] = Currency(entry.code, entry.exponent, entry.currency_name)
    return table


@cache
def _no_minor_unit() -> frozenset[str]:
    return frozenset(entry.code for entry in iso4217.Currency if entry.exponent is None)


def currency(code: str, *, field: str = "currency") -> Currency:
    """The active ISO 4217 currency for `code` (upper case), or InvalidInput naming `field`."""
    if not isinstance(code, str) or len(code) != 3 or not code.isascii() or not code.isalpha():
        raise InvalidInput({field: ["Must be a three-letter ISO 4217 currency code."]})
    found = _table().get(code.upper())
    if found is None:
        if code.upper() in _no_minor_unit():
            raise InvalidInput(
                {field: [f"{code.upper()} has no minor unit and cannot be sold in."]}
            )
        raise InvalidInput({field: [f"{code.upper()} is not a current ISO 4217 currency."]})
    return found


def validate_amount(amount: object, code: str, *, field: str = "amount") -> int:
    """An amount in minor units: a positive integer within bounds (never a float or bool)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInput({field: ["Must be an integer number of minor units."]})
    if amount <= 0:
        raise InvalidInput({field: ["Must be greater than zero."]})
    if amount > MAX_AMOUNT:
        raise InvalidInput({field: [f"Must be at most {MAX_AMOUNT} minor units of {code}."]})
    return amount


def format_amount(amount: int, code: str) -> str:
    """`1250, "USD"` -> `"12.50 USD"`: for people, never for arithmetic."""
    exponent = currency(code).exponent
    if exponent == 0:
        return f"{amount} {code}"
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d} {code}"
