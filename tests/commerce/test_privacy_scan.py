"""`chatledger privacy scan` (issue 4, point 9): card numbers and test-number digests in bytes.

The scanning logic is tested on bytes and files; the command through click's CliRunner on the
`privacy` group; Redis and PostgreSQL against the machine's servers (a throwaway database and
keys of our own, removed afterwards; skipped when the server cannot be reached).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import json
import os
import random
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner, Result

from app.privacy_cli import privacy
from commerce.cards import normalize_digits
from commerce.cards.privacy_scan import (
    CHUNK_SIZE,
    Finding,
    KnownCards,
    Scanner,
    _could_be_pan,
    _separators,
    scan_postgres,
    scan_redis,
)
from commerce.cards.scrub import luhn_valid


def complete(body: str) -> str:
    """`body` with its Luhn check digit (computed here, independently of the module)."""
    total = 0
    for index, ch in enumerate(reversed(body)):
        d = int(ch)
        if index % 2 == 0:  # doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


VISA = complete("411111111111111")
AMEX = complete("37828224631000")
MASTERCARD_2 = complete("222300004840001")
UNIONPAY_19 = complete("621234567890123456")
DINERS_14 = complete("3056930902590")
VISA_13 = complete("422222222222")
#: A number whose digits fail the Luhn check (the last digit moved on by one).
NOT_A_PAN = VISA[:-1] + str((int(VISA[-1]) + 1) % 10)


def grouped(pan: str, sep: str = " ", size: int = 4) -> str:
    return sep.join(pan[i : i + size] for i in range(0, len(pan), size))


def fullwidth(text: str) -> str:
    return "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in text)


def scan(data: bytes, known: tuple[str, ...] = (), **options: int) -> list[Finding]:
    return Scanner(KnownCards(known), **options).scan_bytes(data, "src")


def spots(findings: list[Finding]) -> list[tuple[int, str, str, str]]:
    return [(f.offset, f.kind, f.brand, f.last4) for f in findings]


# --- Card numbers in every encoding -----------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "text", "encoding", "offset", "via"),
    [
        ("order: ", VISA, "ascii", 7, ""),
        ("order: ", grouped(VISA), "ascii", 7, ""),
        ("order: ", grouped(VISA, "-"), "ascii", 7, ""),
        ("order: ", grouped(AMEX, " ", 5), "ascii", 7, ""),
        ("n=", grouped(VISA, "\u00a0"), "utf-8", 2, "utf-8"),
        ("n=", grouped(VISA, "\u2013"), "utf-8", 2, "utf-8"),
        ("カード", fullwidth(VISA), "utf-8", 9, "utf-8"),
        ("カード", grouped(fullwidth(VISA), "\u3000"), "utf-8", 9, "utf-8"),
        ("card ", VISA, "utf-16-le", 10, "utf-16-le"),
        ("card ", grouped(VISA), "utf-16-le", 10, "utf-16-le"),
        ("card ", fullwidth(VISA), "utf-16-le", 10, "utf-16-le"),
        ("card ", fullwidth(VISA), "utf-16-be", 10, "utf-16-be"),
        ("card ", VISA, "utf-16", 12, "utf-16-le"),  # with a byte order mark
    ],
)
def test_card_numbers_are_found_in_every_encoding(
    prefix: str, text: str, encoding: str, offset: int, via: str
) -> None:
    data = (prefix + text + " paid").encode(encoding)
    (finding,) = scan(data)
    assert (finding.offset, finding.kind, finding.last4, finding.encoding) == (
        offset,
        "pan",
        text[-4:] if text[-1].isascii() else normalize_digits(text)[-4:],
        via,
    )
    assert finding.brand in ("visa", "amex")


def test_ascii_utf16_big_endian_is_found_and_reported_once() -> None:
    # ASCII in UTF-16 reads the same as little-endian one byte later: one finding, not two.
    data = b"\x01" + f"card {VISA} x".encode("utf-16-be")
    assert spots(scan(data)) == [(12, "pan", "visa", VISA[-4:])]


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        (VISA, "visa"),
        (VISA_13, "visa"),
        (AMEX, "amex"),
        (MASTERCARD_2, "mastercard"),
        (UNIONPAY_19, "unionpay"),
        (DINERS_14, "diners"),
    ],
)
def test_brands_and_lengths(pan: str, brand: str) -> None:
    assert spots(scan(f"[{pan}]".encode())) == [(1, "pan", brand, pan[-4:])]


def test_every_separator_the_detector_accepts_is_read_in_utf8() -> None:
    # The scanner's byte tables are derived from the detector; this keeps them honest.
    for separator in sorted(_separators()):
        if separator in ".\uff0e":
            continue  # dots count only in 4-4-4-4 groups, tested below
        data = ("x " + grouped(VISA, separator, 5) + " y").encode("utf-8")
        assert [f.last4 for f in scan(data)] == [VISA[-4:]], hex(ord(separator))
    assert [f.last4 for f in scan(grouped(VISA, ".").encode())] == [VISA[-4:]]
    assert [f.last4 for f in scan(grouped(VISA, "\uff0e").encode())] == [VISA[-4:]]


def test_escaped_json_and_encoded_payloads() -> None:
    escaped = json.dumps({"note": grouped(fullwidth(VISA), "\u3000")}).encode("ascii")
    assert b"\\uff" in escaped  # json.dumps escapes every non-ASCII character
    nbsp = json.dumps({"note": grouped(VISA, "\u00a0")}).encode("ascii")
    # A Celery message in Redis: a JSON envelope around a base64 body (itself JSON).
    body = base64.b64encode(json.dumps({"args": [fullwidth(AMEX)]}).encode("ascii"))
    celery = b'{"body": "' + body + b'", "content-encoding": "utf-8"}'
    bytea = b"42\t\\\\x" + VISA.encode().hex().encode() + b"\n"  # COPY's text for a bytea
    doubled = json.dumps(json.dumps({"n": fullwidth(VISA)})).encode()  # JSON in a JSON string
    assert spots(scan(escaped)) == [(10, "pan", "visa", VISA[-4:])]
    assert scan(escaped)[0].encoding == "json-escape"
    assert [(f.last4, f.encoding) for f in scan(nbsp)] == [(VISA[-4:], "json-escape")]
    assert [(f.offset, f.last4, f.encoding) for f in scan(celery)] == [
        (10, AMEX[-4:], "base64/json-escape")
    ]
    assert [(f.offset, f.last4, f.encoding) for f in scan(bytea)] == [(5, VISA[-4:], "hex")]
    assert [f.last4 for f in scan(doubled)] == [VISA[-4:]]


def test_inside_binary_junk() -> None:
    rng = random.Random(7)
    junk = bytes(rng.randrange(256) for _ in range(20_000))
    ascii_at = 5_000
    utf16_at = 12_001  # an odd offset: the other byte alignment
    data = bytearray(junk)
    data[ascii_at : ascii_at + 16] = VISA.encode()
    wide = AMEX.encode("utf-16-le")
    data[utf16_at : utf16_at + len(wide)] = wide
    found = scan(bytes(data))
    assert [(f.offset, f.last4, f.encoding) for f in found] == [
        (ascii_at, VISA[-4:], ""),
        (utf16_at, AMEX[-4:], "utf-16-le"),
    ]
    assert scan(junk) == []


def test_what_is_not_a_card_number_is_not_reported() -> None:
    clean = "\n".join(
        [
            f"2025-05-16 22:42:04.063616+00\t{NOT_A_PAN}\tsale_9E4xm3v2q45qP7dCWzoY2R",
            "ip=10.234.215.66 request_id=82b335998604871926debfdb8825ae56",
            "uuid 550e8400-e29b-41d4-a716-446655440000 amount 1234.56",
            f"glued {VISA}123 is an identifier, not a card",  # atomic digit groups
            f"phone +{VISA[:15]}",  # E.164 is at most 15 digits after "+"
            "base64 " + base64.b64encode(b"hello world, nothing to see here").decode(),
            # A Celery worker's banner: "2.36 2026-11-29 08" is Luhn-valid across its groups.
            "Linux-6.18.44-fc-v657-x86_64-with-glibc2.36 2026-11-29 08:56:58",
        ]
    ).encode()
    assert scan(clean) == []
    assert scan(clean.decode().encode("utf-16")) == []


def test_a_card_number_beside_a_date_time_is_reported() -> None:
    text = f"2026-11-29 08:56:58 paid with {grouped(VISA)} 2026-11-29 08:57"
    assert [(f.kind, f.last4) for f in scan(text.encode())] == [("pan", VISA[-4:])]


# --- Chunks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [VISA, grouped(VISA), grouped(fullwidth(VISA), "\u3000"), "\u00a0".join(VISA)]
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le"])
def test_a_number_across_a_chunk_boundary_is_found_once(text: str, encoding: str) -> None:
    chunk = 1000
    number = text.encode(encoding)
    for offset in range(chunk - len(number) - 2, chunk + 3):
        data = b"x" * offset + number + b"y" * 300
        scanner = Scanner(chunk_size=chunk, margin=128)
        # Fed in pieces of awkward sizes, as a socket or a file would.
        pieces = [data[i : i + 37] for i in range(0, len(data), 37)]
        found = list(scanner.scan_stream(pieces, "src"))
        assert [(f.offset, f.last4) for f in found] == [(offset, VISA[-4:])], offset


def test_default_chunk_boundary() -> None:
    offset = CHUNK_SIZE - 7
    data = b"a" * offset + grouped(VISA).encode() + b"z" * 100
    scanner = Scanner()
    found = list(scanner.scan_stream((data[:5_000_000], data[5_000_000:]), "big"))
    assert [(f.offset, f.last4) for f in found] == [(offset, VISA[-4:])]
    assert scanner.bytes_scanned == len(data)


def test_chunked_and_single_pass_agree() -> None:
    rng = random.Random(11)
    words = ["order", "paid", "café", "カード", "\u3000", " ", "-", ".", "+", "\n", "\t"]
    numbers = [VISA, AMEX, grouped(VISA), grouped(AMEX, "-", 5), fullwidth(VISA), NOT_A_PAN]
    for _ in range(20):
        parts = []
        for _ in range(400):
            roll = rng.random()
            if roll < 0.1:
                parts.append(rng.choice(numbers))
            elif roll < 0.4:
                parts.append(str(rng.randrange(10 ** rng.randrange(1, 14))))
            else:
                parts.append(rng.choice(words))
        data = " ".join(parts).encode(rng.choice(["utf-8", "utf-8", "utf-16-le"]))
        whole = Scanner().scan_bytes(data, "s")
        chunked = Scanner(chunk_size=rng.randrange(200, 900), margin=256).scan_bytes(data, "s")
        assert whole, "the sample should hold card numbers"
        assert spots(chunked) == spots(whole)


def test_fast_luhn_prefilter_matches_the_detector() -> None:
    rng = random.Random(3)
    for _ in range(20_000):
        digits = "".join(rng.choices("0123456789", k=rng.randrange(1, 23)))
        assert _could_be_pan(digits.encode()) == (12 <= len(digits) <= 19 and luhn_valid(digits))


# --- Test card numbers and their digests ------------------------------------------------------


def digest_forms(pan: str) -> Iterator[tuple[str, bytes]]:
    for algorithm in ("md5", "sha1", "sha256"):
        raw = hashlib.new(algorithm, pan.encode()).digest()
        yield f"{algorithm}-hex", raw.hex().encode()
        yield f"{algorithm}-hex", raw.hex().upper().encode()
        yield f"{algorithm}-hex", b"0x" + raw.hex().encode()
        yield f"{algorithm}-hex", b"\\\\x" + raw.hex().encode()  # a bytea in COPY output
        yield f"{algorithm}-base64", base64.b64encode(raw)
        yield f"{algorithm}-base64", base64.b64encode(raw).rstrip(b"=")
        yield f"{algorithm}-base64", base64.urlsafe_b64encode(raw)


@pytest.mark.parametrize(("kind", "form"), list(digest_forms(NOT_A_PAN)))
def test_digests_of_test_numbers_are_found(kind: str, form: bytes) -> None:
    # A test number need not pass the Luhn check; its digests are looked for all the same.
    data = b'{"pan_hash": "' + form + b'", "v": 1}'
    found = scan(data, known=(NOT_A_PAN,))
    skip = form.index(b"x") + 1 if b"x" in form[:4] else 0
    assert spots(found) == [(14 + skip, kind, "visa", NOT_A_PAN[-4:])]
    assert scan(data, known=(VISA,)) == []  # only the given numbers' digests count


def test_digests_in_utf16_in_long_tokens_and_in_base64() -> None:
    sha256 = hashlib.sha256(AMEX.encode()).hexdigest()
    md5 = hashlib.md5(AMEX.encode(), usedforsecurity=False).hexdigest()
    long_token = b"k" * 200 + md5.encode() + b"k" * 50
    wrapped = base64.b64encode(json.dumps({"h": sha256}).encode())
    known = (AMEX,)
    assert [f.kind for f in scan(b"x " + long_token, known)] == ["md5-hex"]
    assert [f.offset for f in scan(b"x " + long_token, known)] == [202]
    assert [(f.kind, f.encoding) for f in scan(wrapped, known)] == [("sha256-hex", "base64")]
    assert [f.kind for f in scan(f"h={sha256};".encode(), known)] == ["sha256-hex"]


def test_test_numbers_glued_to_other_digits() -> None:
    # The detector reads "<pan>123" as one identifier; a known test number is found anyway.
    data = f"ref={NOT_A_PAN}123 and {grouped(NOT_A_PAN)}".encode()
    assert spots(scan(data, known=(NOT_A_PAN,))) == [
        (4, "test-pan", "visa", NOT_A_PAN[-4:]),
        (28, "test-pan", "visa", NOT_A_PAN[-4:]),
    ]


def test_known_cards_refuse_what_is_not_a_number_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="#2") as info:
        KnownCards([VISA, "4111-abcd-1111"])
    assert "abcd" not in str(info.value)
    with pytest.raises(ValueError, match="#1 has 8 digits"):
        KnownCards(["12345678"])


# --- Names and output -------------------------------------------------------------------------


def test_labels_mask_card_numbers_and_escape_control_characters() -> None:
    scanner = Scanner(KnownCards([AMEX]))
    md5 = hashlib.md5(AMEX.encode(), usedforsecurity=False).hexdigest()
    label = scanner.label(f"card:{VISA}:{md5}\n".encode())
    assert VISA not in label
    assert label == f"card:[pan {VISA[-4:]}]:[md5-hex {AMEX[-4:]}]\\n"
    assert len(scanner.label(b"k" * 500)) == 120


def test_findings_hold_no_card_number() -> None:
    (finding,) = scan(VISA.encode())
    assert VISA not in repr(finding)
    assert VISA not in str(finding)
    assert str(finding) == f"src:0: pan (visa, {VISA[-4:]})"


# --- The command ------------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(privacy, ["scan", *args], catch_exceptions=False)


def assert_no_number_shown(result: Result, *pans: str) -> None:
    for pan in pans:
        assert pan not in result.output
        assert pan[:-4] not in result.output  # nothing but the last four


@pytest.fixture
def leaky_tree(tmp_path: Path) -> Path:
    """A folder of dumps and logs with card numbers in many forms."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text(f"INFO paid with {grouped(VISA)}\nINFO ok\n")
    (logs / "app.log.1.gz").write_bytes(gzip.compress(f"card={AMEX}\n".encode()))
    (logs / "win.log").write_bytes(f"card {fullwidth(VISA)}\r\n".encode("utf-16"))
    (tmp_path / "dump.sql").write_text(
        "COPY public.events (id, body) FROM stdin;\n"
        f'1\t{{"note": "{grouped(fullwidth(UNIONPAY_19), chr(0x3000))}"}}\n\\.\n'
    )
    sha1 = hashlib.sha1(VISA.encode(), usedforsecurity=False).hexdigest()
    (tmp_path / "hashes.txt").write_text(sha1 + "\n")
    (tmp_path / "clean.txt").write_text("nothing here 2025-05-16 12:00:00\n")
    return tmp_path


