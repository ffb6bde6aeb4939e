"""The one scrubber every inbound door uses (SPEC 4.3).

- `find_pans` / `mask`: card numbers (PANs) in free text. A PAN is a Luhn-valid run of 12 to
  19 decimal digits, in any script Unicode calls decimal (ASCII, full-width, Arabic-Indic...),
  written with no separator or with single separators between digit groups.
- `scrub`: walks a JSON-like document and returns a new one in which PANs are masked (text,
  keys, numbers), a PAN in a card field becomes a keyed hash plus brand and last four, and
  card verification codes, track data and PINs are dropped whatever their field is called.
- `CardHasher`: HMAC-SHA256 of a PAN with versioned keys, never a plain hash.
- `PanLogFilter`: the same masking for log records.

This module must never contain a literal card number (the repository's hooks look for them):
examples below use placeholders such as ``<16 digits>``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

__all__ = [
    "DEFAULT_CARD_FIELDS",
    "MASK_TEMPLATE",
    "CardFieldRule",
    "CardHasher",
    "CardKeyError",
    "CardKeyLike",
    "FieldPath",
    "PanHash",
    "PanLogFilter",
    "PanMatch",
    "ScrubResult",
    "brand_of",
    "card_fields",
    "find_pans",
    "is_secret_field",
    "luhn_valid",
    "mask",
    "normalize_digits",
    "scrub",
]

PAN_MIN_DIGITS = 12
PAN_MAX_DIGITS = 19
#: What replaces a PAN: at most its last four digits survive, always as ASCII digits.
MASK_TEMPLATE = "[card •••• {last4}]"

# --- Separators -----------------------------------------------------------------------------
#
# Between two digit groups of a PAN we accept exactly ONE of these characters (two in a row,
# a newline, a tab, a slash, a comma or a colon end the run):
#
# - spaces: the ASCII space and the other Unicode spaces people paste (no-break, thin,
#   narrow no-break, ideographic U+3000, which is what separates full-width groups);
# - dashes: the ASCII hyphen-minus and its Unicode look-alikes (hyphen, en/em dash, minus,
#   full-width hyphen-minus);
# - invisible format characters (soft hyphen, zero-width space/joiners, word joiner, BOM):
#   the text reads as an unbroken card number, so they must not hide one;
# - a dot, but ONLY in the 4-4-4-4 style grouping (every group of the candidate is four
#   digits long, the last one may be shorter): "dddd.dddd.dddd.dddd" is how some people
#   write a card number, while dots in other groupings are IPv4 addresses (up to twelve
#   digits), float timestamps ("1764331203.123456" has sixteen digits), version numbers and
#   decimal amounts, which would otherwise be masked about one time in ten (Luhn passes 10%
#   of random numbers).
#
# Tabs and newlines are not separators: they split columns and lines of numbers, which are
# separate values.
_SPACE_SEPARATORS = "\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_INVISIBLE_SEPARATORS = "\u00ad\u200b-\u200d\u2060\ufeff"
_DASH_SEPARATORS = "\\-\u2010-\u2015\u2212\ufe58\ufe63\uff0d"
_DOTS = ".\uff0e"
_SEPARATORS = _SPACE_SEPARATORS + _INVISIBLE_SEPARATORS + _DASH_SEPARATORS + _DOTS

# `\d` on a str pattern is exactly Unicode category Nd (what str.isdecimal accepts): ASCII,
# full-width U+FF10..U+FF19, Arabic-Indic, Devanagari, mathematical digits... Characters that
# only *look* numeric (superscripts, circled or Roman numerals: isdigit/isnumeric but not
# isdecimal) are not digits here, and unicodedata.decimal() converts every character \d
# matches.
#
# A run is maximal: digit groups joined by single separators. The alternatives cannot
# overlap (a separator is never a digit), so matching is linear with no backtracking.
_RUN = re.compile(rf"\d+(?:[{_SEPARATORS}]\d+)*")
_GROUP = re.compile(r"\d+")
_STRIP_SEPARATORS = re.compile(rf"[{_SEPARATORS}]")
_ASCII_DIGITS = "0123456789"
_PLUS_SIGNS = "+\uff0b"
#: A date and time as software writes them, ISO 8601 with a space or a "T" ("2026-11-29
#: 08:56"): a boundary, never part of a card number. Its groups (4-2-2 then a time) are no
#: way anyone writes a card, yet with digits before it they can form a Luhn-valid run one
#: time in ten: "glibc2.36 2026-11-29 08:56:58", in a worker's start-up banner, did for
#: every minute of that hour.
_DATE_TIME = re.compile(r"(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}")
#: E.164: an international phone number has at most 15 digits after the "+".
_E164_MAX_DIGITS = 15


def normalize_digits(text: str) -> str:
    """The ASCII digits of `text` once separators are removed.

    Raises ValueError if anything else than decimal digits and PAN separators remains. The
    message never repeats the input, which may be a card number.
    """
    stripped = _STRIP_SEPARATORS.sub("", text)
    if not stripped.isdecimal():
        raise ValueError("expected only decimal digits and separators")
    return _ascii(stripped)


def _ascii(digits: str) -> str:
    """Decimal digits of any script as ASCII; `digits` must be all decimal."""
    if digits.isascii():
        return digits
    return "".join(str(unicodedata.decimal(ch)) for ch in digits)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check; False for an empty string or anything but decimal digits."""
    if not digits.isdecimal():
        return False
    digits = _ascii(digits)
    total = 0
    double = False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total % 10 == 0


