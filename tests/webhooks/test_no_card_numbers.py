"""SPEC 4.3 end to end: card numbers sent everywhere, then looked for everywhere.

Card numbers go in through every source, in every field a sender could use (Stripe event
metadata, descriptions, billing names and a `card.number`; a partner's `card.pan`, merchant
name and free text; chat messages and postback titles; API free text), written in ASCII,
spaced, dashed and full-width digits. After the worker has processed everything, the test
dumps the database, the Redis database (and every Redis command sent meanwhile), the logs
of the test process and of the worker, the API's answers and what chatledger sent to Stripe,
and looks for:

- any of those card numbers, in any of the forms, or as their digits once separators and
  full-width digits are normalized;
- any Luhn-valid run of 13 to 19 digits, found by a checker written here (independent of
  the code under test) and by `commerce.cards.scrub.find_pans`;
- a plain SHA-256 of any of those numbers (hex, upper-case hex, base64), which enumeration
  over a BIN would reverse.

Identifiers a source assigns are kept as sent by design (webhooks/receive.py
PARTNER_IDENTIFIERS and CHAT_IDENTIFIERS: one numeric id in ten passes the Luhn check), so
every id in this test's data is built with `not_luhn` to fail the check on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import shutil
import subprocess
import threading
import time
import unicodedata
import urllib.parse
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from app.cli import main
from commerce.cards.scrub import find_pans
from tests.conftest import CHAT_APP_SECRET, STRIPE_WEBHOOK_SECRETS, wait_for
from tests.helpers import OPERATOR, bearer, create_merchant
from tests.support.signing import body_of, meta_headers, partner_headers, stripe_headers
from webhooks.models import InboxEvent

pytestmark = pytest.mark.worker

#: ASCII digit -> full-width digit (U+FF10..U+FF19).
FULL_WIDTH = {ord("0") + d: 0xFF10 + d for d in range(10)}


# -- An independent checker ----------------------------------------------------------------


def luhn(digits: str) -> bool:
    total = 0
    for position, ch in enumerate(reversed(digits)):
        d = int(ch)
        if position % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_complete(prefix: str, length: int) -> str:
    """`prefix`, padded with fixed digits to `length` - 1, plus its Luhn check digit."""
    body = (prefix + "0123456789" * 2)[: length - 1]
    for check in "0123456789":
        if luhn(body + check):
            return body + check
    raise AssertionError("no check digit")


#: Stripe's documented test numbers (Visa, Mastercard, American Express, Discover), then one
#: number of every other brand and length a card can have.
PANS = (
    "4242424242424242",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    *(
        _luhn_complete(prefix, length)
        for prefix, length in (
            ("4", 13),  # Visa, 13 digits
            ("4", 19),  # Visa, 19 digits
            ("51", 16),
            ("53", 16),
            ("55", 16),  # Mastercard 51-55
            ("2221", 16),
            ("2720", 16),  # Mastercard 2-series
            ("34", 15),  # American Express
            ("36", 14),
            ("300", 14),  # Diners Club, 14 digits
            ("65", 16),  # Discover
            ("3528", 16),  # JCB
            ("62", 19),  # UnionPay, 19 digits
            ("6759", 16),
            ("50", 18),  # Maestro
        )
    ),
)


def not_luhn(digits: str) -> str:
    """`digits` with its last digit changed, if needed, so that the Luhn check fails."""
    if luhn(digits):
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    assert not luhn(digits)
    return digits


def digit_id(length: int) -> str:
    return not_luhn(
        str(secrets.randbelow(9) + 1)
        + "".join(secrets.choice("0123456789") for _ in range(length - 1))
    )


def grouped(pan: str, separator: str) -> str:
    if len(pan) == 15:
        sizes: tuple[int, ...] = (4, 6, 5)
    elif len(pan) == 14:
        sizes = (4, 6, 4)
    else:
        sizes = (4,) * (len(pan) // 4) + ((len(pan) % 4,) if len(pan) % 4 else ())
    parts, at = [], 0
    for size in sizes:
        parts.append(pan[at : at + size])
        at += size
    assert "".join(parts) == pan
    return separator.join(parts)


def forms(pan: str) -> dict[str, str]:
    """How people write a card number: the forms this test sends and looks for."""
    return {
        "ascii": pan,
        "spaced": grouped(pan, " "),
        "dashed": grouped(pan, "-"),
        "full-width": pan.translate(FULL_WIDTH),
        "full-width spaced": grouped(pan, "\u3000").translate(FULL_WIDTH),
    }


ALL_FORMS = [(pan, name, form) for pan in PANS for name, form in forms(pan).items()]

#: One separator between digit groups: spaces (ASCII, no-break, thin, ideographic) and dashes.
_SEPARATORS = " \u00a0\u2009\u202f\u3000\\-\u2010-\u2015\u2212\uff0d"
#: `\d` on str patterns is every Unicode decimal digit (ASCII, full-width, ...).
_RUN = re.compile(rf"\d+(?:[{_SEPARATORS}]\d+)*")
_GROUP = re.compile(r"\d+")


def _ascii_digits(group: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) for ch in group)


def luhn_runs(text: str) -> list[str]:
    """Every Luhn-valid window of 13 to 19 digits made of whole, consecutive digit groups.

    Returns the windows' last four digits only, so a failure message shows no card number.
    """
    found = []
    for run in _RUN.finditer(text):
        groups = [_ascii_digits(g) for g in _GROUP.findall(run.group())]
        for i in range(len(groups)):
            digits = ""
            for group in groups[i:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn(digits):
                    found.append(digits[-4:])
    return found


def normalized(text: str) -> str:
    """Full-width (any decimal) digits as ASCII, and single separators between digits gone."""
    ascii_text = "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text
    )
    return re.sub(rf"(?<=\d)[{_SEPARATORS}](?=\d)", "", ascii_text)


def plain_hashes() -> dict[str, str]:
    """Plain SHA-256 of every form of every number, as hex, upper-case hex and base64."""
    hashes = {}
    for pan, name, form in ALL_FORMS:
        digest = hashlib.sha256(form.encode()).digest()
        label = f"sha256({name} form of …{pan[-4:]})"
        hashes[digest.hex()] = label
        hashes[digest.hex().upper()] = label
        hashes[base64.b64encode(digest).decode()] = label
        hashes[base64.urlsafe_b64encode(digest).decode().rstrip("=")] = label
    return hashes


#: Random tokens whose hex digits form long digit runs by chance (a UUID's last group is all
#: digits once in 300; a 64-hex digest holds a Luhn-valid run once in 150). They are blanked
#: for the Luhn scans only, after the exact searches ran on the text as it is.
_RANDOM_TOKENS = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?<![0-9a-zA-Z])[0-9a-fA-F]{32,}(?![0-9a-zA-Z])"
)


#: Clock readings in milliseconds (kombu keeps deadlines as scores such as 1795923053510.0):
#: thirteen digits, one time in ten Luhn-valid. No card number is thirteen digits starting
#: with 1 (thirteen-digit numbers are Visa's, which start with 4), so a reading within a year
#: of now is blanked for the Luhn scans, like the random tokens.
_THIRTEEN_DIGITS = re.compile(r"(?<![0-9])[0-9]{13}(?![0-9])")
_YEAR_MS = 366 * 24 * 3600 * 1000


def _blank_random(text_: str) -> str:
    now_ms = int(time.time() * 1000)
    text_ = _RANDOM_TOKENS.sub("<random>", text_)
    return _THIRTEEN_DIGITS.sub(
        lambda m: "<clock>" if abs(int(m.group()) - now_ms) < _YEAR_MS else m.group(), text_
    )


_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def views(text_: str) -> list[str]:
    """The text as stored, and as read once JSON's \\uXXXX escapes (which hide full-width
    digits) and URL encoding (a form body: spaces as "+", full-width digits as %EF%BC%94)
    are undone."""
    seen = [text_]
    for view in (
        _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text_),
        urllib.parse.unquote_plus(text_),
    ):
        if view not in seen:
            seen.append(view)
    return seen


def card_numbers_in(text_: str) -> list[str]:
    """Everything in `text_` that betrays a card number, described without the number."""
    problems: Counter[str] = Counter()
    hashes = plain_hashes()
    for label, view in zip(("", " (unescaped)", " (URL-decoded)"), views(text_), strict=False):
        found = [f"the {name} form of …{pan[-4:]}" for pan, name, form in ALL_FORMS if form in view]
        flat = normalized(view)
        found += [f"the digits of …{pan[-4:]}" for pan in PANS if pan in flat]
        found += [hashed for digest, hashed in hashes.items() if digest in view]
        scannable = _blank_random(view)
        found += [f"a Luhn-valid run …{last4}" for last4 in luhn_runs(scannable)]
        found += [f"find_pans: …{m.last4}" for m in find_pans(scannable)]
        for problem in found:
            if label and problem in problems:
                continue  # the same finding, already reported in the text as it is
            problems[problem + label] += 1
    return [f"{problem} x{count}" if count > 1 else problem for problem, count in problems.items()]


def test_the_checker_finds_what_it_looks_for():
    for pan, name, form in ALL_FORMS:
        assert card_numbers_in(f"note: {form}."), (pan, name)
        assert luhn_runs(f"x{form}y"), (pan, name)
    assert card_numbers_in(hashlib.sha256(PANS[0].encode()).hexdigest())
    assert not card_numbers_in("[card •••• 4242] at 2026-11-28 12:00:03.123456+00")
    assert not luhn_runs(not_luhn("4242424242424243"))
    assert not_luhn(PANS[0]) != PANS[0]


# -- Where the data ends up ----------------------------------------------------------------


def database_dump(url: str) -> dict[str, str]:
    """pg_dump of the run's database, and every row of every table as JSON, by table.

    pg_dump refuses a server newer than itself (the embedded PostgreSQL 16 beside a system
    pg_dump 15): the rows are taken over SQL in every case, so nothing depends on it.
    """
    dumps = {}
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pg_dump = shutil.which("pg_dump") or "/usr/bin/pg_dump"
    dumped = subprocess.run(
        [pg_dump, "--no-owner", "--dbname", libpq],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if dumped.returncode == 0:
        dumps["pg_dump"] = dumped.stdout.decode()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = connection.execute(
                text(
                    "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)"
                    " FROM information_schema.tables"
                    " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    " AND table_type = 'BASE TABLE'"
                )
            ).scalars()
            for table in list(tables):
                rows = connection.execute(
                    text(f"SELECT row_to_json(t)::text FROM {table} t")  # noqa: S608 - catalog names
                ).scalars()
                dumps[table] = "\n".join(rows)
    finally:
        engine.dispose()
    assert len(dumps) > 10, "the database dump holds no tables"
    return dumps


_BASE64_BODY = re.compile(r'"body":\s*"([A-Za-z0-9+/=]+)"')


def with_decoded_bodies(text_: str) -> str:
    """Kombu stores a task message's body base64-encoded: decode every one, to search it too."""
    decoded = []
    for match in _BASE64_BODY.finditer(text_):
        try:
            decoded.append(base64.b64decode(match.group(1), validate=True).decode("utf-8"))
        except ValueError:
            continue
    return "\n".join([text_, *decoded])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def redis_dump(client: redis.Redis) -> str:
    """Every key of the database and every value, whatever its type."""
    lines = []
    for key in client.scan_iter(count=500):
        kind = _text(client.type(key))
        values: list[Any]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [part for item in client.hgetall(key).items() for part in item]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [part for item in client.zrange(key, 0, -1, withscores=True) for part in item]
        elif kind == "stream":
            values = [json.dumps(entry, default=_text) for entry in client.xrange(key)]
        else:  # the key expired or was taken meanwhile
            values = []
        lines.append(f"{_text(key)} ({kind}): " + " | ".join(_text(v) for v in values if v))
    return with_decoded_bodies("\n".join(lines))