def test_scan_reports_every_finding_and_exits_1(leaky_tree: Path) -> None:
    result = run(str(leaky_tree), "--test-pan", grouped(VISA))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    logs = leaky_tree / "logs"
    assert lines[:-1] == [
        f"{leaky_tree / 'dump.sql'}:54: pan (unionpay, {UNIONPAY_19[-4:]}) [utf-8]",
        f"{leaky_tree / 'hashes.txt'}:0: sha1-hex (visa, {VISA[-4:]})",
        f"{logs / 'app.log'}:15: pan (visa, {VISA[-4:]})",
        f"{logs / 'app.log.1.gz'}:5: pan (amex, {AMEX[-4:]})",
        f"{logs / 'win.log'}:12: pan (visa, {VISA[-4:]}) [utf-16-le]",
    ]
    assert lines[-1].startswith("privacy scan: 5 findings (4 pan, 1 sha1-hex) in 6 sources")
    assert_no_number_shown(result, VISA, AMEX, UNIONPAY_19)


def test_clean_files_exit_0(leaky_tree: Path) -> None:
    result = run(str(leaky_tree / "clean.txt"), "--test-pan", VISA)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("privacy scan: 0 findings in 1 source,")


def test_a_card_number_in_a_file_name_is_masked(tmp_path: Path) -> None:
    leaky = tmp_path / f"export-{VISA}.csv"
    leaky.write_text(f"{AMEX}\n")
    result = run(str(tmp_path))
    assert result.exit_code == 1
    assert_no_number_shown(result, VISA, AMEX)
    assert f"export-[pan {VISA[-4:]}].csv:0: pan (amex, {AMEX[-4:]})" in result.stdout


