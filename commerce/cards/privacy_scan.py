"""`chatledger privacy scan`: card numbers and digests of test card numbers in raw bytes.

The scan is the safety net behind the scrubber (SPEC 4.3, issue 4 point 9): it reads what
the service left behind (database dumps, logs, Redis, any file) as bytes, whatever their
type, and reports every card number the scrubber's own detector (`find_pans`) recognises,
plus the plain MD5 / SHA-1 / SHA-256 digests of test card numbers it is given.

How bytes become text. The detector works on `str`, so each piece of bytes is read in
several ways ("views"), and a finding in any of them counts:

- latin-1: every byte is a character, so ASCII digits are found in any ASCII-compatible
  encoding, in binary junk and in invalid UTF-8 alike;
- UTF-8 (surrogateescape): full-width and other Unicode digits, and the Unicode spaces and
  dashes the detector accepts between digit groups (no-break space, en dash...);
- UTF-16 little- and big-endian, at both byte alignments, for ASCII and full-width digits
  (other scripts' digits are not looked for in UTF-16: it would make most binary data look
  like candidate text);
- JSON / Python escapes (``\\u00a0``, ``\\uff14``, any number of backslashes before the
  ``u``): `json.dumps` writes every non-ASCII character that way, and a full-width or
  no-break-space separated number would otherwise be invisible in a JSON log or dump;
- hex (24 digits or more, after an optional ``0x`` or ``\\x``) and standard base64 (24
  characters or more, a whole encoding: its length with the "=" after it a multiple of
  four) are decoded, and what they hold scanned with all of the above (one level deep): a
  Celery message body is base64 in Redis, a PostgreSQL bytea is hex in a dump. Tokens whose
  characters cannot carry twelve digits are not decoded (cheap C checks).

Speed. Each view first maps the bytes through a 256-entry translation table in C and looks
for "stretches" (maximal runs of bytes that can be part of a card number) with `bytes.find`;
Python only sees the rare stretches long enough to hold one. Large inputs are read in chunks
(`CHUNK_SIZE`) with `MARGIN` bytes of context on each side; a finding belongs to the chunk
its first byte is in, so a number split across two reads is found exactly once.

Nothing here prints or returns a card number: a `Finding` carries the brand and the last
four digits only, and `Scanner.label` masks what it finds in names (Redis keys, fields).
This module holds no card-number literal (the repository's hooks look for them).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import bz2
import gzip
import hashlib
import lzma
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from commerce.cards.scrub import (
    PAN_MAX_DIGITS,
    PAN_MIN_DIGITS,
    brand_of,
    find_pans,
    in_long_hex_token,
    mask,
    normalize_digits,
)

__all__ = [
    "CHUNK_SIZE",
    "DECOMPRESSION_ERRORS",
    "MARGIN",
    "ErrorSink",
    "Finding",
    "KnownCards",
    "Scanner",
    "iter_files",
    "scan_paths",
    "scan_postgres",
    "scan_redis",
]

#: Bytes of input scanned at a time (plus `MARGIN` of context on each side).
CHUNK_SIZE = 8 << 20
#: Context kept around each chunk. A stretch of digits and separators longer than this that
#: crosses a chunk boundary is the only thing whose reading can differ from a single pass.
MARGIN = 64 << 10

ErrorSink = Callable[[str], None]
#: What reading a file can raise: OSError, and a corrupt or truncated compressed file's errors.
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

# --- Findings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One card number, or one digest of a test card number, somewhere.

    `source` is display-safe (anything that looked like a card number in it is masked);
    `offset` is the byte offset of the finding's first byte in that source (for a file,
    in its decompressed content); `encoding` says how the bytes had to be read to see it
    ("" for plain ASCII, else e.g. "utf-8", "utf-16-le", "json-escape", "base64/utf-8").
    """

    source: str
    offset: int
    kind: str
    brand: str
    last4: str
    encoding: str = ""

    def __str__(self) -> str:
        where = f" [{self.encoding}]" if self.encoding else ""
        return f"{self.source}:{self.offset}: {self.kind} ({self.brand}, {self.last4}){where}"


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int
    end: int
    kind: str
    brand: str
    last4: str
    encoding: str = ""

    @property
    def pan_like(self) -> bool:
        return self.kind in ("pan", "test-pan")


#: Hits at the same offset: the detector's own reading first.
_KIND_ORDER = {"pan": 0, "test-pan": 1}

# --- Test card numbers ----------------------------------------------------------------------

_ALGORITHMS = ("md5", "sha1", "sha256")
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")


@dataclass(frozen=True, slots=True)
class _Needle:
    kind: str
    brand: str
    last4: str
    skip: int = 0  # characters of the token before the digest ("0x", "x")

    def hit(self, start: int, end: int) -> _Hit:
        return _Hit(start, end, self.kind, self.brand, self.last4)