def _is_pan(digits: str) -> bool:
    return PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS and luhn_valid(digits)


@dataclass(frozen=True, slots=True)
class PanMatch:
    """Where a card number is in a text: `text[start:end]` covers its digits and separators.

    `digits` are the ASCII digits of that span; they are kept out of the repr so a match
    printed in a log or a traceback does not show the number.
    """

    start: int
    end: int
    digits: str = field(repr=False)

    @property
    def last4(self) -> str:
        return self.digits[-4:]

    @property
    def is_single_pan(self) -> bool:
        """False when overlapping candidates were merged into one span longer than a PAN."""
        return _is_pan(self.digits)


def _may_hold_pan(text: str) -> bool:
    """Fast path: a string with fewer than 12 decimal digits cannot hold a PAN."""
    if len(text) < PAN_MIN_DIGITS:
        return False
    if text.isascii():
        return sum(map(text.count, _ASCII_DIGITS)) >= PAN_MIN_DIGITS
    count = 0
    for m in _GROUP.finditer(text):
        count += m.end() - m.start()
        if count >= PAN_MIN_DIGITS:
            return True
    return False


def find_pans(text: str) -> list[PanMatch]:
    """The card numbers in `text`, left to right, as non-overlapping spans.

    Decisions:

    - A contiguous group of digits is atomic: a candidate starts and ends at group
      boundaries, so digits glued to other digits never form a PAN on their own. A run of
      25 digits is an identifier (a Payment Account Reference has 28 digits after its
      letter), and any such run holds a Luhn-valid 16-digit window about three times in four:
      treating windows as PANs would shred every long identifier while catching nothing
      a person writes. The cost: a PAN typed glued to other digits (its CVC, say) is missed.
    - With separators, any run of consecutive groups counts, whatever the grouping, even
      inside a longer separated run: "<card> 123" (a PAN then its CVC) or an order number
      before the card must still be caught.
    - Every candidate window that passes is masked. When two overlap (an accidental
      Luhn-valid window over the start of the real number and its neighbour), they are
      merged into one span, so no digit of the real PAN other than its last four survives.
      Two PANs that do not share a group stay two spans.
    - A run right after "+" whose candidate starts at its first group and has at most 15
      digits is an international phone number (E.164), not a PAN; at 16 digits or more, or
      further into the run, it is a PAN again.
    - A date and time ("2026-11-29 08:56", or with a "T") is a boundary like a letter.
    - Letters are boundaries like any other non-digit: "tok4..." still has its PAN found.
      Except inside a hex token of 32 characters or more (a SHA-256 or HMAC digest, such
      as the keyed card hashes chatledger stores): one digest in about 130 holds a
      Luhn-valid run of digits between its letters, and it is a digest, not a card.
    """
    if not _may_hold_pan(text):
        return []
    if ":" in text:
        # Date-times become non-digits of the same length: every offset stays right.
        text = _DATE_TIME.sub(lambda m: "_" * len(m.group()), text)
    matches: list[PanMatch] = []
    for run in _RUN.finditer(text):
        start, end = run.span()
        if end - start < PAN_MIN_DIGITS:
            continue
        phone = start > 0 and text[start - 1] in _PLUS_SIGNS
        run_text = run.group()
        if run_text.isdecimal():
            # The common case: one group, no separators.
            if in_long_hex_token(text, start, end):
                continue
            digits = _ascii(run_text)
            if _is_pan(digits) and not (phone and len(digits) <= _E164_MAX_DIGITS):
                matches.append(PanMatch(start, end, digits))
            continue
        matches.extend(_pans_in_run(text, start, end, phone))
    return matches