_MONITOR_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.S)
_MONITOR_CHARS = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b"}


def unescape_monitor(command: str) -> str:
    """MONITOR quotes each argument and writes non-ASCII bytes as \\xHH: undo it."""
    out = bytearray()
    position = 0
    for match in _MONITOR_ESCAPE.finditer(command):
        out += command[position : match.start()].encode("latin-1", errors="replace")
        escape = match.group(1)
        if escape[0] == "x" and len(escape) == 3:
            out.append(int(escape[1:], 16))
        else:
            out += _MONITOR_CHARS.get(escape, escape).encode("latin-1", errors="replace")
        position = match.end()
    out += command[position:].encode("latin-1", errors="replace")
    return out.decode("utf-8", errors="replace")


class RedisMonitor:
    """Records every command sent to one Redis database while it runs (MONITOR), so what
    was queued and consumed in the meantime is searched too, not only what is left."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._monitor = self.client.monitor()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> RedisMonitor:
        self._monitor.__enter__()
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                command = self._monitor.next_command()
            except (redis.RedisError, OSError, ValueError, AttributeError):
                return
            if command and command.get("db") == self.db:
                self.commands.append(unescape_monitor(command["command"]))

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.client.ping()  # any command wakes the reader, which then sees the stop
        self._thread.join(10)
        self._monitor.__exit__(*exc_info)
        self.client.close()

    def text(self) -> str:
        return with_decoded_bodies("\n".join(self.commands))


# -- The run -------------------------------------------------------------------------------


def _form(index: int, kind: str) -> str:
    """The card numbers in turn, in the form `kind`."""
    return forms(PANS[index % len(PANS)])[kind]


def _every_form(pan: str) -> str:
    return "; ".join(forms(pan).values())


def _stripe(web, event: dict) -> None:
    body = body_of(event)
    answer = web.post(
        "/webhooks/stripe", data=body, headers=stripe_headers(body, STRIPE_WEBHOOK_SECRETS[0])
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)


def _partner(web, partner: dict, note: dict) -> None:
    body = body_of(note)
    answer = web.post(
        f"/webhooks/partners/{partner['id']}",
        data=body,
        headers=partner_headers(body, partner["webhook_secret"], note["id"]),
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)


def _chat(web, page_id: str, items: list[dict]) -> None:
    body = body_of({"object": "page", "entry": [{"id": page_id, "messaging": items}]})
    answer = web.post(
        "/webhooks/chat/messenger", data=body, headers=meta_headers(body, CHAT_APP_SECRET)
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)


def send_card_numbers_everywhere(web, stripe, *, through_api: bool) -> int:
    """Sends card numbers through every source (the API's free text too when `through_api`);
    returns how many inbox rows it makes."""

    def api_text(text_: str, card: str) -> str:
        return f"{text_} {card}" if through_api else text_

    # -- The API: free text a merchant and the operator type. Ids are not Luhn-valid.
    mid = digit_id(15)
    page_id = digit_id(15)
    _, key = create_merchant(
        web,
        name=api_text("Blue Bottle", _form(0, "spaced")),
        mids=[mid],
        chat_pages=[{"channel": "messenger", "page_id": page_id}],
    )
    conversation = web.post(
        "/v1/conversations",
        json={
            "channel": "messenger",
            "thread_id": "t_" + digit_id(10),
            "customer_user_id": digit_id(16),
        },
        headers=bearer(key),
    )
    assert conversation.status_code == 201, conversation.json
    offers = []
    for index, (_, name, form) in enumerate(ALL_FORMS):
        offer = web.post(
            f"/v1/conversations/{conversation.json['id']}/offers",
            json={
                "title": api_text(f"Gift card {index} ({name})", form),
                "amount": 1000 + index,
                "currency": "USD",
            },
            headers=bearer(key),
        )
        assert offer.status_code == 201, offer.json
        offers.append(offer.json)

    # -- Stripe: sales paid at Stripe, their events carrying card numbers in every field.
    deliveries = 0
    for index, offer in enumerate(offers[: len(PANS)]):
        paid = web.post(f"/v1/offers/{offer['id']}/checkout", headers=bearer(key))
        assert paid.status_code == 201, paid.json
        intent_id = paid.json["payment"]["payment_intent_id"]
        stripe.succeed(intent_id)
        pan = PANS[index]
        for event in [e for e in stripe.events if _intent_of(e) == intent_id]:
            obj = event["data"]["object"]
            obj["description"] = f"Paid by card {_form(index, 'spaced')}"
            obj["metadata"] = {
                **obj.get("metadata", {}),
                "note": f"card {_form(index, 'dashed')}",
                "raw": pan,
                "wide": _form(index, "full-width"),
            }
            if obj["object"] == "charge":
                obj["billing_details"]["name"] = f"J. Doe {_form(index, 'full-width spaced')}"
                obj["payment_method_details"]["card"]["number"] = pan
            _stripe(web, event)
            deliveries += 1

    # -- A partner: card.pan (hashed), and card numbers in every free field (masked).
    partner = web.post(
        "/v1/partners", json={"name": api_text("Bank", _form(1, "dashed"))}, headers=OPERATOR
    )
    assert partner.status_code == 201, partner.json
    agreement = web.post(
        f"/v1/partners/{partner.json['id']}/agreements",
        json={
            "scopes": ["transactions"],
            "purposes": ["sales_attribution"],
            "starts_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "retention_days": 90,
        },
        headers=OPERATOR,
    )
    assert agreement.status_code == 201, agreement.json
    customer_ref = "cust_" + digit_id(8)
    consent = web.post(
        f"/v1/partners/{partner.json['id']}/consents",
        json={
            "customer_ref": customer_ref,
            "status": "granted",
            "scopes": ["transactions"],
            "purposes": ["sales_attribution"],
        },
        headers=OPERATOR,
    )
    assert consent.status_code == 201, consent.json
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for index, pan_form in enumerate(("spaced", "full-width", "dashed", "ascii")):
        pan = PANS[index]
        note = {
            "id": f"evt_nocard_{index}_{secrets.token_hex(3)}",
            "type": "transaction.authorized",
            "created": now,
            "data": {
                # Identifiers are kept as sent: none of these is Luhn-valid.
                "transaction_id": "txn_" + digit_id(9),
                "original_transaction_id": None,
                "customer_ref": customer_ref,
                "card": {
                    "pan": forms(pan)[pan_form],
                    "token": "tok_nocard",
                    "brand": "visa" if pan[0] == "4" else "other",
                    "cvv": "123",
                },
                "merchant": {
                    "mid": mid,
                    "name": f"Blue Bottle {_form(index + 1, 'dashed')}",
                    "mcc": "5814",
                    "country": "US",
                },
                "amount": 1250,
                "currency": "USD",
                "occurred_at": now,
                "auth_code": "A1B2C3",
                "card_present": False,
                "wallet": None,
                "memo": f"customer read out {_form(index + 2, 'spaced')} on the phone",
                "wide": _form(index + 3, "full-width"),
                "all": _every_form(PANS[index]),
            },
        }
        _partner(web, partner.json, note)
        deliveries += 1

    # -- Chat: card numbers typed into messages, and into a postback's title.
    sender = digit_id(16)
    base_ms = int(time.time() * 1000)
    items = []
    for index, kind in enumerate(("dashed", "spaced", "full-width", "full-width spaced", "ascii")):
        items.append(
            {
                "sender": {"id": sender},
                "recipient": {"id": page_id},
                "timestamp": int(not_luhn(str(base_ms + index))),
                "message": {
                    "mid": f"m_nocard_{index}_{secrets.token_hex(3)}",
                    "text": f"here is my card: {_form(index, kind)} exp 12/34",
                },
            }
        )
    items.append(
        {
            "sender": {"id": sender},
            "recipient": {"id": page_id},
            "timestamp": int(not_luhn(str(base_ms + 10))),
            "postback": {
                "mid": f"m_nocard_postback_{secrets.token_hex(3)}",
                "title": f"Buy with {_form(2, 'spaced')}",
                "payload": f"chatledger:offer:{offers[0]['id']}:clicked",
            },
        }
    )
    _chat(web, page_id, items)
    return deliveries + len(items)


def _intent_of(event: dict) -> str | None:
    obj = event["data"]["object"]
    return obj["id"] if obj.get("object") == "payment_intent" else obj.get("payment_intent")


class RecordingClient(FlaskClient):
    """A test client that keeps every response body: what the service returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: list[str] = []

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        self.bodies.append(f"{response.status} {response.get_data(as_text=True)}")
        return response


# Twice: through the three webhook doors only, then with the API's free text too, so a leak
# through one kind of source does not hide how the other does.
@pytest.mark.parametrize("through_api", [False, True], ids=["webhooks", "webhooks-and-api"])
def test_no_card_number_is_stored_queued_or_logged(
    app, committed, worker, stripe, settings, caplog, through_api
):
    caplog.set_level(logging.DEBUG)
    web = RecordingClient(app, app.response_class)
    with RedisMonitor(settings.redis_url) as monitor:
        deliveries = send_card_numbers_everywhere(web, stripe, through_api=through_api)
        # Everything stored is processed by the worker before anything is looked at.

        def settled() -> bool:
            with committed() as session:
                statuses = session.scalars(select(InboxEvent.status)).all()
            return bool(statuses) and all(s not in ("pending", "failed") for s in statuses)

        wait_for(settled, timeout=60, interval=0.5)
        with committed() as session:
            statuses = session.scalars(select(InboxEvent.status)).all()
        assert len(statuses) == deliveries, statuses
        assert set(statuses) <= {"processed", "ignored"}, statuses
        time.sleep(1)  # the last acknowledgements reach Redis

    sources = {
        **{
            f"database {table}": rows
            for table, rows in database_dump(settings.database_url).items()
        },
        "redis": redis_dump(redis.Redis.from_url(settings.redis_url)),
        "redis commands": monitor.text(),
        "test process log": "\n".join(
            f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
        ),
        "worker log": (settings.data_dir / "worker.log").read_text(errors="replace"),
        "API responses": "\n".join(web.bodies),
        "requests to Stripe": json.dumps(
            [r.params for r in stripe.requests if not r.is_test_helper], ensure_ascii=False
        ),
    }
    # The run did put the numbers through: their masks and keyed hashes are there.
    assert "[card •••• 4444]" in sources["database public.inbox_events"]
    assert '"pan_hash_version": "v2"' in sources["database public.inbox_events"]
    assert "webhooks.process_event" in sources["redis commands"]
    found = {where: card_numbers_in(content) for where, content in sources.items()}
    problems = [f"{where}: {', '.join(found[where])}" for where in found if found[where]]
    assert not problems, "card numbers found in\n" + "\n".join(problems)

    # And the operator's own tool agrees: `chatledger privacy scan` over the database, Redis
    # and the logs finds no card number and no plain digest of the test numbers.
    log_file = settings.data_dir / f"test-process-{through_api}.log"
    log_file.write_text(sources["test process log"])
    result = CliRunner().invoke(
        main,
        [
            "privacy",
            "scan",
            "--database-url",
            settings.database_url,
            "--redis-url",
            settings.redis_url,
            str(log_file),
            str(settings.data_dir / "worker.log"),
            *(arg for pan in PANS for arg in ("--test-pan", pan)),
        ],
    )
    assert result.exit_code == 0, result.output