class KnownCards:
    """Test card numbers whose digits and plain digests must appear nowhere.

    For each number: its digits, and the MD5, SHA-1 and SHA-256 of its ASCII digits as hex
    (lower or upper case, optionally after ``0x`` or a bytea's ``\\x``) and as base64 of the
    raw digest (standard or URL-safe alphabet, padded or not). Raises ValueError, without
    repeating the input, for anything that is not 12 to 19 digits (separators allowed). The
    Luhn check is not required: a test number is whatever the test used.
    """

    __slots__ = ("_digests", "_lengths", "_pans", "_plain")

    def __init__(self, pans: Iterable[str] = ()) -> None:
        self._pans: dict[bytes, _Needle] = {}
        #: Every written form of every digest, as a whole token -> what it is.
        self._digests: dict[bytes, _Needle] = {}
        #: The forms searched inside long tokens: lower-case hex and URL-safe base64.
        self._plain: list[tuple[bytes, bool, _Needle]] = []
        for index, pan in enumerate(pans, start=1):
            try:
                digits = normalize_digits(pan.strip())
            except ValueError:
                raise ValueError(f"test card number #{index} is not a card number") from None
            if not PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS:
                raise ValueError(
                    f"test card number #{index} has {len(digits)} digits, "
                    f"not {PAN_MIN_DIGITS} to {PAN_MAX_DIGITS}"
                )
            brand, last4 = brand_of(digits), digits[-4:]
            raw = digits.encode("ascii")
            self._pans[raw] = _Needle("test-pan", brand, last4)
            for algorithm in _ALGORITHMS:
                digest = hashlib.new(algorithm, raw).digest()
                hex_kind = _Needle(f"{algorithm}-hex", brand, last4)
                lower = digest.hex().encode("ascii")
                for form in (lower, lower.upper()):
                    self._digests[form] = hex_kind
                    for prefix in (b"0x", b"x", b"X"):
                        self._digests[prefix + form] = _Needle(
                            hex_kind.kind, brand, last4, len(prefix)
                        )
                b64_kind = _Needle(f"{algorithm}-base64", brand, last4)
                std = base64.b64encode(digest).rstrip(b"=")
                url = std.translate(_STD_TO_URL)
                self._digests[std] = self._digests[url] = b64_kind
                self._plain += [(lower, True, hex_kind), (url, False, b64_kind)]
        self._lengths = sorted({len(pan) for pan in self._pans})

    def __len__(self) -> int:
        return len(self._pans)

    def __bool__(self) -> bool:
        return bool(self._pans)

    def __repr__(self) -> str:
        return f"KnownCards({len(self._pans)} numbers)"

    def pans_in(self, digits: bytes) -> Iterator[tuple[int, int, _Needle]]:
        """(start, length, needle) of the known numbers in a string of ASCII digits."""
        size = len(digits)
        windows = {
            digits[i : i + length]
            for length in self._lengths
            if length <= size
            for i in range(size - length + 1)
        }
        for pan in windows & self._pans.keys():
            needle = self._pans[pan]
            at = digits.find(pan)
            while at != -1:
                yield at, len(pan), needle
                at = digits.find(pan, at + 1)

    @property
    def shortest_digest(self) -> int:
        """The length of the shortest written form of a digest (22: MD5 in base64)."""
        return min(map(len, self._digests), default=0)

    def digest_token(self, token: bytes) -> _Needle | None:
        """What a whole token is, if it is a written form of a digest."""
        return self._digests.get(token)

    def digests_inside(self, token: bytes) -> Iterator[tuple[int, int, _Needle]]:
        """(start, end, needle) of digests anywhere in a (long) token."""
        lowered = token.lower()
        urlsafe = token.translate(_STD_TO_URL)
        for form, is_hex, needle in self._plain:
            text = lowered if is_hex else urlsafe
            at = text.find(form)
            while at != -1:
                yield at, at + len(form), needle
                at = text.find(form, at + 1)


# --- Byte tables ----------------------------------------------------------------------------

_ASCII_DIGITS = b"0123456789"
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_BASE64_STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_D = b"d"
_BLANK = b" "
#: Shortest base64 or hex token decoded: hex of twelve bytes; base64 of eighteen (shorter
#: base64 tokens are mostly identifiers: a chatledger id has 22 characters).
_MIN_HEX_TOKEN = 2 * PAN_MIN_DIGITS
_MIN_BASE64_TOKEN = 24
#: Tokens longer than this are searched for digests anywhere inside, not only as a whole.
_LONG_TOKEN = 128
#: Written between decoded tokens scanned together: a boundary in every view.
_JOIN = b"\n" * 4


@cache
def _separators() -> frozenset[str]:
    """The characters the detector accepts between digit groups, asked of `normalize_digits`
    itself so the two never disagree (the detector's separators are all in the BMP)."""
    found = set()
    for code in range(0x10000):
        char = chr(code)
        if char.isdecimal():
            continue
        try:
            normalize_digits(f"1{char}1")
        except ValueError:
            continue
        found.add(char)
    return frozenset(found)


def _table(members: Iterable[int]) -> bytes:
    """A bytes.translate table: `members` -> "d", every other byte -> " "."""
    chosen = set(members)
    return bytes(_D[0] if b in chosen else _BLANK[0] for b in range(256))