_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
#: A hex token this long is a digest (MD5 has 32 hex digits, SHA-256 64), never prose.
LONG_HEX_TOKEN = 32


def in_long_hex_token(text: str | bytes, start: int, end: int) -> bool:
    """Whether text[start:end] (digits) lies inside a hex token of LONG_HEX_TOKEN or more
    characters that has at least one letter: a digest, whatever the digits in it look like."""
    hex_chars: Any = _HEX_CHARS if isinstance(text, str) else _HEX_BYTES
    left = start
    while left > 0 and text[left - 1] in hex_chars:
        left -= 1
    right = end
    size = len(text)
    while right < size and text[right] in hex_chars:
        right += 1
    if right - left < LONG_HEX_TOKEN:
        return False
    token = text[left:right]
    return not (token.isdigit() if isinstance(token, bytes) else token.isdecimal())


_HEX_BYTES = frozenset(b"0123456789abcdefABCDEF")


#: A digit doubled by Luhn, digits summed: 7 -> 14 -> 5.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_sums(digits: str) -> tuple[int, int]:
    """Luhn sums of `digits` with its last digit (a) not doubled, (b) doubled."""
    undoubled = doubled = 0
    for ch in digits:
        d = ord(ch) - 48
        # Appending a digit flips the parity of every digit before it.
        undoubled, doubled = doubled + d, undoubled + _DOUBLED[d]
    return undoubled, doubled


def _pans_in_run(text: str, start: int, end: int, phone: bool) -> list[PanMatch]:
    # Each group once: its start, end, ASCII digits and Luhn sums, so that extending a
    # candidate window by a group is O(1) and a run costs at most 19 steps per group, even
    # for a body of single digits separated by spaces.
    groups = []
    for m in _GROUP.finditer(text, start, end):
        digits = _ascii(m.group())
        groups.append((m.start(), m.end(), digits, len(digits), *_luhn_sums(digits)))
    # dotted[k]: the separator between group k and group k + 1 is a dot.
    dotted = [text[g[1]] in _DOTS for g in groups[:-1]]
    windows: list[tuple[int, int]] = []
    for i in range(len(groups)):
        size = undoubled = doubled = 0
        dot_inside = False
        all_fours_before = True  # every group of the window but its last has four digits
        for j in range(i, len(groups)):
            _, _, _, g_size, g_undoubled, g_doubled = groups[j]
            if j > i:
                dot_inside = dot_inside or dotted[j - 1]
                all_fours_before = all_fours_before and groups[j - 1][3] == 4
            size += g_size
            if size > PAN_MAX_DIGITS:
                break
            if g_size % 2:
                undoubled, doubled = doubled + g_undoubled, undoubled + g_doubled
            else:
                undoubled, doubled = undoubled + g_undoubled, doubled + g_doubled
            if size < PAN_MIN_DIGITS or undoubled % 10:
                continue
            if dot_inside and not (all_fours_before and g_size <= 4):
                continue
            if phone and i == 0 and size <= _E164_MAX_DIGITS:
                continue
            windows.append((i, j))
    if not windows:
        return []
    # Windows come sorted by first group; merge those that share a group.
    merged: list[list[int]] = []
    for i, j in windows:
        if merged and i <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], j)
        else:
            merged.append([i, j])
    return [
        PanMatch(groups[i][0], groups[j][1], "".join(g[2] for g in groups[i : j + 1]))
        for i, j in merged
    ]