def test_test_pans_file(tmp_path: Path) -> None:
    numbers = tmp_path / "pans.txt"
    numbers.write_text(f"# test cards\n{AMEX}\n\n{grouped(NOT_A_PAN)}  # not Luhn-valid\n")
    data = tmp_path / "data.txt"
    data.write_text(base64.b64encode(hashlib.sha256(NOT_A_PAN.encode()).digest()).decode())
    result = run(str(data), "--test-pans-file", str(numbers))
    assert result.exit_code == 1
    assert f"data.txt:0: sha256-base64 (visa, {NOT_A_PAN[-4:]})" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to scan"),
        (("/no/such/place",), "/no/such/place: no such file or directory"),
        (("--database-url", "mysql://u@h/db"), "--database-url: expected postgresql://"),
        (("--redis-url", "http://127.0.0.1:6379/0"), "--redis-url: expected redis://"),
        (("--redis-url", "redis://127.0.0.1:6379/notadb"), "--redis-url: expected"),
        ((".", "--test-pan", "4111-abcd-1111"), "--test-pan: test card number #1 is not"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "abcd" not in result.output.replace("#1 is not", "")


def test_a_bad_line_in_the_test_pans_file_is_not_echoed(tmp_path: Path) -> None:
    numbers = tmp_path / "pans.txt"
    numbers.write_text(f"{VISA}\n{VISA[:10]}x\n")
    result = run(str(tmp_path), "--test-pans-file", str(numbers))
    assert result.exit_code == 2
    assert "--test-pans-file line 2: not a card number" in result.stderr
    assert VISA[:10] not in result.output


def test_unreadable_files_exit_2_when_nothing_is_found(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "gone").symlink_to(tmp_path / "missing")
    text = " ".join(str(n) for n in range(5000)).encode()
    (tmp_path / "broken.gz").write_bytes(gzip.compress(text)[:-100])
    (tmp_path / "ok.bz2").write_bytes(bz2.compress(b"fine\n"))
    corrupt = bytearray(gzip.compress(text))
    corrupt[40:60] = b"\xff" * 20  # the deflate stream itself: zlib.error, not OSError
    (tmp_path / "corrupt.gz").write_bytes(bytes(corrupt))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run(str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'gone'}: No such file or directory" in result.stderr
    assert f"error: {tmp_path / 'broken.gz'}:" in result.stderr
    assert f"error: {tmp_path / 'corrupt.gz'}:" in result.stderr
    assert "3 could not be read" in result.stdout  # the FIFO inside a folder is skipped
    explicit = run(str(fifo))
    assert explicit.exit_code == 2
    assert f"error: {fifo}: not a regular file or a directory" in explicit.stderr
    (tmp_path / "leak.txt").write_text(VISA)
    assert run(str(tmp_path)).exit_code == 1  # a finding outranks what could not be read


# --- Redis ------------------------------------------------------------------------------------


def _server_url(variable: str, default: str) -> str:
    return os.environ.get(variable) or default


@pytest.fixture
def redis_keys() -> Iterator[tuple[Any, str, str]]:
    """(client, url, key prefix) on database 10 of the machine's Redis; our keys removed."""
    import redis

    base = urlsplit(_server_url("CHATLEDGER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    if base.scheme not in ("redis", "rediss"):
        pytest.skip("the privacy scan Redis test needs a TCP Redis URL")
    url = urlunsplit((base.scheme, base.netloc, "/10", "", ""))
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis server at " + base.netloc)
    prefix = f"privacy-scan-test:{secrets.token_hex(4)}:"
    try:
        yield client, url, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_redis_values_of_every_type(redis_keys: tuple[Any, str, str]) -> None:
    client, url, prefix = redis_keys
    client.hset(prefix + "customer", mapping={"name": "Ana", "note": f"card {grouped(VISA)}"})
    client.rpush(prefix + "queue", "first", json.dumps({"pan": fullwidth(AMEX)}), "last")
    client.set(prefix + "blob", b"\x00\xff" * 1000 + VISA.encode("utf-16-le"))
    client.sadd(prefix + "set", "a", UNIONPAY_19)
    # A card number as a member is found; scores (the broker's clock) are not read.
    client.zadd(prefix + "zset", {f"m {grouped(VISA)}": 1795926439732})
    client.xadd(prefix + "stream", {"card": grouped(AMEX, "-", 5)})
    client.set(prefix + f"card:{VISA}", "x")
    client.set(prefix + "digest", hashlib.sha256(VISA.encode()).hexdigest().upper())
    client.set(prefix + "clean", "nothing 2025-05-16 12:00:00")

    scanner = Scanner(KnownCards([VISA]))
    errors: list[str] = []
    found = [
        f for f in scan_redis(scanner, client, errors.append) if f.source.startswith("redis:10/")
    ]
    ours = sorted(
        (f.source.split(":", 3)[-1], f.offset, f.kind, f.last4, f.encoding)
        for f in found
        if prefix in f.source
    )
    assert errors == []
    assert ours == sorted(
        [
            (f"card:[pan {VISA[-4:]}] (key name)", len(prefix) + 5, "pan", VISA[-4:], ""),
            ("customer{note}", 5, "pan", VISA[-4:], ""),
            ("queue[1]", 9, "pan", AMEX[-4:], "json-escape"),
            ("blob", 2000, "pan", VISA[-4:], "utf-16-le"),
            ("set (set member)", 0, "pan", UNIONPAY_19[-4:], ""),
            ("zset (zset member)", 2, "pan", VISA[-4:], ""),
            ("stream<" + _stream_id(client, prefix) + ">{card}", 0, "pan", AMEX[-4:], ""),
            ("digest", 0, "sha256-hex", VISA[-4:], ""),
        ]
    )

    result = run("--redis-url", url, "--test-pan", VISA)
    assert result.exit_code == 1
    assert f"{prefix}customer{{note}}:5: pan (visa, {VISA[-4:]})" in result.stdout
    assert_no_number_shown(result, VISA, AMEX, UNIONPAY_19)


def _stream_id(client: Any, prefix: str) -> str:
    ((entry_id, _),) = client.xrange(prefix + "stream")
    return entry_id.decode()


def test_redis_unreachable_exits_2() -> None:
    result = run("--redis-url", "redis://127.0.0.1:1/0")
    assert result.exit_code == 2
    assert "error: redis:" in result.stderr


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def database_url() -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    base = _server_url("CHATLEDGER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parts = urlsplit(base)
    admin_url = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        pytest.skip("no PostgreSQL server at " + parts.hostname if parts.hostname else "")
    name = f"privacy_scan_{os.getpid()}_{secrets.token_hex(3)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(("postgresql", parts.netloc, "/" + name, "", ""))
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_database_rows_are_scanned(database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE clean (id int, note text)")
        connection.execute("INSERT INTO clean VALUES (1, 'nothing 2025-05-16')")
        result = run("--database-url", database_url.replace("postgresql", "postgresql+psycopg"))
        assert result.exit_code == 0, result.output
        assert "0 findings in 1 source" in result.stdout

        connection.execute("CREATE SCHEMA partner")
        connection.execute(
            "CREATE TABLE partner.events (id bigint, body jsonb, raw bytea, amount bigint)"
        )
        connection.execute(
            "INSERT INTO partner.events VALUES"
            " (1, %s, NULL, 5), (2, '{}', %s, 6), (3, '{}', NULL, %s)",
            [
                json.dumps({"card": grouped(fullwidth(AMEX), "\u3000")}),
                VISA.encode(),
                int(UNIONPAY_19),
            ],
        )
        # json.dumps escapes the no-break spaces; COPY then doubles the backslashes.
        connection.execute("CREATE TABLE logs (line text)")
        connection.execute(
            "INSERT INTO logs VALUES (%s)", [json.dumps({"msg": grouped(VISA, "\u00a0")})]
        )
        scanner = Scanner()
        errors: list[str] = []
        found = list(scan_postgres(scanner, connection, errors.append))
    assert errors == []
    assert [(f.source, f.kind, f.brand, f.last4, f.encoding) for f in found] == [
        ("postgres:partner.events", "pan", "amex", AMEX[-4:], "utf-8"),
        ("postgres:partner.events", "pan", "visa", VISA[-4:], "hex"),
        ("postgres:partner.events", "pan", "unionpay", UNIONPAY_19[-4:], ""),
        ("postgres:public.logs", "pan", "visa", VISA[-4:], "json-escape"),
    ]
    result = run("--database-url", database_url)
    assert result.exit_code == 1
    assert result.stdout.count("postgres:partner.events:") == 3
    assert_no_number_shown(result, VISA, AMEX, UNIONPAY_19)


def test_database_unreachable_exits_2() -> None:
    result = run("--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 2
    assert "error: database: cannot connect" in result.stderr