def _delete_all_but(members: Iterable[int]) -> bytes:
    """The `delete` argument of bytes.translate that keeps only `members`."""
    chosen = set(members)
    return bytes(b for b in range(256) if b not in chosen)


def _base64_chars_of(byte: int) -> set[int]:
    """The base64 characters that can carry `byte`: whatever its place in a 3-byte group,
    one character of the encoding is determined by it (alone or with two bits before)."""
    chars = {base64.b64encode(bytes([byte, 0, 0]))[0], base64.b64encode(bytes([0, 0, byte]))[3]}
    chars.update(base64.b64encode(bytes([before, byte, 0]))[1] for before in range(256))
    return chars


@dataclass(frozen=True)
class _Tables:
    latin1: bytes  # ASCII digits and latin-1 separators -> "d"
    latin1_separators: bytes  # the separators in latin-1
    utf8: bytes  # ASCII digits and separators, every byte >= 0x80 -> "d"
    utf16: bytes  # bytes of UTF-16 ASCII/full-width digits and of separators -> "d"
    escape: bytes  # what escapes, digits and separators are written with -> "d"
    base64: bytes  # the standard base64 alphabet (hex included) -> "d"
    token_run: bytes  # both base64 alphabets -> "d"
    not_digit: bytes  # delete: all but ASCII digits
    not_utf16_digit: bytes  # delete: all but low bytes of ASCII / full-width digits
    not_digit_carrier: bytes  # delete: all but base64 characters that can carry a digit
    not_fullwidth_carrier: bytes  # delete: all but those that can carry 0xBC (full-width)
    nonascii_numeric: re.Pattern[bytes]  # UTF-8 of a non-ASCII digit or separator
    digit_escape: re.Pattern[bytes]  # a \\uXXXX escape of a decimal digit


@cache
def _tables() -> _Tables:
    separators = _separators()
    latin1_seps = [ord(c) for c in separators if ord(c) < 256]
    ascii_seps = [b for b in latin1_seps if b < 128]
    digits = list(_ASCII_DIGITS)
    fullwidth_low = list(range(0x10, 0x1A))  # U+FF10..FF19 are (low, 0xFF) in UTF-16-LE
    utf16 = set(digits) | set(fullwidth_low) | {0x00, 0xFF}
    for char in separators:
        utf16.update(char.encode("utf-16-le"))
    # Non-ASCII digits and separators in UTF-8, grouped by all but their last byte.
    numeric = [chr(c) for c in range(0x80, 0x110000) if chr(c).isdecimal()]
    numeric += [c for c in separators if ord(c) >= 0x80]
    groups: dict[bytes, set[int]] = {}
    for char in numeric:
        encoded = char.encode("utf-8")
        groups.setdefault(encoded[:-1], set()).add(encoded[-1])
    alternatives = [
        re.escape(prefix) + b"[" + b"".join(re.escape(bytes([b])) for b in sorted(last)) + b"]"
        for prefix, last in sorted(groups.items())
    ]
    # \uXXXX escapes of BMP decimal digits, grouped by their first three hex digits.
    escaped: dict[str, set[str]] = {}
    for code in range(0x10000):
        if chr(code).isdecimal():
            text = f"{code:04x}"
            escaped.setdefault(text[:3], set()).add(text[3])
    digit_escape = b"|".join(
        f"{head}[{''.join(sorted(tails))}]".encode("ascii")
        for head, tails in sorted(escaped.items())
    )
    carriers: set[int] = set()
    for digit in digits:
        carriers |= _base64_chars_of(digit)
    return _Tables(
        latin1=_table(digits + latin1_seps),
        latin1_separators=bytes(sorted(latin1_seps)),
        utf8=_table(digits + ascii_seps + list(range(0x80, 0x100))),
        utf16=_table(utf16),
        escape=_table(list(_HEX_DIGITS) + list(b"\\uU") + ascii_seps),
        base64=_table(_BASE64_STD),
        token_run=_table(_BASE64_STD + b"-_"),
        not_digit=_delete_all_but(digits),
        not_utf16_digit=_delete_all_but(digits + fullwidth_low),
        not_digit_carrier=_delete_all_but(carriers),
        not_fullwidth_carrier=_delete_all_but(_base64_chars_of(0xBC)),
        nonascii_numeric=re.compile(b"|".join(alternatives)),
        digit_escape=re.compile(rb"(?i)\\+u(?:" + digit_escape + rb")"),
    )


def _stretches(translated: bytes, minimum: int) -> Iterator[tuple[int, int]]:
    """Maximal runs of "d" at least `minimum` long in a translated window, left to right."""
    needle = _D * minimum
    size = len(translated)
    at = translated.find(needle)
    while at != -1:
        end = translated.find(_BLANK, at)
        if end == -1:
            end = size
        yield at, end
        at = translated.find(needle, end)


_ESCAPE_MARKER = re.compile(rb"\\[uU][0-9A-Fa-f]{4}")
_ESCAPE_BYTES = re.compile(rb"\\+u[0-9A-Fa-f]{4}|\\+U[0-9A-Fa-f]{8}")
_ESCAPE = re.compile(r"\\+u([0-9A-Fa-f]{4})|\\+U([0-9A-Fa-f]{8})")