def _mask_counted(text: str) -> tuple[str, int]:
    matches = find_pans(text)
    if not matches:
        return text, 0
    parts: list[str] = []
    position = 0
    for m in matches:
        parts.append(text[position : m.start])
        parts.append(MASK_TEMPLATE.format(last4=m.last4))
        position = m.end
    parts.append(text[position:])
    return "".join(parts), len(matches)


def mask(text: str) -> str:
    """`text` with every PAN replaced by ``[card •••• <last four>]``.

    Text without a PAN is returned as is (the same object). The mask's brackets keep its four
    digits from joining neighbouring digits, so masking twice changes nothing.
    """
    return _mask_counted(text)[0]


# --- Brands ---------------------------------------------------------------------------------


def brand_of(digits: str) -> str:
    """The card brand from the issuer identification number (IIN), lowercase, or "unknown".

    Checked most specific first: visa 4; amex 34, 37; diners 300-305, 3095, 36, 38-39; jcb
    3528-3589; mastercard 51-55 and 2221-2720; mir 2200-2204; discover 6011, 644-649, 65;
    unionpay 62; maestro 50, 56-58 and the rest of 6.
    """
    try:
        digits = normalize_digits(digits)
    except ValueError:
        return "unknown"
    if len(digits) < 4:
        return "unknown"
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    brand = "unknown"
    if digits[0] == "4":
        brand = "visa"
    elif two in (34, 37):
        brand = "amex"
    elif 300 <= three <= 305 or four == 3095 or two in (36, 38, 39):
        brand = "diners"
    elif 3528 <= four <= 3589:
        brand = "jcb"
    elif 51 <= two <= 55 or 2221 <= four <= 2720:
        brand = "mastercard"
    elif 2200 <= four <= 2204:
        brand = "mir"
    elif four == 6011 or 644 <= three <= 649 or two == 65:
        brand = "discover"
    elif two == 62:
        brand = "unionpay"
    elif two == 50 or 56 <= two <= 58 or digits[0] == "6":
        brand = "maestro"
    return brand


# --- Keyed hashes ---------------------------------------------------------------------------


class CardKeyLike(Protocol):
    """One versioned key, as `app.config.CardKey` is (this package does not import app)."""

    @property
    def version(self) -> str: ...

    @property
    def secret(self) -> bytes: ...


class CardKeyError(RuntimeError):
    """No usable card key: card numbers cannot be hashed, and are never hashed without one."""


@dataclass(frozen=True, slots=True)
class PanHash:
    version: str
    digest_hex: str
    brand: str
    last4: str


class CardHasher:
    """HMAC-SHA256 of card numbers with versioned keys, newest first.

    The newest key hashes; every key still verifies what it hashed (`matches`). A hasher
    cannot exist without a key: a plain SHA-256 of a PAN is reversed by enumerating the
    at most a billion numbers behind a BIN (a hundred thousand once the last four are known),
    so there is no keyless fallback. The hasher refuses to be
    pickled, so its keys cannot slip into a task payload or a cache.
    """

    MIN_SECRET_BYTES = 32

    __slots__ = ("_keys", "_newest")

    def __init__(self, keys: Iterable[CardKeyLike]) -> None:
        ordered = tuple(keys)
        if not ordered:
            raise CardKeyError(
                "no card key is configured (CHATLEDGER_CARD_KEYS): refusing to hash card "
                "numbers, since a hash without a key can be reversed by enumeration"
            )
        table: dict[str, bytes] = {}
        for key in ordered:
            version, secret = key.version, key.secret
            if not isinstance(version, str) or not version:
                raise CardKeyError("a card key has no version")
            if not isinstance(secret, bytes) or len(secret) < self.MIN_SECRET_BYTES:
                raise CardKeyError(
                    f"card key {version} must be at least {self.MIN_SECRET_BYTES} bytes"
                )
            if version in table:
                raise CardKeyError(f"card key version {version} appears twice")
            table[version] = secret
        self._keys = table
        self._newest = ordered[0].version

    def __repr__(self) -> str:
        return f"CardHasher(versions={list(self._keys)!r})"

    def __reduce__(self) -> Any:
        raise TypeError("CardHasher holds secret keys and must not be serialized")

    @property
    def newest_version(self) -> str:
        return self._newest

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def hash_pan(self, pan_digits: str) -> PanHash:
        """The newest key's hash of a PAN given as digits (separators and any script allowed)."""
        digits = _pan_digits(pan_digits)
        return PanHash(
            version=self._newest,
            digest_hex=_hmac_hex(self._keys[self._newest], digits),
            brand=brand_of(digits),
            last4=digits[-4:],
        )

    # Rotation. A stored hash cannot be recomputed with a new key without the PAN, which is
    # never kept. `rekey` therefore wraps it: HMAC(newest, old digest), with the version
    # recorded as a chain, "v2<v1". A PAN seen later is hashed under every chain the
    # configured keys can form (`chained`), so it still finds the card it belongs to, and
    # a stolen old key alone no longer opens the stored hashes.

    def rekey(self, digest_hex: str, version: str) -> tuple[str, str]:
        """A stored hash wrapped with the newest key: (new digest, new version chain)."""
        if version.split("<", 1)[0] == self._newest:
            return digest_hex, version
        digest = hmac.new(self._keys[self._newest], bytes.fromhex(digest_hex), hashlib.sha256)
        return digest.hexdigest(), f"{self._newest}<{version}"

    def chained(self, pan_digits: str) -> list[tuple[str, str]]:
        """(version chain, digest) of this PAN under every chain the keys can form, newest
        first: "v3", "v3<v2", "v3<v1", "v3<v2<v1" for keys v3, v2, v1."""
        digits = _pan_digits(pan_digits)
        older = [v for v in self._keys if v != self._newest]
        results = []
        for size in range(len(older) + 1):
            for combo in itertools.combinations(older, size):
                # The innermost key hashes the digits; each newer one wraps the digest.
                chain = [self._newest, *combo]
                digest = bytes.fromhex(_hmac_hex(self._keys[chain[-1]], digits))
                for version in reversed(chain[:-1]):
                    digest = hmac.new(self._keys[version], digest, hashlib.sha256).digest()
                results.append(("<".join(chain), digest.hex()))
        return results

    def matches(self, pan_digits: str, stored: PanHash) -> bool:
        """Whether `stored` is this PAN's hash, checked with the key version it names.

        Raises CardKeyError when that version is no longer configured: answering False
        would silently unlink cards after a key was removed too early.
        """
        secret = self._keys.get(stored.version)
        if secret is None:
            raise CardKeyError(f"card key version {stored.version} is not configured")
        digits = _pan_digits(pan_digits)
        return hmac.compare_digest(_hmac_hex(secret, digits), stored.digest_hex)


def _pan_digits(pan: str) -> str:
    if not isinstance(pan, str):
        raise TypeError("a card number is given as a string of digits")
    digits = normalize_digits(pan)
    if not PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS:
        raise ValueError(f"a card number has {PAN_MIN_DIGITS} to {PAN_MAX_DIGITS} digits")
    return digits


def _hmac_hex(secret: bytes, digits: str) -> str:
    return hmac.new(secret, digits.encode("ascii"), hashlib.sha256).hexdigest()


# --- Field names ----------------------------------------------------------------------------

#: A field's position in a document: dict keys (after masking) and list indexes.
FieldPath = tuple[str | int, ...]

_TOKEN = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


@lru_cache(maxsize=4096)
def _tokens(name: str) -> tuple[str, ...]:
    """A field name as lowercase tokens: "cardSecurityCode" -> (card, security, code).

    camelCase, snake_case, kebab-case and spaces all split; so do letters from digits
    ("CVV2" -> (cvv, 2)).

    NFKC first, so full-width letters are read as ASCII ones.
    """
    return tuple(t.lower() for t in _TOKEN.findall(unicodedata.normalize("NFKC", name)))