def _unescape_fast(text: str) -> str:
    """`text` with its \\uXXXX / \\UXXXXXXXX escapes decoded (pairs of surrogates joined)."""

    def char(m: re.Match[str]) -> str:
        code = int(m.group(1) or m.group(2), 16)
        return chr(code) if code <= 0x10FFFF else m.group()

    decoded = _ESCAPE.sub(char, text)
    return decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _unescape(text: str) -> tuple[str, list[int]]:
    """`_unescape_fast` with, for each character, its offset in `text` (plus one past the end).

    Only called when the fast version shows a card number, to place it.
    """
    chars: list[str] = []
    offsets: list[int] = []
    position = 0
    high = False  # the last character came from an escape of a high surrogate
    for m in _ESCAPE.finditer(text):
        if m.start() > position:
            chars.extend(text[position : m.start()])
            offsets.extend(range(position, m.start()))
            high = False
        code = int(m.group(1) or m.group(2), 16)
        if high and 0xDC00 <= code <= 0xDFFF:  # the pair is one character, where it starts
            chars[-1] = chr(0x10000 + ((ord(chars[-1]) - 0xD800) << 10) + (code - 0xDC00))
            high = False
        elif code <= 0x10FFFF:
            chars.append(chr(code))
            offsets.append(m.start())
            high = 0xD800 <= code <= 0xDBFF
        else:
            chars.extend(m.group())
            offsets.extend(range(m.start(), m.end()))
            high = False
        position = m.end()
    chars.extend(text[position:])
    offsets.extend(range(position, len(text) + 1))
    return "".join(chars), offsets


def _worth_scanning(decoded: bytes) -> bool:
    """Decoded bytes that can hold a card number: twelve ASCII digits (plain, in UTF-16 or in
    \\u escapes), or twelve full-width digits in UTF-8."""
    return (
        len(decoded.translate(None, _tables().not_digit)) >= PAN_MIN_DIGITS
        or decoded.count(b"\xef\xbc") >= PAN_MIN_DIGITS
    )