# A secret field's name is one of these token sequences plus only neutral qualifiers: so
# "card_cvv", "cvv2", "cardSecurityCode", "PIN_BLOCK" and "track_2_data" are dropped, while
# "cvc_check" (Stripe's pass/fail result, which must survive), "pin_check", "cvv_result",
# "track_id" keep their value because "check", "result", "id" are not qualifiers. Whole tokens
# are compared, never substrings: "pinned", "spinner", "shipping", "opinion" are not "pin".
_SECRET_CONCEPTS: tuple[tuple[str, ...], ...] = (
    # Card verification codes, under every brand's name (CVC2, CVV2, CID, CSC, CVN, CVD, CAV2).
    ("cvc",),
    ("cvv",),
    ("icvv",),
    ("cvn",),
    ("cvd",),
    ("cav",),
    ("cid",),
    ("csc",),
    ("card", "verification"),
    ("security", "code"),
    ("card", "code"),  # Authorize.Net's name for the CVV
    # Magnetic stripe / track data.
    ("track", "1"),
    ("track", "2"),
    ("track", "3"),
    ("track", "data"),
    ("magstripe",),
    ("mag", "stripe"),
    ("magnetic", "stripe"),
    # PINs.
    ("pin",),
    ("pinblock",),
)
_QUALIFIERS = frozenset(
    {
        "card", "cards", "credit", "debit", "payment", "cc", "the", "number", "num", "no",
        "nr", "code", "value", "val", "data", "digits", "block", "raw", "full", "plain",
        "clear", "cleartext", "plaintext", "encrypted", "enc", "equivalent", "field", "string",
        "str", "1", "2", "3",
    }
)  # fmt: skip


@lru_cache(maxsize=4096)
def is_secret_field(name: str) -> bool:
    """Whether a field named `name` holds a card verification code, track data or a PIN."""
    tokens = _tokens(name)
    for concept in _SECRET_CONCEPTS:
        size = len(concept)
        for at in range(len(tokens) - size + 1):
            if tokens[at : at + size] == concept and all(
                t in _QUALIFIERS for t in tokens[:at] + tokens[at + size :]
            ):
                return True
    return False


#: Says whether the field at a path is a card-number field (its PAN is hashed, not masked).
CardFieldRule = Callable[[FieldPath], bool]


class _CardFields:
    __slots__ = ("_anywhere", "_under_card")

    def __init__(self, anywhere: Iterable[str], under_card: Iterable[str]) -> None:
        self._anywhere = frozenset("_".join(_tokens(n)) for n in anywhere)
        self._under_card = frozenset("_".join(_tokens(n)) for n in under_card)

    def __call__(self, path: FieldPath) -> bool:
        if not path or not isinstance(path[-1], str):
            return False
        name = "_".join(_tokens(path[-1]))
        if name in self._anywhere:
            return True
        if name not in self._under_card:
            return False
        parent = next((p for p in reversed(path[:-1]) if isinstance(p, str)), None)
        return parent is not None and not {"card", "cards"}.isdisjoint(_tokens(parent))

    def __repr__(self) -> str:
        anywhere, under_card = sorted(self._anywhere), sorted(self._under_card)
        return f"card_fields(anywhere={anywhere}, under_card={under_card})"


def card_fields(anywhere: Iterable[str] = (), under_card: Iterable[str] = ()) -> CardFieldRule:
    """A rule naming card-number fields; names compare by tokens ("cardNumber" = "card_number").

    `anywhere`: names that are a card number wherever they appear. `under_card`: names that
    are one only in an object whose nearest named parent says card ("card", "cards",
    "payment_card", "card_details"...): "number" there, but not an invoice's "number".
    """
    return _CardFields(anywhere, under_card)


DEFAULT_CARD_FIELDS: CardFieldRule = card_fields(
    anywhere=(
        "pan", "card", "card_pan", "pan_number", "card_number", "cardnumber", "card_no",
        "credit_card", "creditcard", "credit_card_number", "cc_number", "ccnumber", "cc_num",
        "primary_account_number",
    ),
    under_card=("number", "num", "no", "account_number", "acct_number", "acct_num"),
)  # fmt: skip