def _decode_hex(run: bytes) -> bytes | None:
    """A run of hex digits (after an optional 0x / x) decoded, when it can hold twelve ASCII
    digits: each is written "3" and a digit."""
    if run[:2] in (b"0x", b"0X"):
        run = run[2:]
    elif run[:1] in (b"x", b"X"):  # a PostgreSQL bytea, \x<hex>
        run = run[1:]
    if len(run) < _MIN_HEX_TOKEN or run.translate(None, _HEX_DIGITS):
        return None
    if run.count(b"3") < PAN_MIN_DIGITS:
        return None
    return bytes.fromhex(run[: len(run) // 2 * 2].decode("ascii"))


def _decode_base64(run: bytes, padding: int) -> bytes | None:
    """A run of standard base64 decoded, when it is a whole encoding (its length with the
    "=" after it a multiple of four) and enough of its characters can carry digits."""
    tables = _tables()
    if (len(run) + padding) % 4:
        return None
    if (
        len(run.translate(None, tables.not_digit_carrier)) < PAN_MIN_DIGITS
        and len(run.translate(None, tables.not_fullwidth_carrier)) < PAN_MIN_DIGITS
    ):
        return None
    try:
        return binascii.a2b_base64(run + b"=" * padding)
    except binascii.Error:
        return None


# --- The scanner ----------------------------------------------------------------------------


class Scanner:
    """Finds card numbers, and the digests of `known` test numbers, in bytes.

    Counts what it read in `bytes_scanned` and `sources`. Not thread-safe (the counters).
    """

    def __init__(
        self,
        known: KnownCards | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        margin: int = MARGIN,
        decode_depth: int = 1,
    ) -> None:
        if chunk_size < 1 or margin < 64:
            raise ValueError("chunk_size must be positive and margin at least 64 bytes")
        self.known = known or KnownCards()
        self.chunk_size = chunk_size
        self.margin = margin
        self.decode_depth = decode_depth
        self.bytes_scanned = 0
        self.sources = 0
        self._tables = _tables()

    # -- public entry points -------------------------------------------------------------

    def scan_bytes(self, data: bytes | bytearray | memoryview, source: str) -> list[Finding]:
        return list(self.scan_stream((data,), source))

    def scan_stream(
        self, chunks: Iterable[bytes | bytearray | memoryview], source: str
    ) -> Iterator[Finding]:
        """Findings in the concatenation of `chunks` (pieces of any size), in offset order."""
        self.sources += 1
        for hit in self._stream_hits(chunks):
            yield Finding(source, hit.start, hit.kind, hit.brand, hit.last4, hit.encoding)

    def scan_file(
        self, path: str | os.PathLike[str], source: str | None = None
    ) -> Iterator[Finding]:
        """Findings in a file; gzip, bzip2 and xz files are scanned decompressed.

        Raises OSError, and EOFError, zlib.error or lzma.LZMAError for a corrupt compressed
        file (`DECOMPRESSION_ERRORS`).
        """
        label = source if source is not None else self.label(os.fsencode(path))
        with open(path, "rb") as raw, _decompressing(raw) as handle:
            yield from self.scan_stream(_read_pieces(handle, self.chunk_size), label)

    def label(self, raw: bytes | str) -> str:
        """A printable name for `raw` (a path, a Redis key or field) with card numbers and
        digests masked, control characters escaped, at most 120 characters."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        hits = sorted(self._window_hits(raw, 0, len(raw), 0), key=lambda h: h.start)
        parts: list[str] = []
        position = 0
        for hit in hits:
            if hit.start >= position:
                parts.append(raw[position : hit.start].decode("utf-8", "backslashreplace"))
                parts.append(f"[{hit.kind} {hit.last4}]")
            position = max(position, hit.end)
        parts.append(raw[position:].decode("utf-8", "backslashreplace"))
        text = mask("".join(parts))
        text = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text
        )
        return text if len(text) <= 120 else text[:119] + "…"

    # -- chunks --------------------------------------------------------------------------

    def _stream_hits(self, chunks: Iterable[bytes | bytearray | memoryview]) -> Iterator[_Hit]:
        covered = 0  # end of the last card number reported: the views overlap
        for window, window_start, lo, hi in self._windows(chunks):
            hits = self._window_hits(window, lo, hi, 0)
            for hit in _ordered(hits, window_start):
                if hit.pan_like:
                    if hit.start < covered:
                        continue
                    covered = hit.end
                yield hit

    def _windows(
        self, chunks: Iterable[bytes | bytearray | memoryview]
    ) -> Iterator[tuple[bytes, int, int, int]]:
        """(window, its absolute offset, lo, hi): window[lo:hi] is the chunk's own bytes, the
        rest up to `margin` bytes of context on each side."""
        chunk, margin = self.chunk_size, self.margin
        pending = bytearray()
        base = 0  # absolute offset of pending[0]
        core = 0  # absolute offset of the next chunk's first byte
        for piece in chunks:
            pending += piece
            self.bytes_scanned += len(piece)
            while len(pending) - (core - base) >= chunk + margin:
                start = max(base, core - margin)
                window = bytes(pending[start - base : core + chunk + margin - base])
                yield window, start, core - start, core - start + chunk
                core += chunk
                drop = core - margin - base
                if drop > 0:
                    del pending[:drop]
                    base += drop
        start = max(base, core - margin)
        window = bytes(pending[start - base :])
        yield window, start, core - start, len(window)

    # -- one window ----------------------------------------------------------------------

    def _window_hits(self, window: bytes, lo: int, hi: int, depth: int) -> list[_Hit]:
        """Hits starting in window[lo:hi]; the rest of the window is context."""
        hits: list[_Hit] = []
        if hi <= lo:
            return hits
        self._latin1(window, lo, hi, hits)
        if not window.isascii():
            self._utf8(window, lo, hi, hits)
        if b"\x00" in window:
            self._utf16(window, lo, hi, hits)
        if b"\\u" in window or b"\\U" in window:
            self._escapes(window, lo, hi, hits)
        if self.known:
            self._digests(window, lo, hi, hits)
        if depth < self.decode_depth:
            self._decoded(window, lo, hi, hits, depth)
        return hits

    @staticmethod
    def _pans(
        text: str,
        offset_of: Callable[[int], int],
        lo: int,
        hi: int,
        encoding: str,
        hits: list[_Hit],
    ) -> None:
        for m in find_pans(text):
            start = offset_of(m.start)
            if lo <= start < hi:
                end = offset_of(m.end)
                hits.append(_Hit(start, end, "pan", brand_of(m.digits), m.last4, encoding))

    def _latin1(self, window: bytes, lo: int, hi: int, hits: list[_Hit]) -> None:
        tables = self._tables
        translated = window.translate(tables.latin1)
        needle = _D * PAN_MIN_DIGITS
        size = len(window)
        start = translated.find(needle)
        while start != -1 and start < hi:
            end = translated.find(_BLANK, start)
            if end == -1:
                end = size
            if end > lo:
                stretch = window[start:end]
                group = stretch.strip(tables.latin1_separators)
                if group.isdigit():  # one group: the common case (ids, timestamps)
                    digits = group
                    # Digits between the letters of a digest are not a card (scrub.find_pans).
                    possible = _could_be_pan(group) and not in_long_hex_token(window, start, end)
                else:
                    digits = stretch.translate(None, tables.not_digit)
                    possible = len(digits) >= PAN_MIN_DIGITS
                if possible:
                    before = start - 1 if start else 0  # the detector looks at the one before
                    # ... and at the three after: a date-time's ":MM" tells it the digits
                    # before are a clock, not a card (scrub.find_pans).
                    text = window[before : end + 3].decode("latin-1")
                    self._pans(text, lambda i, b=before: b + i, lo, hi, "", hits)
                if self.known and len(digits) >= PAN_MIN_DIGITS:
                    self._known_pans(window, start, end, digits, lo, hi, hits)
            start = translated.find(needle, end)

    def _known_pans(
        self,
        window: bytes,
        start: int,
        end: int,
        digits: bytes,
        lo: int,
        hi: int,
        hits: list[_Hit],
    ) -> None:
        """Test numbers in a stretch written any way, even glued to other digits (which the
        detector reads as a longer identifier, on purpose)."""
        found = list(self.known.pans_in(digits))
        if not found:
            return
        positions = [start + i for i, byte in enumerate(window[start:end]) if 48 <= byte <= 57]
        for at, length, needle in found:
            first, last = positions[at], positions[at + length - 1]
            if lo <= first < hi:
                hits.append(needle.hit(first, last + 1))

    def _utf8(self, window: bytes, lo: int, hi: int, hits: list[_Hit]) -> None:
        tables = self._tables
        for start, end in _stretches(window.translate(tables.utf8), PAN_MIN_DIGITS):
            if start >= hi:
                break
            if end <= lo or not tables.nonascii_numeric.search(window, start, end):
                continue
            before = start - 1 if start else 0
            text = window[before : end + 3].decode("utf-8", "surrogateescape")  # as _latin1
            self._pans(text, _utf8_offsets(text, before), lo, hi, "utf-8", hits)

    def _utf16(self, window: bytes, lo: int, hi: int, hits: list[_Hit]) -> None:
        tables = self._tables
        for start, end in _stretches(window.translate(tables.utf16), 2 * PAN_MIN_DIGITS):
            if start >= hi:
                break
            if end <= lo:
                continue
            if len(window[start:end].translate(None, tables.not_utf16_digit)) < PAN_MIN_DIGITS:
                continue
            before = max(start - 2, 0)
            found: list[_Hit] = []
            for codec in ("utf-16-le", "utf-16-be"):
                for shift in (0, 1):
                    first = before + shift
                    stop = min(end + 6, len(window))  # three characters more, as _latin1
                    segment = window[first : first + (stop - first) // 2 * 2]
                    if len(segment) < 2 * PAN_MIN_DIGITS:
                        continue
                    text = segment.decode(codec, "surrogatepass")
                    self._pans(text, _utf16_offsets(text, first, codec), lo, hi, codec, found)
            # ASCII in UTF-16 reads the same little-endian and, one byte later, big-endian:
            # without a byte order mark either is possible; report it once, little-endian.
            little = [h for h in found if h.encoding == "utf-16-le"]
            hits.extend(little)
            hits.extend(
                h
                for h in found
                if h.encoding == "utf-16-be"
                and not any(h.start < o.end and o.start < h.end for o in little)
            )

    def _escapes(self, window: bytes, lo: int, hi: int, hits: list[_Hit]) -> None:
        translated = window.translate(self._tables.escape)
        done = 0
        for marker in _ESCAPE_MARKER.finditer(window):
            at = marker.start()
            if at < done:
                continue
            start = translated.rfind(_BLANK, 0, at) + 1
            end = translated.find(_BLANK, at)
            done = end = len(window) if end == -1 else end
            if end <= lo or start >= hi or end - start < PAN_MIN_DIGITS:
                continue
            stretch = window[start:end]
            literal = _ESCAPE_BYTES.sub(b"", stretch).translate(None, self._tables.not_digit)
            if len(literal) + len(self._tables.digit_escape.findall(stretch)) < PAN_MIN_DIGITS:
                continue
            before = start - 1 if start else 0
            raw = window[before:end].decode("latin-1")
            if not find_pans(_unescape_fast(raw)):
                continue
            text, offsets = _unescape(raw)
            self._pans(text, lambda i, o=offsets, b=before: b + o[i], lo, hi, "json-escape", hits)

    def _digests(self, window: bytes, lo: int, hi: int, hits: list[_Hit]) -> None:
        """Digests of the known numbers: a whole token of the base64 / hex alphabet, or
        anywhere inside a token longer than `_LONG_TOKEN` characters."""
        known = self.known
        runs = window.translate(self._tables.token_run)
        for start, end in _stretches(runs, known.shortest_digest):
            if start >= hi:
                break
            if end - start > _LONG_TOKEN:
                for first, last, needle in known.digests_inside(window[start:end]):
                    if lo <= start + first < hi:
                        hits.append(needle.hit(start + first, start + last))
                continue
            needle = known.digest_token(window[start:end])
            if needle is not None and lo <= start + needle.skip < hi:
                hits.append(_Hit(start + needle.skip, end, needle.kind, needle.brand, needle.last4))

    def _decoded(self, window: bytes, lo: int, hi: int, hits: list[_Hit], depth: int) -> None:
        """Hex and base64 tokens decoded, and what they hold scanned (as one blob)."""
        pieces: list[bytes] = []
        origins: list[tuple[int, int, str]] = []  # (token start, token end, how)
        for start, end in _stretches(window.translate(self._tables.base64), _MIN_HEX_TOKEN):
            if start >= hi:
                break
            if start < lo:
                continue
            run = window[start:end]
            decoded, how = _decode_hex(run), "hex"
            if decoded is None and len(run) >= _MIN_BASE64_TOKEN:
                padding = len(window[end : end + 2]) - len(window[end : end + 2].lstrip(b"="))
                decoded, how = _decode_base64(run, padding), "base64"
            if decoded is not None and _worth_scanning(decoded):
                pieces.append(decoded)
                origins.append((start, end, how))
        if not pieces:
            return
        blob = _JOIN.join(pieces)
        starts = []
        position = 0
        for piece in pieces:
            starts.append(position)
            position += len(piece) + len(_JOIN)
        for hit in self._window_hits(blob, 0, len(blob), depth + 1):
            token_start, token_end, how = origins[bisect.bisect_right(starts, hit.start) - 1]
            encoding = f"{how}/{hit.encoding}" if hit.encoding else how
            hits.append(_Hit(token_start, token_end, hit.kind, hit.brand, hit.last4, encoding))


#: Luhn's doubled digits, as ASCII digits: "7" -> 14 -> 1 + 4 -> "5".
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def _could_be_pan(digits: bytes) -> bool:
    """False when a lone run of ASCII digits cannot be a card number for `find_pans`: its
    length is out of range or it fails the Luhn check. Only rules numbers out (anything it
    lets through still goes to the detector), at C speed: most long numbers are identifiers
    and timestamps, and nine in ten fail the check."""
    size = len(digits)
    if not PAN_MIN_DIGITS <= size <= PAN_MAX_DIGITS:
        return False
    backwards = digits[::-1]
    total = sum(backwards[0::2]) + sum(backwards[1::2].translate(_LUHN_DOUBLED)) - 48 * size
    return total % 10 == 0


def _ordered(hits: list[_Hit], shift: int) -> Iterator[_Hit]:
    """`hits` by offset, moved by `shift`; a digest found twice at one place once."""
    hits.sort(key=lambda h: (h.start, _KIND_ORDER.get(h.kind, 2), h.encoding, h.kind))
    seen: set[tuple[int, str]] = set()
    for hit in hits:
        if not hit.pan_like:
            if (hit.start, hit.kind) in seen:
                continue
            seen.add((hit.start, hit.kind))
        yield _Hit(hit.start + shift, hit.end + shift, hit.kind, hit.brand, hit.last4, hit.encoding)


def _utf8_offsets(text: str, base: int) -> Callable[[int], int]:
    if text.isascii():
        return lambda index: base + index

    def offset(index: int) -> int:
        return base + len(text[:index].encode("utf-8", "surrogateescape"))

    return offset


def _utf16_offsets(text: str, base: int, codec: str) -> Callable[[int], int]:
    if not any(ord(ch) > 0xFFFF for ch in text):
        return lambda index: base + 2 * index

    def offset(index: int) -> int:
        return base + len(text[:index].encode(codec, "surrogatepass"))

    return offset


# --- Files ----------------------------------------------------------------------------------


def _decompressing(raw: BinaryIO) -> BinaryIO:
    """`raw`, or what it decompresses to when it starts like a gzip, bzip2 or xz file (the
    caller's `with` on `raw` closes both)."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return raw


def _read_pieces(handle: BinaryIO, size: int) -> Iterator[bytes]:
    while piece := handle.read(size):
        yield piece


def iter_files(paths: Iterable[str | os.PathLike[str]], on_error: ErrorSink) -> Iterator[Path]:
    """Regular files among `paths`, directories walked recursively (symbolic links to
    directories are not followed; FIFOs, sockets and devices are skipped)."""
    for given in paths:
        path = Path(given)
        try:
            info = path.stat()
        except OSError as exc:
            on_error(f"{_safe_path(path)}: {exc.strerror or exc}")
            continue
        if stat.S_ISREG(info.st_mode):
            yield path
        elif stat.S_ISDIR(info.st_mode):
            yield from _walk(path, on_error)
        else:
            on_error(f"{_safe_path(path)}: not a regular file or a directory")


def _walk(root: Path, on_error: ErrorSink) -> Iterator[Path]:
    def report(exc: OSError) -> None:
        name = exc.filename if exc.filename is not None else root
        on_error(f"{_safe_path(Path(name))}: {exc.strerror or exc}")

    for directory, dirnames, filenames in os.walk(root, onerror=report):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory, name)
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                report(exc)
                continue
            if stat.S_ISREG(mode):
                yield path


@cache
def _path_scanner() -> Scanner:
    return Scanner()


def _safe_path(path: Path) -> str:
    return _path_scanner().label(os.fsencode(path))


def scan_paths(
    scanner: Scanner, paths: Iterable[str | os.PathLike[str]], on_error: ErrorSink
) -> Iterator[Finding]:
    """Findings in every file under `paths`; unreadable ones are reported to `on_error`."""
    for path in iter_files(paths, on_error):
        label = scanner.label(os.fsencode(path))
        try:
            yield from scanner.scan_file(path, label)
        except DECOMPRESSION_ERRORS as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            on_error(f"{label}: {reason}")


# --- Redis ----------------------------------------------------------------------------------


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("ascii", "backslashreplace")


def scan_redis(
    scanner: Scanner,
    client: Any,
    on_error: ErrorSink,
    *,
    page: int = 1000,
    prefix: str | None = None,
) -> Iterator[Finding]:
    """Findings in every key of the client's Redis database: the key names, and the values
    of strings, lists, hashes (fields and values), sets, sorted sets (members; not scores) and
    streams (field names and values; entry ids are Redis timestamps and are not scanned).
    Any other type (a module's) is scanned as its DUMP serialisation.

    `client` is a redis-py client; `decode_responses=False` is best (binary values are read
    as they are). Sources read ``redis:<db>/<key>`` with a suffix naming the element.
    """
    db = client.connection_pool.connection_kwargs.get("db", 0)
    root = prefix if prefix is not None else f"redis:{db}"
    for raw_key in client.scan_iter(count=page):
        key = _raw(raw_key)
        name = f"{root}/{scanner.label(key)}"
        yield from scanner.scan_bytes(key, f"{name} (key name)")
        try:
            kind = _raw(client.type(raw_key)).decode("ascii", "replace")
            yield from _redis_value(scanner, client, raw_key, kind, name, page)
        except Exception as exc:  # a key that vanished or changed type mid-scan, a module error
            on_error(f"{name}: {type(exc).__name__}: {exc}")


def _redis_value(
    scanner: Scanner, client: Any, key: Any, kind: str, name: str, page: int
) -> Iterator[Finding]:
    if kind == "none":  # expired or deleted since SCAN returned it
        return
    if kind == "string":
        yield from scanner.scan_stream(_redis_string(client, key, scanner.chunk_size), name)
    elif kind == "list":
        index = 0
        while items := client.lrange(key, index, index + page - 1):
            for offset, item in enumerate(items, start=index):
                yield from scanner.scan_bytes(_raw(item), f"{name}[{offset}]")
            index += len(items)
    elif kind == "hash":
        for field, value in client.hscan_iter(key, count=page):
            label = scanner.label(_raw(field))
            yield from scanner.scan_bytes(_raw(field), f"{name}{{{label}}} (field name)")
            yield from scanner.scan_bytes(_raw(value), f"{name}{{{label}}}")
    elif kind == "set":
        for member in client.sscan_iter(key, count=page):
            yield from scanner.scan_bytes(_raw(member), f"{name} (set member)")
    elif kind == "zset":
        # Scores are not read: they are doubles that the broker fills with its own clock
        # (kombu keeps millisecond deadlines there, and one 13-digit time in ten passes the
        # Luhn check); nothing of chatledger's is ever written into a score.
        for member, _score in client.zscan_iter(key, count=page, score_cast_func=_raw):
            yield from scanner.scan_bytes(_raw(member), f"{name} (zset member)")
    elif kind == "stream":
        low = "-"
        while entries := client.xrange(key, min=low, max="+", count=page):
            for entry_id, fields in entries:
                entry = _raw(entry_id).decode("ascii", "replace")
                for field, value in fields.items():
                    label = scanner.label(_raw(field))
                    yield from scanner.scan_bytes(_raw(field), f"{name}<{entry}> (field name)")
                    yield from scanner.scan_bytes(_raw(value), f"{name}<{entry}>{{{label}}}")
            low = "(" + _raw(entries[-1][0]).decode("ascii")
    else:
        dumped = client.dump(key)
        if dumped is not None:
            yield from scanner.scan_bytes(_raw(dumped), f"{name} (dump of {kind})")


def _redis_string(client: Any, key: Any, size: int) -> Iterator[bytes]:
    length = client.strlen(key)
    start = 0
    while start < length:
        piece = _raw(client.getrange(key, start, start + size - 1))
        if not piece:
            return
        yield piece
        start += len(piece)


# --- PostgreSQL -----------------------------------------------------------------------------

_TABLES_QUERY = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 1, 2
"""


def scan_postgres(
    scanner: Scanner, connection: Any, on_error: ErrorSink, *, prefix: str = "postgres"
) -> Iterator[Finding]:
    """Findings in every row of every table and materialized view the connection can read,
    streamed with ``COPY (SELECT * FROM t) TO STDOUT`` (text format: numbers as digits,
    bytea as hex, which the scanner decodes). Sources read ``postgres:<schema>.<table>`` and
    offsets are byte offsets in that table's COPY output.

    `connection` is a psycopg 3 connection in autocommit mode, so that one unreadable table
    (no privilege, an unpopulated materialized view) does not abort the others.
    """
    from psycopg import sql

    tables = connection.execute(_TABLES_QUERY).fetchall()
    for schema, table in tables:
        name = f"{prefix}:{scanner.label(schema)}.{scanner.label(table)}"
        query = sql.SQL("COPY (SELECT * FROM {}.{}) TO STDOUT").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        try:
            with connection.cursor() as cursor, cursor.copy(query) as copy:
                yield from scanner.scan_stream((bytes(piece) for piece in copy), name)
        except Exception as exc:  # psycopg.Error: report the table and go on
            on_error(f"{name}: {type(exc).__name__}: {str(exc).strip()}")