# --- Documents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScrubResult:
    #: A new document; the input is never modified.
    document: Any
    #: Every PAN seen: in text, keys, numbers and card fields. Non-zero means the sender
    #: sent card numbers and should be flagged.
    pans_found: int
    #: Card fields whose PAN became a keyed hash.
    pan_fields_hashed: int
    #: Paths of the fields removed ("data.card.cvv", "items[0].pin"): secret fields, and card
    #: fields whose PAN could not be hashed for want of a hasher. Never their values.
    dropped_fields: list[str]


def paths(*patterns: str) -> CardFieldRule:
    """A rule matching exact field paths: "sender.id", "entry.*.time" (`*` is any list index)."""
    compiled = [tuple(pattern.split(".")) for pattern in patterns]

    def matches(path: FieldPath) -> bool:
        return any(
            len(pattern) == len(path)
            and all(
                (p == "*" and isinstance(part, int)) or p == part
                for p, part in zip(pattern, path, strict=True)
            )
            for pattern in compiled
        )

    return matches


def _no_paths(path: FieldPath) -> bool:
    return False


#: What a source-assigned identifier may look like to be kept as it is: a whole number, or a
#: short run of ASCII letters, digits, '_', '-', ':' and '.', with no spaces.
_IDENTIFIER = re.compile(r"^[0-9A-Za-z_.:-]{1,64}$")


def _is_identifier(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 10**20
    return isinstance(value, str) and bool(_IDENTIFIER.match(value))


def scrub(
    document: Any,
    *,
    hasher: CardHasher | None,
    card_paths: CardFieldRule = DEFAULT_CARD_FIELDS,
    identifiers: CardFieldRule = _no_paths,
) -> ScrubResult:
    """A copy of a JSON-like document that holds no PAN, CVC, track data or PIN.

    - Every string value and every key has its PANs masked; a number that is itself a PAN
      (12-19 digits, Luhn-valid) becomes the masked string.
    - Secret fields (`is_secret_field`) are dropped, value and all.
    - A field `card_paths` names that holds exactly one PAN is removed from its object, which
      gets ``pan_hash``, ``pan_hash_version`` (when there is a hasher), ``brand`` and
      ``last4`` instead; a ``brand`` or ``last4`` the sender gave is kept. Without a hasher the
      field is dropped and only brand and last four remain. A card field holding anything
      else is scrubbed like any other value.

    - A field `identifiers` names (a path whose value the sender assigns by its own rules: a
      Messenger user id, a store's MID, a millisecond timestamp) keeps a value that has the
      shape of an identifier, even when its digits happen to pass the Luhn check: one such
      id in ten does, and masking it would break who the customer or the store is. Any
      other value there (text with spaces, a long run) is scrubbed like everything else.

    Containers (dict, list, tuple) are always copied; other values are returned as they are.
    Two keys that become equal once masked keep the later value (only keys holding PANs can).
    """
    walker = _Walker(hasher, card_paths, identifiers)
    result = walker.value(document, ())
    return ScrubResult(result, walker.pans_found, walker.pan_fields_hashed, walker.dropped)


class _Walker:
    __slots__ = (
        "card_paths",
        "dropped",
        "hasher",
        "identifiers",
        "pan_fields_hashed",
        "pans_found",
    )

    def __init__(
        self, hasher: CardHasher | None, card_paths: CardFieldRule, identifiers: CardFieldRule
    ) -> None:
        self.hasher = hasher
        self.card_paths = card_paths
        self.identifiers = identifiers
        self.pans_found = 0
        self.pan_fields_hashed = 0
        self.dropped: list[str] = []

    def value(self, value: Any, path: FieldPath) -> Any:
        if path and _is_identifier(value) and self.identifiers(path):
            return value
        if isinstance(value, str):
            masked, count = _mask_counted(value)
            self.pans_found += count
            return masked
        if isinstance(value, dict):
            return self.object(value, path)
        if isinstance(value, list | tuple):
            items = [self.value(item, (*path, index)) for index, item in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        pan = _number_pan(value)
        if pan is not None:
            self.pans_found += 1
            return MASK_TEMPLATE.format(last4=pan[-4:])
        return value

    def object(self, obj: dict[Any, Any], path: FieldPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        card: dict[str, Any] = {}
        for raw_key, item in obj.items():
            key = self.key(raw_key)
            child = (*path, key)
            if isinstance(raw_key, str) and is_secret_field(raw_key):
                self.dropped.append(_render(child))
                continue
            if self.card_paths(child):
                pan = _single_pan(item)
                if pan is not None:
                    self.pans_found += 1
                    card.update(self.card_fields(pan, child))
                    continue
            out[key] = self.value(item, child)
        if card:
            for name in ("brand", "last4"):
                out.setdefault(name, card.pop(name))
            out.update(card)
        return out

    def key(self, key: Any) -> Any:
        if isinstance(key, str):
            masked, count = _mask_counted(key)
            self.pans_found += count
            return masked
        pan = _number_pan(key)
        if pan is not None:
            self.pans_found += 1
            return MASK_TEMPLATE.format(last4=pan[-4:])
        return key

    def card_fields(self, pan: str, path: FieldPath) -> dict[str, Any]:
        if self.hasher is None:
            self.dropped.append(_render(path))
            return {"brand": brand_of(pan), "last4": pan[-4:]}
        hashed = self.hasher.hash_pan(pan)
        self.pan_fields_hashed += 1
        fields: dict[str, Any] = {
            "brand": hashed.brand,
            "last4": hashed.last4,
            "pan_hash": hashed.digest_hex,
            "pan_hash_version": hashed.version,
        }
        rotated = [
            {"version": chain, "hash": digest}
            for chain, digest in self.hasher.chained(pan)
            if chain != hashed.version
        ]
        if rotated:
            # The same card as hashes stored before a key rotation were re-keyed to.
            fields["pan_hash_rotated"] = rotated
        return fields


def _single_pan(value: Any) -> str | None:
    """The PAN a card field holds, if it holds exactly one (as text or as a number)."""
    if isinstance(value, str):
        matches = find_pans(value)
        if len(matches) == 1 and matches[0].is_single_pan:
            return matches[0].digits
        return None
    return _number_pan(value)


def _number_pan(value: Any) -> str | None:
    """The digits of a number that is itself a PAN: an integer of 12 to 19 digits, Luhn-valid.

    Integral floats and Decimals count too ("...0" in JSON); bools never do.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = abs(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        number = int(abs(value))
    elif isinstance(value, Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            return None
        number = int(abs(value))
    else:
        return None
    if not 10 ** (PAN_MIN_DIGITS - 1) <= number < 10**PAN_MAX_DIGITS:
        return None
    digits = str(number)
    return digits if luhn_valid(digits) else None


def _render(path: FieldPath) -> str:
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else str(part))
    return "".join(out)


# --- Logs -----------------------------------------------------------------------------------

_STANDARD_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))
) | {"message", "asctime", "taskName"}


def _mask_log_text(text: str) -> str:
    """Mask a log line, also where it is URL-encoded (a form body an HTTP client logs at
    DEBUG writes "4242+4242+..." or full-width digits as %EF%BC%94...): if the decoded line
    holds a card number, the decoded line is logged, masked."""
    masked = mask(text)
    if "%" in text or "+" in text:
        decoded = urllib.parse.unquote_plus(text)
        if decoded != text and find_pans(decoded):
            return mask(decoded)
    return masked


class PanLogFilter(logging.Filter):
    """Masks PANs in log records: the rendered message, exception text, stack and extras.

    The message is rendered (``record.getMessage()``), masked, and stored back in
    ``record.msg`` with ``record.args = ()``. The exception is rendered once into
    ``record.exc_text``, masked, and ``record.exc_info`` is cleared so no formatter renders
    the unmasked exception again. Attach it to handlers (the root logger's), not loggers:
    a logger's filters do not see records propagated from its children. Never drops a record.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: still log, masked, what was given
            message = f"{record.msg!s} {record.args!r}"
        record.msg = _mask_log_text(message)
        record.args = ()
        if isinstance(getattr(record, "message", None), str):
            record.message = record.msg
        if record.exc_info:
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text = mask(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for name, value in list(vars(record).items()):
            if name in _STANDARD_RECORD_FIELDS:
                continue
            if isinstance(value, str):
                setattr(record, name, mask(value))
            elif isinstance(value, dict | list | tuple):
                setattr(record, name, scrub(value, hasher=None).document)
        return True
