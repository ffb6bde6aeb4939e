"""A local HTTP server that answers like Stripe's v1 API, for tests.

The product talks to Stripe only through the official ``stripe`` SDK. In the
tests that SDK is pointed at this server instead of api.stripe.com::

    with StripeServer() as server:
        client = stripe.StripeClient("sk_test_123", base_addresses={"api": server.url})
        intent = client.v1.payment_intents.create(params={"amount": 1250, "currency": "usd"})
        server.succeed(intent.id)

What it keeps of Stripe's behaviour, because the product depends on it:

* form-encoded bodies with nested keys (``metadata[sale_id]=...``,
  ``expand[0]=latest_charge``), JSON answers shaped like Stripe's objects and
  Stripe's error bodies (``{"error": {"type", "message", "param", "code"}}``);
* ``Authorization: Bearer sk_test_...`` on every request (live keys are refused);
* idempotency: a replayed ``Idempotency-Key`` with the same parameters answers
  the stored response (same object id, ``Idempotent-Replayed: true``) and
  creates nothing; the same key with other parameters or on another endpoint
  is a 400 ``idempotency_error``;
* the money rules of PaymentIntents, charges and refunds (no refund above what
  is left of the captured amount, partial capture releases the rest, ...);
* an event log (``GET /v1/events``) written as Stripe would write it;
* ``Stripe-Account`` scoping: an object created for a connected account is
  invisible without that header, exactly like an id that does not exist;
* balance transactions for captures, refunds and disputes, and payouts made of
  them (``GET /v1/balance_transactions?payout=po_...`` lists a payout's lines,
  its own ``payout`` line included, as Stripe does for automatic payouts).

What a real customer does in a browser (entering a card, a decline) is driven
from the tests: ``server.succeed(pi_id)`` / ``server.fail(pi_id)``, or the same
over HTTP at ``POST /_test/payment_intents/{id}/succeed`` and ``/fail``. What the
card network and Stripe's scheduler do is driven the same way: ``server.dispute(ch_id)``
(``POST /_test/charges/{id}/dispute``) and ``server.pay_out(account=...)``
(``POST /_test/payouts``), which emits ``payout.created`` and ``payout.paid``.
Faults are injected with ``server.fail_next(...)``.

Every object template is written here in code: the server never reads
``../shared/data`` (tests compare its objects with Stripe's example objects
there, see ``tests/test_stripe_server.py``).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import http.server
import json
import re
import secrets
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "CARD_AMEX",
    "CARD_MASTERCARD",
    "CARD_VISA",
    "CARD_VISA_DEBIT",
    "DEFAULT_API_VERSION",
    "Card",
    "RecordedRequest",
    "StripeApiError",
    "StripeServer",
    "parse_form",
]

#: The API version stamped on events; the one the installed SDK (16.x) pins.
DEFAULT_API_VERSION: Final = "2026-10-28.endive"

JSON = dict[str, Any]

_MAX_BODY_BYTES: Final = 1 << 20
_MAX_KEY_DEPTH: Final = 8
_MAX_IDEMPOTENCY_KEY: Final = 255
_MAX_AMOUNT: Final = 99_999_999
_METADATA_MAX_KEYS: Final = 50
_METADATA_MAX_KEY_LEN: Final = 40
_METADATA_MAX_VALUE_LEN: Final = 500
_STATEMENT_DESCRIPTOR_MAX: Final = 22
_TEST_HELPER_PREFIX: Final = "/_test/"

# Stripe's minimum charge amounts, in minor units, for the currencies where
# the product is most likely to sell. Other currencies only need amount >= 1.
_MIN_CHARGE: Final[Mapping[str, int]] = {
    "usd": 50, "eur": 50, "gbp": 30, "jpy": 50, "cad": 50, "aud": 50, "nzd": 50,
    "chf": 50, "sgd": 50, "brl": 50, "inr": 50, "hkd": 400, "sek": 300, "nok": 300,
    "dkk": 250, "pln": 200, "ron": 200, "bgn": 100, "czk": 1500, "huf": 17500,
    "mxn": 1000, "myr": 200, "thb": 1000, "aed": 200,
}  # fmt: skip
# Stripe takes three-decimal currencies in minor units but requires the last
# digit to be 0 (amounts are rounded to the nearest ten by the networks).
_THREE_DECIMAL: Final = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

_CANCELABLE: Final = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
_PAYABLE: Final = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
)

# Top-level parameters each endpoint accepts (Stripe answers "Received unknown
# parameter" for anything else). Parameters Stripe accepts but this server does
# not simulate (they need a browser, a customer object or a mandate) are
# refused with a message that says so, rather than silently ignored.
_PI_CREATE_PARAMS: Final = frozenset({
    "amount", "application_fee_amount", "automatic_payment_methods", "capture_method",
    "confirm", "confirmation_method", "confirmation_token", "currency", "customer",
    "description", "error_on_requires_action", "excluded_payment_method_types", "expand",
    "mandate", "mandate_data", "metadata", "off_session", "on_behalf_of", "payment_method",
    "payment_method_configuration", "payment_method_data", "payment_method_options",
    "payment_method_types", "radar_options", "receipt_email", "return_url",
    "setup_future_usage", "shipping", "statement_descriptor", "statement_descriptor_suffix",
    "transfer_data", "transfer_group", "use_stripe_sdk",
})  # fmt: skip
_PI_UPDATE_PARAMS: Final = frozenset({
    "amount", "application_fee_amount", "capture_method", "currency", "customer",
    "description", "expand", "metadata", "payment_method", "payment_method_data",
    "payment_method_options", "payment_method_types", "receipt_email", "setup_future_usage",
    "shipping", "statement_descriptor", "statement_descriptor_suffix", "transfer_data",
    "transfer_group",
})  # fmt: skip
_PI_CAPTURE_PARAMS: Final = frozenset({
    "amount_to_capture", "application_fee_amount", "expand", "final_capture", "metadata",
    "statement_descriptor", "statement_descriptor_suffix", "transfer_data",
})  # fmt: skip
_PI_CANCEL_PARAMS: Final = frozenset({"cancellation_reason", "expand"})
_REFUND_CREATE_PARAMS: Final = frozenset({
    "amount", "charge", "currency", "customer", "expand", "instructions_email", "metadata",
    "origin", "payment_intent", "reason", "refund_application_fee", "reverse_transfer",
})  # fmt: skip
_RETRIEVE_PARAMS: Final = frozenset({"expand"})
_PI_RETRIEVE_PARAMS: Final = frozenset({"expand", "client_secret"})
_BALANCE_LIST_PARAMS: Final = frozenset({
    "created", "currency", "ending_before", "expand", "limit", "payout", "source",
    "starting_after", "type",
})  # fmt: skip
_EVENT_LIST_PARAMS: Final = frozenset({
    "created", "delivery_success", "ending_before", "expand", "limit", "starting_after",
    "type", "types",
})  # fmt: skip
_UNSIMULATED: Final = frozenset({
    "confirm", "confirmation_token", "error_on_requires_action", "mandate", "mandate_data",
    "off_session", "payment_method_data", "radar_options", "return_url", "use_stripe_sdk",
    "instructions_email", "origin", "refund_application_fee", "reverse_transfer",
    "final_capture", "customer",
})  # fmt: skip

# Fields that `expand[]` may replace with the object they name, per object type.
_EXPANDABLE: Final[Mapping[str, frozenset[str]]] = {
    "payment_intent": frozenset({
        "application", "customer", "latest_charge", "on_behalf_of", "payment_method",
        "review", "source",
    }),
    "charge": frozenset({
        "application", "application_fee", "balance_transaction", "customer",
        "failure_balance_transaction", "on_behalf_of", "payment_intent", "review",
        "source_transfer",
    }),
    "refund": frozenset({
        "balance_transaction", "charge", "failure_balance_transaction", "payment_intent",
        "source_transfer_reversal", "transfer_reversal",
    }),
    "balance_transaction": frozenset({"source"}),
    "payout": frozenset({
        "application_fee", "balance_transaction", "destination", "failure_balance_transaction",
        "original_payout", "payout_method", "reversed_by",
    }),
    "dispute": frozenset({"charge", "payment_intent"}),
}  # fmt: skip

# What an expanded field becomes, where this server holds that type of object.
_EXPANDS_TO: Final[Mapping[tuple[str, str], str]] = {
    ("payment_intent", "latest_charge"): "charge",
    ("charge", "balance_transaction"): "balance_transaction",
    ("charge", "failure_balance_transaction"): "balance_transaction",
    ("charge", "payment_intent"): "payment_intent",
    ("refund", "balance_transaction"): "balance_transaction",
    ("refund", "failure_balance_transaction"): "balance_transaction",
    ("refund", "charge"): "charge",
    ("refund", "payment_intent"): "payment_intent",
    ("payout", "balance_transaction"): "balance_transaction",
    ("payout", "failure_balance_transaction"): "balance_transaction",
    ("payout", "original_payout"): "payout",
    ("payout", "reversed_by"): "payout",
    ("dispute", "charge"): "charge",
    ("dispute", "payment_intent"): "payment_intent",
}
_MAX_EXPAND_DEPTH: Final = 4

_ALPHANUM: Final = string.ascii_letters + string.digits


def _random(length: int, alphabet: str = _ALPHANUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _new_id(prefix: str) -> str:
    """An id shaped like Stripe's: a type prefix and 24 base62 characters."""
    return f"{prefix}_{_random(24)}"


# --------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    """The card a simulated customer pays with: what Stripe reports, never a number.

    ``fingerprint`` is derived from brand and last4 when not given, so the
    same test card always has the same fingerprint, as on Stripe.
    """

    brand: str = "visa"
    last4: str = "4242"
    fingerprint: str | None = None
    exp_month: int = 12
    exp_year: int = 2034
    country: str = "US"
    funding: str = "credit"

    @property
    def resolved_fingerprint(self) -> str:
        if self.fingerprint:
            return self.fingerprint
        digest = hashlib.sha256(f"{self.brand}:{self.last4}".encode()).digest()
        return "".join(_ALPHANUM[b % len(_ALPHANUM)] for b in digest[:16])


# Stripe's documented test cards (by the last four digits Stripe reports).
CARD_VISA: Final = Card(brand="visa", last4="4242")
CARD_VISA_DEBIT: Final = Card(brand="visa", last4="5556", funding="debit")
CARD_MASTERCARD: Final = Card(brand="mastercard", last4="4444")
CARD_AMEX: Final = Card(brand="amex", last4="8431")


class _Headers(Mapping[str, str]):
    """Read-only, case-insensitive view of request headers (as HTTP wants)."""

    def __init__(self, items: Mapping[str, str] | list[tuple[str, str]]) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {k.lower(): (k, v) for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"_Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it, and what it answered.

    ``params`` are the form body (POST) or the query string (GET) parsed into
    nested dicts and lists, the way Stripe reads them. ``status`` is None when
    the connection was dropped on purpose (see ``StripeServer.fail_next``).
    """

    method: str
    path: str
    params: JSON
    headers: Mapping[str, str]
    status: int | None
    response: JSON | None
    replayed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    @property
    def stripe_account(self) -> str | None:
        return self.headers.get("Stripe-Account")

    @property
    def is_test_helper(self) -> bool:
        """True for the server's own ``/_test/`` endpoints, which are not Stripe's API."""
        return self.path.startswith(_TEST_HELPER_PREFIX)


class StripeApiError(Exception):
    """An error answered the way Stripe answers it.

    Raised by the HTTP handlers (and turned into the response body) and by the
    Python helpers such as ``StripeServer.succeed`` on a misuse.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # Stripe's own field name
        param: str | None = None,
        code: str | None = None,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.decline_code = decline_code

    def body(self) -> JSON:
        error: JSON = {"message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.decline_code is not None:
            error["decline_code"] = self.decline_code
        return {"error": error}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, param=param, code=code)


def _missing(kind: str, object_id: str, param: str) -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )


# --------------------------------------------------------------------------
# Form decoding (Stripe's "deep object" encoding)
# --------------------------------------------------------------------------

_KEY_HEAD = re.compile(r"[^\[\]]+")
_KEY_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def _split_key(raw: str) -> list[str]:
    """``metadata[sale_id]`` -> ``["metadata", "sale_id"]``; ``a[]`` -> ``["a", ""]``."""
    head = _KEY_HEAD.match(raw)
    if head is None:
        raise _invalid(f"Invalid parameter name: {raw!r}", param=raw)
    parts = [head.group(0)]
    pos = head.end()
    while pos < len(raw):
        segment = _KEY_SEGMENT.match(raw, pos)
        if segment is None:
            raise _invalid(f"Invalid parameter name: {raw!r}", param=raw)
        parts.append(segment.group(1))
        pos = segment.end()
    if len(parts) > _MAX_KEY_DEPTH:
        raise _invalid(f"Parameter nested too deeply: {raw!r}", param=parts[0])
    return parts


def _conflicting(name: str) -> StripeApiError:
    return _invalid(f"Invalid hash: {name} was given both as a value and as a hash", param=name)


def _listify(node: Any, *, keep_dict: bool = False) -> Any:
    """Turn dicts keyed ``"0".."n-1"`` (the SDK's ``a[0]=..`` arrays) into lists.

    ``metadata`` stays a dict whatever its keys: there ``"0"`` is a key, not an index.
    """
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value, keep_dict=(key == "metadata")) for key, value in node.items()}
    if not keep_dict and converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


def parse_form(pairs: list[tuple[str, str]]) -> JSON:
    """Nest decoded form pairs the way Stripe does.

    ``[("metadata[a]", "1"), ("expand[0]", "x")]`` -> ``{"metadata": {"a": "1"}, "expand": ["x"]}``.
    A repeated key keeps its last value; ``a[]`` appends.
    """
    root: JSON = {}
    for raw_key, value in pairs:
        parts = _split_key(raw_key)
        node = root
        for depth, part in enumerate(parts):
            key = str(len(node)) if part == "" else part
            last = depth == len(parts) - 1
            if last:
                if isinstance(node.get(key), dict):
                    raise _conflicting(parts[0])
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise _conflicting(parts[0])
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _parse_body(content_type: str, body: bytes) -> JSON:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if body and media_type != "application/x-www-form-urlencoded":
        raise _invalid(
            f"Invalid request: unsupported Content-Type {media_type or '(none)'}. "
            "Stripe's v1 API takes application/x-www-form-urlencoded bodies."
        )
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"Invalid request body: {exc}") from exc
    return parse_form(pairs)


# --------------------------------------------------------------------------
# Parameter coercion (everything arrives as strings)
# --------------------------------------------------------------------------


def _check_known(params: JSON, allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise _invalid(f"Received unknown parameter: {name}", param=name)
    for name in sorted(_UNSIMULATED & params.keys()):
        if name == "confirm" and params[name] == "false":
            continue
        raise _invalid(
            f"The Stripe test server accepts '{name}' as Stripe does but does not simulate it; "
            "extend tests/support/stripe_server.py if the product needs it.",
            param=name,
        )


def _as_str(params: JSON, name: str, *, max_len: int | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {name} must be a string", param=name)
    if max_len is not None and len(value) > max_len:
        raise _invalid(f"Invalid {name}: must be at most {max_len} characters long", param=name)
    return value or None  # Stripe treats "" as "unset" for optional strings


def _as_int(params: JSON, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {value}", param=name)
    return int(value)


def _as_bool(value: Any, name: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(f"Invalid boolean: {value}", param=name)


def _as_enum(params: JSON, name: str, choices: tuple[str, ...]) -> str | None:
    value = _as_str(params, name)
    if value is not None and value not in choices:
        raise _invalid(f"Invalid {name}: must be one of {', '.join(choices)}", param=name)
    return value


def _as_str_list(params: JSON, name: str) -> list[str] | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"Invalid array: {name} must be an array of strings", param=name)
    return list(value)


def _as_metadata(params: JSON, current: Mapping[str, str] | None = None) -> dict[str, str]:
    """Apply Stripe's metadata rules: merge into `current`, "" deletes a key or clears all."""
    merged = dict(current or {})
    value = params.get("metadata")
    if value is None:
        return merged
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid metadata: metadata must be a hash of strings", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(
                f"Invalid metadata[{key}]: values must be strings", param=f"metadata[{key}]"
            )
        if len(key) > _METADATA_MAX_KEY_LEN:
            raise _invalid(
                f"Invalid metadata: keys can be at most {_METADATA_MAX_KEY_LEN} characters long",
                param=f"metadata[{key}]",
            )
        if len(item) > _METADATA_MAX_VALUE_LEN:
            raise _invalid(
                f"Invalid metadata: values can be at most {_METADATA_MAX_VALUE_LEN} characters",
                param=f"metadata[{key}]",
            )
        if item == "":
            merged.pop(key, None)
        else:
            merged[key] = item
    if len(merged) > _METADATA_MAX_KEYS:
        raise _invalid(
            f"Invalid metadata: metadata can have at most {_METADATA_MAX_KEYS} keys",
            param="metadata",
        )
    return merged


def _check_amount(amount: int, currency: str, param: str = "amount") -> None:
    if amount < 1:
        raise _invalid("This value must be greater than or equal to 1.", param=param)
    if amount > _MAX_AMOUNT:
        raise _invalid(
            f"Amount must be no more than {_MAX_AMOUNT}", param=param, code="amount_too_large"
        )
    minimum = _MIN_CHARGE.get(currency, 1)
    if amount < minimum:
        raise _invalid(
            f"Amount must be at least {minimum} {currency} (in the currency's minor unit)",
            param=param,
            code="amount_too_small",
        )
    if currency in _THREE_DECIMAL and amount % 10:
        raise _invalid(
            f"Amounts in {currency} must be multiples of 10 (the last digit must be 0)",
            param=param,
        )


def _as_currency(params: JSON, name: str = "currency") -> str | None:
    value = _as_str(params, name)
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise _invalid(f"Invalid currency: {value}", param=name)
    return value.lower()  # Stripe takes "USD" and answers "usd"


#: Stripe's US dispute fee, withdrawn with the disputed amount (applied to every currency).
_DISPUTE_FEE: Final = 1500


def _stripe_fee(amount: int) -> int:
    """Stripe's US card pricing, 2.9% + 30 minor units, rounded half up.

    Applied to every currency: tests must read fees from balance transactions,
    never recompute them.
    """
    return (amount * 29 + 500) // 1000 + 30


# --------------------------------------------------------------------------
# Server internals
# --------------------------------------------------------------------------


@dataclass
class _Stored:
    obj: JSON
    account: str | None


@dataclass
class _Fault:
    status: int | None
    applied: bool
    path_prefix: str | None


@dataclass(frozen=True)
class _Ctx:
    """Who is asking: the connected account (None: the platform) and the request."""

    account: str | None
    request_id: str | None = None
    idempotency_key: str | None = None


@dataclass
class _IdempotentResult:
    method: str
    path: str
    params: JSON
    status: int
    body: bytes


@dataclass
class _Response:
    status: int
    payload: JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None  # set for idempotent replays: the exact stored bytes


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # name of the StripeServer method
    answers: str  # object type of the answer ("list:event" for a list), for expand[]


_PI = r"/v1/payment_intents/(?P<intent>[^/]+)"
_ROUTES: Final[tuple[_Route, ...]] = tuple(
    _Route(method, re.compile(f"^{pattern}$"), handler, answers)
    for method, pattern, handler, answers in (
        ("POST", r"/v1/payment_intents", "_create_payment_intent", "payment_intent"),
        ("GET", _PI, "_retrieve_payment_intent", "payment_intent"),
        ("POST", _PI, "_update_payment_intent", "payment_intent"),
        ("POST", f"{_PI}/cancel", "_cancel_payment_intent", "payment_intent"),
        ("POST", f"{_PI}/capture", "_capture_payment_intent", "payment_intent"),
        ("POST", r"/v1/refunds", "_create_refund", "refund"),
        ("GET", r"/v1/refunds/(?P<refund>[^/]+)", "_retrieve_refund", "refund"),
        ("GET", r"/v1/charges/(?P<charge>[^/]+)", "_retrieve_charge", "charge"),
        (
            "GET",
            r"/v1/balance_transactions",
            "_list_balance_transactions",
            "list:balance_transaction",
        ),
        (
            "GET",
            r"/v1/balance_transactions/(?P<id>[^/]+)",
            "_retrieve_balance_transaction",
            "balance_transaction",
        ),
        ("GET", r"/v1/payouts/(?P<payout>[^/]+)", "_retrieve_payout", "payout"),
        ("GET", r"/v1/disputes/(?P<dispute>[^/]+)", "_retrieve_dispute", "dispute"),
        ("GET", r"/v1/events", "_list_events", "list:event"),
        ("GET", r"/v1/events/(?P<id>[^/]+)", "_retrieve_event", "event"),
        (
            "POST",
            r"/_test/payment_intents/(?P<intent>[^/]+)/succeed",
            "_http_succeed",
            "payment_intent",
        ),
        ("POST", r"/_test/payment_intents/(?P<intent>[^/]+)/fail", "_http_fail", "payment_intent"),
        ("POST", r"/_test/charges/(?P<charge>[^/]+)/dispute", "_http_dispute", "dispute"),
        ("POST", r"/_test/payouts", "_http_pay_out", "payout"),
    )
)


class _Drop:
    """Answer: close the connection without a response (an injected network failure)."""


_DROP: Final = _Drop()


class _HTTPServer(http.server.ThreadingHTTPServer):
    """Keeps track of open connections so that stop() can close idle keep-alives."""

    # Join handler threads on close instead of leaving daemon threads behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], app: StripeServer) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects
    # No idle timeout: closing a keep-alive connection the SDK is about to reuse
    # would make a request fail at random. stop() closes the idle ones.
    timeout = None
    # Headers and body go out in two writes; without this, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY_BYTES:
            status = 413 if length > 0 else 400
            self._write(
                StripeApiError(status, "Invalid or too large Content-Length").body(), status
            )
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers = _Headers(list(self.headers.items()))
        outcome = self.server.app._handle(method, self.path, headers, body)
        if isinstance(outcome, _Drop):
            # Simulate a network failure: no status line, the socket just closes.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = outcome.body if outcome.body is not None else _dumps(outcome.payload)
        self.send_response(outcome.status)
        self.send_header("Content-Type", "application/json")
        for name, value in outcome.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _write(self, payload: JSON, status: int) -> None:
        data = _dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; requests are recorded on the server."""


def _dumps(payload: JSON) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True).encode()


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


class StripeServer:
    """A Stripe v1 API stand-in on ``http://127.0.0.1:<free port>``.

    :param api_key: if given, the only secret key accepted; otherwise any
        ``sk_test_...`` / ``rk_test_...`` key is (live keys never are).
    :param api_version: stamped on events as ``api_version``.
    :param clock: seconds since the epoch; ``created`` fields and event
        filters use it (see also ``advance_clock``).
    :param host: interface to listen on; the port is always a free one.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
    ) -> None:
        self._api_key = api_key
        self._api_version = api_version
        self._clock = clock
        self._clock_offset = 0
        self._host = host
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._init_state()

    def _init_state(self) -> None:
        self._objects: dict[str, _Stored] = {}
        self._events: list[_Stored] = []  # oldest first
        self._requests: list[RecordedRequest] = []
        self._idempotency: dict[tuple[str | None, str], _IdempotentResult] = {}
        self._faults: deque[_Fault] = deque()
        # Per charge: the uncaptured amount released by a partial capture or a
        # cancel. Stripe counts it in charge.amount_refunded, but it was never
        # captured, so it cannot be refunded again.
        self._released: dict[str, int] = {}
        # Balance transaction id -> the payout that paid it out (its own `payout` line too).
        self._paid_out: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> StripeServer:
        if self._httpd is not None:
            raise RuntimeError("StripeServer already started")
        self._httpd = _HTTPServer((self._host, 0), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"stripe-test-server:{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()  # stop accepting; returns once serve_forever has exited
        # Wake handler threads blocked reading an idle keep-alive connection.
        with httpd.connections_lock:
            open_connections = list(httpd.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> StripeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API base to give the SDK as ``base_addresses={"api": url}`` (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("StripeServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every object, event, recorded request, idempotency key and pending fault."""
        with self._lock:
            self._init_state()

    # -- inspection ----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[JSON]:
        """Every event recorded so far, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(e.obj) for e in self._events]

    def get(self, object_id: str) -> JSON:
        """The current state of any object the server holds, by id (a copy)."""
        with self._lock:
            stored = self._objects.get(object_id)
            if stored is None:
                raise KeyError(object_id)
            return copy.deepcopy(stored.obj)

    def objects(self, object_type: str) -> list[JSON]:
        """All objects of one type (``"payment_intent"``, ``"refund"``...), oldest first."""
        with self._lock:
            return [
                copy.deepcopy(s.obj)
                for s in self._objects.values()
                if s.obj["object"] == object_type
            ]

    def now(self) -> int:
        return int(self._clock()) + self._clock_offset

    def advance_clock(self, seconds: int) -> None:
        """Move the server's time forward (objects and events created after it are later)."""
        with self._lock:
            self._clock_offset += seconds

    # -- driving the simulated customer --------------------------------------

    def succeed(
        self, payment_intent_id: str, *, card: Card | Mapping[str, Any] | None = None
    ) -> JSON:
        """The customer pays: authorize (and capture, unless capture_method is manual).

        Creates a charge with ``payment_method_details.card`` from ``card`` and,
        when captured, its balance transaction. Returns the PaymentIntent.
        """
        with self._lock:
            stored = self._find(
                payment_intent_id, "payment_intent", "intent", None, any_account=True
            )
            return copy.deepcopy(self._succeed(stored, _coerce_card(card)))

    def fail(
        self,
        payment_intent_id: str,
        *,
        code: str = "card_declined",
        decline_code: str | None = "generic_decline",
        message: str = "Your card was declined.",
        card: Card | Mapping[str, Any] | None = None,
    ) -> JSON:
        """The customer's payment attempt is declined: a failed charge, and the intent
        goes back to ``requires_payment_method`` with ``last_payment_error`` set."""
        with self._lock:
            stored = self._find(
                payment_intent_id, "payment_intent", "intent", None, any_account=True
            )
            return copy.deepcopy(
                self._fail(stored, _coerce_card(card), code, decline_code, message)
            )

    def dispute(
        self, charge_or_intent_id: str, *, amount: int | None = None, reason: str = "fraudulent"
    ) -> JSON:
        """The cardholder disputes a captured charge (given by its id or its PaymentIntent's).

        As on Stripe: a dispute in ``needs_response``, the disputed amount and the dispute
        fee withdrawn in one ``adjustment`` balance transaction whose source is the dispute,
        ``charge.dispute.created`` and ``charge.dispute.funds_withdrawn``. Returns the dispute.
        """
        with self._lock:
            stored = self._charge_of(charge_or_intent_id)
            return copy.deepcopy(self._dispute(stored, amount, reason))

    def pay_out(
        self,
        *,
        account: str | None = None,
        currency: str | None = None,
        balance_transactions: list[str] | None = None,
        fees: list[int] | tuple[int, ...] = (),
        amount: int | None = None,
    ) -> JSON:
        """Stripe's scheduler pays the account's balance out: a paid payout.

        :param account: the connected account (None: the platform).
        :param currency: the payout's currency; default: that of the oldest unpaid line.
        :param balance_transactions: which lines to pay out, by balance transaction id or
            by their source (a charge, refund or dispute id); default: every line of the
            account in that currency not paid out yet.
        :param fees: extra ``stripe_fee`` lines (positive amounts, withdrawn), without a
            source, like Stripe's billing fees.
        :param amount: the payout's amount when it must not be the lines' net (a payout that
            does not add up, for reconciliation tests); default: the sum of the lines' net.

        Emits ``payout.created`` and ``payout.paid``; the lines are then listed by
        ``GET /v1/balance_transactions?payout=<id>``, with the payout's own ``payout`` line.
        """
        with self._lock:
            return copy.deepcopy(
                self._pay_out(account, currency, balance_transactions, list(fees), amount)
            )

    # -- fault injection -----------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = 500,
        applied: bool = False,
        path_prefix: str | None = None,
    ) -> None:
        """Make the next ``n`` API requests fail.

        :param status: the HTTP status to answer (500: Stripe's ``api_error``),
            or None to close the connection without any answer (the SDK raises
            ``APIConnectionError`` at once; nothing hangs).
        :param applied: False: the request is not carried out. True: it is
            carried out (objects created, events written, the idempotent result
            stored) and only the answer is lost, as when a network drops the
            response, so a retry with the same Idempotency-Key replays it.
        :param path_prefix: only requests whose path starts with it fail.

        The server's ``/_test/`` helpers are never failed.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599) or None")
        with self._lock:
            for _ in range(n):
                self._faults.append(_Fault(status, applied, path_prefix))

    # -- request handling ----------------------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: _Headers, body: bytes
    ) -> _Response | _Drop:
        split = urlsplit(raw_path)
        path = split.path
        with self._lock:
            params: JSON = {}
            try:
                if method == "GET":
                    params = parse_form(parse_qsl(split.query, keep_blank_values=True))
                else:
                    params = _parse_body(headers.get("Content-Type", ""), body)
            except StripeApiError as exc:
                response: _Response | _Drop = _Response(exc.status, exc.body())
            else:
                fault = self._take_fault(path)
                if fault is not None and not fault.applied:
                    response = self._fault_response(fault)
                else:
                    response = self._process(method, path, params, headers)
                    if fault is not None:
                        response = self._fault_response(fault)
            self._record(method, path, params, headers, response)
            return response

    def _take_fault(self, path: str) -> _Fault | None:
        if path.startswith(_TEST_HELPER_PREFIX):
            return None
        for fault in self._faults:
            if fault.path_prefix is None or path.startswith(fault.path_prefix):
                self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> _Response | _Drop:
        if fault.status is None:
            return _DROP
        if fault.status == 429:
            error = StripeApiError(
                429,
                "Request rate limit exceeded. (injected by the Stripe test server)",
                code="rate_limit",
            )
        else:
            error = StripeApiError(
                fault.status,
                "An unknown error occurred (injected by the Stripe test server)",
                type="api_error",
            )
        return _Response(fault.status, error.body(), [("Request-Id", "req_" + _random(14))])

    def _record(
        self, method: str, path: str, params: JSON, headers: _Headers, response: _Response | _Drop
    ) -> None:
        if isinstance(response, _Response):
            body = response.body if response.body is not None else _dumps(response.payload)
            replayed = any(h == ("Idempotent-Replayed", "true") for h in response.headers)
            entry = RecordedRequest(
                method,
                path,
                copy.deepcopy(params),
                headers,
                response.status,
                json.loads(body),
                replayed,
            )
        else:
            entry = RecordedRequest(method, path, copy.deepcopy(params), headers, None, None)
        self._requests.append(entry)

    def _process(self, method: str, path: str, params: JSON, headers: _Headers) -> _Response:
        request_id = "req_" + _random(14)
        version = headers.get("Stripe-Version") or self._api_version
        base_headers = [("Request-Id", request_id), ("Stripe-Version", version)]
        account = headers.get("Stripe-Account") or None
        # Stripe applies idempotency to POSTs only; a key on a GET is ignored.
        key = (headers.get("Idempotency-Key") or None) if method == "POST" else None
        try:
            self._authenticate(headers.get("Authorization"))
            route, path_args = self._route(method, path)
            # Checked before the handler runs, so that a bad expand changes nothing.
            _check_expand(params, route.answers)
            if key is not None:
                replay = self._check_idempotency(account, key, method, path, params)
                if replay is not None:
                    return _Response(
                        replay.status,
                        {},
                        [*base_headers, ("Idempotency-Key", key), ("Idempotent-Replayed", "true")],
                        body=replay.body,
                    )
            ctx = _Ctx(account, request_id, key)
            handler = getattr(self, route.handler)
            payload = handler(ctx, params, **path_args)
        except StripeApiError as exc:
            return _Response(exc.status, exc.body(), base_headers)
        response = _Response(200, payload, base_headers)
        if key is not None:
            # Stripe stores the result of a request that executed; validation
            # errors are not stored, so the key can be used again after them.
            response.headers.append(("Idempotency-Key", key))
            self._idempotency[(account, key)] = _IdempotentResult(
                method, path, copy.deepcopy(params), 200, _dumps(payload)
            )
        return response

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "****"
        if scheme.lower() != "bearer" or not key:
            raise StripeApiError(401, "Invalid authorization header: use 'Bearer <secret key>'.")
        if key.startswith(("sk_live_", "rk_live_")):
            raise StripeApiError(
                401, f"Invalid API Key provided: {masked} (this test server refuses live keys)"
            )
        if not key.startswith(("sk_test_", "rk_test_")) or (
            self._api_key is not None and key != self._api_key
        ):
            raise StripeApiError(401, f"Invalid API Key provided: {masked}")

    @staticmethod
    def _route(method: str, path: str) -> tuple[_Route, dict[str, str]]:
        for route in _ROUTES:
            match = route.pattern.match(path)
            if match and route.method == method:
                return route, match.groupdict()
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    def _check_idempotency(
        self, account: str | None, key: str, method: str, path: str, params: JSON
    ) -> _IdempotentResult | None:
        if len(key) > _MAX_IDEMPOTENCY_KEY:
            raise StripeApiError(
                400,
                f"Invalid Idempotency-Key: must be at most {_MAX_IDEMPOTENCY_KEY} characters long",
                type="idempotency_error",
            )
        previous = self._idempotency.get((account, key))
        if previous is None:
            return None
        if (previous.method, previous.path) != (method, path):
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{previous.method} {previous.path}'). Try using a key other "
                f"than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        if previous.params != params:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        return previous

    # -- storage helpers -----------------------------------------------------

    def _put(self, obj: JSON, account: str | None) -> _Stored:
        stored = _Stored(obj, account)
        self._objects[obj["id"]] = stored
        return stored

    def _find(
        self,
        object_id: str,
        object_type: str,
        param: str,
        account: str | None,
        *,
        any_account: bool = False,
    ) -> _Stored:
        stored = self._objects.get(object_id)
        # Another account's object answers exactly like an id that does not exist.
        if (
            stored is None
            or stored.obj["object"] != object_type
            or (not any_account and stored.account != account)
        ):
            raise _missing(object_type, object_id, param)
        return stored

    def _emit(
        self,
        event_type: str,
        obj: JSON,
        account: str | None,
        ctx: _Ctx | None,
        previous_attributes: JSON | None = None,
    ) -> None:
        data: JSON = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        event: JSON = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": self._api_version,
            "created": self.now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": {
                "id": ctx.request_id if ctx else None,
                "idempotency_key": ctx.idempotency_key if ctx else None,
            },
            "type": event_type,
        }
        if account is not None:
            event["account"] = account  # only on Connect events, as on Stripe
        self._events.append(_Stored(event, account))

    def _render(self, obj: JSON, params: JSON, account: str | None) -> JSON:
        """A copy of `obj` for a response, with `expand[]` (already checked) applied."""
        rendered = copy.deepcopy(obj)
        for path in params.get("expand") or []:
            self._expand(rendered, path.split("."), account)
        return rendered

    def _expand(self, obj: JSON, path: list[str], account: str | None) -> None:
        head, rest = path[0], path[1:]
        if obj.get("object") == "list" and head == "data":
            for item in obj["data"]:
                if rest:
                    self._expand(item, rest, account)
            return
        value = obj.get(head)
        if isinstance(value, str):
            stored = self._objects.get(value)
            # Ids the server does not hold (a customer, an account) stay ids.
            if stored is not None and stored.account == account:
                obj[head] = value = copy.deepcopy(stored.obj)
        if rest and isinstance(value, dict):
            self._expand(value, rest, account)

    # -- payment intents -----------------------------------------------------

    def _create_payment_intent(self, ctx: _Ctx, params: JSON) -> JSON:
        _check_known(params, _PI_CREATE_PARAMS)
        amount = _as_int(params, "amount")
        if amount is None:
            raise _invalid(
                "Missing required param: amount.", param="amount", code="parameter_missing"
            )
        currency = _as_currency(params)
        if currency is None:
            raise _invalid(
                "Missing required param: currency.", param="currency", code="parameter_missing"
            )
        _check_amount(amount, currency)
        metadata = _as_metadata(params)
        capture_method = (
            _as_enum(params, "capture_method", ("automatic", "automatic_async", "manual"))
            or "automatic_async"
        )
        confirmation_method = (
            _as_enum(params, "confirmation_method", ("automatic", "manual")) or "automatic"
        )
        setup_future_usage = _as_enum(params, "setup_future_usage", ("on_session", "off_session"))
        payment_method_types = _as_str_list(params, "payment_method_types")
        automatic = params.get("automatic_payment_methods")
        if automatic is not None and payment_method_types is not None:
            raise _invalid(
                "You may only specify one of these parameters: automatic_payment_methods, "
                "payment_method_types.",
                param="automatic_payment_methods",
            )
        if automatic is not None:
            if not isinstance(automatic, dict) or "enabled" not in automatic:
                raise _invalid(
                    "Missing required param: automatic_payment_methods[enabled].",
                    param="automatic_payment_methods[enabled]",
                    code="parameter_missing",
                )
            unknown = set(automatic) - {"enabled", "allow_redirects"}
            if unknown:
                name = sorted(unknown)[0]
                raise _invalid(
                    f"Received unknown parameter: automatic_payment_methods[{name}]",
                    param=f"automatic_payment_methods[{name}]",
                )
            enabled = _as_bool(automatic["enabled"], "automatic_payment_methods[enabled]")
            redirects = _as_enum(automatic, "allow_redirects", ("always", "never")) or "always"
            automatic_field: JSON | None = (
                {"allow_redirects": redirects, "enabled": True} if enabled else None
            )
        elif payment_method_types is None:
            # Since API version 2023-08-16 automatic payment methods are the default.
            automatic_field = {"allow_redirects": "always", "enabled": True}
        else:
            automatic_field = None
        application_fee_amount = _as_int(params, "application_fee_amount")
        if application_fee_amount is not None and not 0 <= application_fee_amount <= amount:
            raise _invalid(
                "application_fee_amount must be between 0 and amount",
                param="application_fee_amount",
            )
        payment_method = _as_str(params, "payment_method")
        configuration_id = _as_str(params, "payment_method_configuration") or _new_id("pmc")
        descriptor_max = _STATEMENT_DESCRIPTOR_MAX

        pi_id = _new_id("pi")
        intent: JSON = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": application_fee_amount,
            "automatic_payment_methods": automatic_field,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{pi_id}_secret_{_random(25)}",
            "confirmation_method": confirmation_method,
            "created": self.now(),
            "currency": currency,
            "customer": None,
            "customer_account": None,
            "description": _as_str(params, "description"),
            "excluded_payment_method_types": _as_str_list(params, "excluded_payment_method_types"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "managed_payments": None,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": _as_str(params, "on_behalf_of"),
            "payment_method": payment_method,
            "payment_method_configuration_details": (
                {"id": configuration_id, "parent": None} if automatic_field else None
            ),
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": payment_method_types or ["card"],
            "processing": None,
            "receipt_email": _as_str(params, "receipt_email"),
            "review": None,
            "setup_future_usage": setup_future_usage,
            "shipping": params.get("shipping") or None,
            "source": None,
            "statement_descriptor": _as_str(params, "statement_descriptor", max_len=descriptor_max),
            "statement_descriptor_suffix": _as_str(
                params, "statement_descriptor_suffix", max_len=descriptor_max
            ),
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "transfer_data": params.get("transfer_data") or None,
            "transfer_group": _as_str(params, "transfer_group"),
        }
        self._put(intent, ctx.account)
        self._emit("payment_intent.created", intent, ctx.account, ctx)
        return self._render(intent, params, ctx.account)

    def _retrieve_payment_intent(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        _check_known(params, _PI_RETRIEVE_PARAMS)
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        return self._render(stored.obj, params, ctx.account)

    def _update_payment_intent(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        _check_known(params, _PI_UPDATE_PARAMS)
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        pi = stored.obj
        frozen = sorted(
            {"amount", "currency", "capture_method", "payment_method", "payment_method_types"}
            & params.keys()
        )
        if frozen and pi["status"] not in _PAYABLE:
            raise _invalid(
                f"This PaymentIntent's {', '.join(frozen)} could not be "
                f"updated because it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        # Everything is validated before anything is applied: a bad update changes nothing.
        changes: JSON = {
            "currency": _as_currency(params) or pi["currency"],
            "amount": _as_int(params, "amount") or pi["amount"],
            "metadata": _as_metadata(params, pi["metadata"]),
        }
        _check_amount(changes["amount"], changes["currency"])
        for name in ("description", "receipt_email", "transfer_group"):
            if name in params:
                changes[name] = _as_str(params, name)
        for name in ("statement_descriptor", "statement_descriptor_suffix"):
            if name in params:
                changes[name] = _as_str(params, name, max_len=_STATEMENT_DESCRIPTOR_MAX)
        for name in ("shipping", "transfer_data"):
            if name in params:
                changes[name] = params[name] or None
        if "capture_method" in params:
            changes["capture_method"] = (
                _as_enum(params, "capture_method", ("automatic", "automatic_async", "manual"))
                or pi["capture_method"]
            )
        if "setup_future_usage" in params:
            changes["setup_future_usage"] = _as_enum(
                params, "setup_future_usage", ("on_session", "off_session")
            )
        if "payment_method_types" in params:
            changes["payment_method_types"] = _as_str_list(params, "payment_method_types")
            changes["automatic_payment_methods"] = None
        if "application_fee_amount" in params:
            fee = _as_int(params, "application_fee_amount")
            if fee is not None and not 0 <= fee <= changes["amount"]:
                raise _invalid(
                    "application_fee_amount must be between 0 and amount",
                    param="application_fee_amount",
                )
            changes["application_fee_amount"] = fee
        if "payment_method" in params:
            changes["payment_method"] = _as_str(params, "payment_method")
            if changes["payment_method"] and pi["status"] == "requires_payment_method":
                changes["status"] = "requires_confirmation"
        pi.update(changes)
        return self._render(pi, params, ctx.account)

    def _cancel_payment_intent(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        _check_known(params, _PI_CANCEL_PARAMS)
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        pi = stored.obj
        reason = _as_enum(
            params,
            "cancellation_reason",
            ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
        )
        if pi["status"] not in _CANCELABLE:
            raise _invalid(
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. "
                "Only a PaymentIntent with one of the following statuses may be canceled: "
                f"{', '.join(_CANCELABLE)}.",
                code="payment_intent_unexpected_state",
            )
        if pi["status"] == "requires_capture":
            # Canceling an authorization releases it: the charge shows the whole
            # amount as refunded, and Stripe sends charge.refunded.
            charge = self._objects[pi["latest_charge"]].obj
            previous = {
                "amount_refunded": charge["amount_refunded"],
                "refunded": charge["refunded"],
            }
            self._released[charge["id"]] = charge["amount"]
            charge["amount_refunded"] = charge["amount"]
            charge["refunded"] = True
            self._emit("charge.refunded", charge, stored.account, ctx, previous)
        pi["status"] = "canceled"
        pi["canceled_at"] = self.now()
        pi["cancellation_reason"] = reason
        pi["amount_capturable"] = 0
        self._emit("payment_intent.canceled", pi, stored.account, ctx)
        return self._render(pi, params, ctx.account)

    def _capture_payment_intent(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        _check_known(params, _PI_CAPTURE_PARAMS)
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        pi = stored.obj
        if pi["status"] != "requires_capture":
            raise _invalid(
                "This PaymentIntent could not be captured because it has a status of "
                f"{pi['status']}. Only a PaymentIntent with one of the following statuses may "
                "be captured: requires_capture.",
                code="payment_intent_unexpected_state",
            )
        to_capture = _as_int(params, "amount_to_capture")
        if to_capture is None:
            to_capture = pi["amount_capturable"]
        if not 1 <= to_capture <= pi["amount_capturable"]:
            raise _invalid(
                f"The amount_to_capture must be between 1 and the amount capturable "
                f"({pi['amount_capturable']}).",
                param="amount_to_capture",
                code="amount_too_large" if to_capture > pi["amount_capturable"] else None,
            )
        pi["metadata"] = _as_metadata(params, pi["metadata"])
        charge = self._objects[pi["latest_charge"]].obj
        previous = {
            "amount_captured": charge["amount_captured"],
            "captured": charge["captured"],
            "balance_transaction": charge["balance_transaction"],
        }
        self._capture_charge(charge, to_capture, stored.account, ctx)
        if to_capture < charge["amount"]:
            # The rest of the authorization is released, shown as refunded.
            released = charge["amount"] - to_capture
            self._released[charge["id"]] = released
            charge["amount_refunded"] = released
            previous["amount_refunded"] = 0
        self._emit("charge.captured", charge, stored.account, ctx, previous)
        pi["amount_capturable"] = 0
        pi["amount_received"] = to_capture
        pi["status"] = "succeeded"
        self._emit("payment_intent.succeeded", pi, stored.account, ctx)
        return self._render(pi, params, ctx.account)

    # -- the simulated customer ------------------------------------------------

    def _http_succeed(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        unknown = set(params) - {"card", "expand"}
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(f"Received unknown parameter: {name}", param=name)
        card_params = params.get("card") or {}
        if not isinstance(card_params, dict):
            raise _invalid("card must be a hash", param="card")
        return self._render(self._succeed(stored, _coerce_card(card_params)), params, ctx.account)

    def _http_fail(self, ctx: _Ctx, params: JSON, intent: str) -> JSON:
        stored = self._find(intent, "payment_intent", "intent", ctx.account)
        unknown = set(params) - {"card", "code", "decline_code", "message", "expand"}
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(f"Received unknown parameter: {name}", param=name)
        card_params = params.get("card") or {}
        if not isinstance(card_params, dict):
            raise _invalid("card must be a hash", param="card")
        failed = self._fail(
            stored,
            _coerce_card(card_params),
            _as_str(params, "code") or "card_declined",
            _as_str(params, "decline_code") or "generic_decline",
            _as_str(params, "message") or "Your card was declined.",
        )
        return self._render(failed, params, ctx.account)

    def _succeed(self, stored: _Stored, card: Card) -> JSON:
        pi = stored.obj
        if pi["status"] not in _PAYABLE:
            raise _invalid(
                f"PaymentIntent {pi['id']} cannot be paid: it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        manual = pi["capture_method"] == "manual"
        charge = self._new_charge(pi, card, paid=True)
        self._put(charge, stored.account)
        pi["latest_charge"] = charge["id"]
        pi["payment_method"] = charge["payment_method"]
        pi["last_payment_error"] = None
        if manual:
            self._emit("charge.succeeded", charge, stored.account, None)
            pi["status"] = "requires_capture"
            pi["amount_capturable"] = pi["amount"]
            self._emit("payment_intent.amount_capturable_updated", pi, stored.account, None)
        else:
            self._capture_charge(charge, pi["amount"], stored.account, None)
            self._emit("charge.succeeded", charge, stored.account, None)
            pi["status"] = "succeeded"
            pi["amount_received"] = pi["amount"]
            self._emit("payment_intent.succeeded", pi, stored.account, None)
        return pi

    def _fail(
        self, stored: _Stored, card: Card, code: str, decline_code: str | None, message: str
    ) -> JSON:
        pi = stored.obj
        if pi["status"] not in _PAYABLE:
            raise _invalid(
                f"PaymentIntent {pi['id']} cannot be paid: it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        charge = self._new_charge(pi, card, paid=False)
        charge.update(
            failure_code=code,
            failure_message=message,
            status="failed",
            outcome={
                "advice_code": "try_again_later" if decline_code == "generic_decline" else None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "declined_by_network",
                "reason": decline_code,
                "risk_level": "normal",
                "risk_score": 32,
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            },
        )
        self._put(charge, stored.account)
        self._emit("charge.failed", charge, stored.account, None)
        pi["status"] = "requires_payment_method"
        pi["latest_charge"] = charge["id"]
        pi["payment_method"] = None
        pi["last_payment_error"] = {
            "charge": charge["id"],
            "code": code,
            "decline_code": decline_code,
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "message": message,
            "payment_method": {
                "id": charge["payment_method"],
                "object": "payment_method",
                "card": _card_summary(card),
                "type": "card",
            },
            "type": "card_error",
        }
        self._emit("payment_intent.payment_failed", pi, stored.account, None)
        return pi

    def _new_charge(self, pi: JSON, card: Card, *, paid: bool) -> JSON:
        charge_id = _new_id("ch")
        suffix = pi["statement_descriptor_suffix"]
        return {
            "id": charge_id,
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": pi["application_fee_amount"],
            "balance_transaction": None,
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": None,
                    "state": None,
                },
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": (f"TEST* {suffix}" if suffix else "TEST MERCHANT")[
                :_STATEMENT_DESCRIPTOR_MAX
            ].upper(),
            "captured": False,
            "created": self.now(),
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            # Stripe copies the PaymentIntent's metadata onto its charges.
            "metadata": dict(pi["metadata"]),
            "on_behalf_of": pi["on_behalf_of"],
            "outcome": {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": 32,
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": paid,
            "payment_intent": pi["id"],
            "payment_method": _new_id("pm"),
            "payment_method_details": {
                "card": {
                    "amount_authorized": pi["amount"] if paid else None,
                    "authorization_code": _random(6, string.digits) if paid else None,
                    "brand": card.brand,
                    "checks": {
                        "address_line1_check": None,
                        "address_postal_code_check": None,
                        "cvc_check": "pass",
                    },
                    "country": card.country,
                    "exp_month": card.exp_month,
                    "exp_year": card.exp_year,
                    "extended_authorization": {"status": "disabled"},
                    "fingerprint": card.resolved_fingerprint,
                    "funding": card.funding,
                    "incremental_authorization": {"status": "unavailable"},
                    "installments": None,
                    "last4": card.last4,
                    "mandate": None,
                    "multicapture": {"status": "unavailable"},
                    "network": card.brand,
                    "network_token": {"used": False},
                    "network_transaction_id": _random(15, string.digits) if paid else None,
                    "overcapture": {
                        "maximum_amount_capturable": pi["amount"],
                        "status": "unavailable",
                    },
                    "regulated_status": "unregulated",
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": pi["receipt_email"],
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{_random(48)}",
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "review": None,
            "shipping": pi["shipping"],
            "source": None,
            "source_transfer": None,
            "statement_descriptor": pi["statement_descriptor"],
            "statement_descriptor_suffix": suffix,
            "status": "succeeded",
            "transfer_data": pi["transfer_data"],
            "transfer_group": pi["transfer_group"],
        }

    def _capture_charge(
        self, charge: JSON, amount: int, account: str | None, ctx: _Ctx | None
    ) -> None:
        fee = _stripe_fee(amount)
        created = self.now()
        txn: JSON = {
            "id": _new_id("txn"),
            "object": "balance_transaction",
            "amount": amount,
            # Funds become available two days later, at midnight UTC.
            "available_on": (created // 86400 + 2) * 86400,
            "balance_type": "payments",
            "created": created,
            "currency": charge["currency"],
            "description": charge["description"],
            "exchange_rate": None,
            "fee": fee,
            "fee_details": [
                {
                    "amount": fee,
                    "application": None,
                    "currency": charge["currency"],
                    "description": "Stripe processing fees",
                    "type": "stripe_fee",
                }
            ],
            "net": amount - fee,
            "reporting_category": "charge",
            "source": charge["id"],
            "status": "pending",
            "type": "charge",
        }
        self._put(txn, account)
        charge["amount_captured"] = amount
        charge["captured"] = True
        charge["balance_transaction"] = txn["id"]

    # -- refunds ----------------------------------------------------------------

    def _create_refund(self, ctx: _Ctx, params: JSON) -> JSON:
        _check_known(params, _REFUND_CREATE_PARAMS)
        pi_id = _as_str(params, "payment_intent")
        charge_id = _as_str(params, "charge")
        if (pi_id is None) == (charge_id is None):
            raise _invalid(
                "You must pass exactly one of these parameters: payment_intent, charge.",
                param="payment_intent" if pi_id is None else "charge",
            )
        if pi_id is not None:
            pi = self._find(pi_id, "payment_intent", "payment_intent", ctx.account).obj
            if pi["status"] != "succeeded" or pi["latest_charge"] is None:
                raise _invalid(
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    param="payment_intent",
                    code="charge_not_refundable" if pi["status"] == "requires_capture" else None,
                )
            charge = self._objects[pi["latest_charge"]].obj
        else:
            assert charge_id is not None
            charge = self._find(charge_id, "charge", "charge", ctx.account).obj
            if not charge["captured"] or charge["status"] != "succeeded":
                raise _invalid(
                    f"Charge {charge_id} was not captured or did not succeed: nothing to refund.",
                    param="charge",
                    code="charge_not_refundable",
                )
        currency = _as_currency(params)
        if currency is not None and currency != charge["currency"]:
            raise _invalid(
                f"The refund currency ({currency}) must match the charge's ({charge['currency']}).",
                param="currency",
            )
        reason = _as_enum(params, "reason", ("duplicate", "fraudulent", "requested_by_customer"))
        metadata = _as_metadata(params)
        released = self._released.get(charge["id"], 0)
        refundable = charge["amount_captured"] - (charge["amount_refunded"] - released)
        if refundable <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                param="payment_intent" if pi_id else "charge",
                code="charge_already_refunded",
            )
        amount = _as_int(params, "amount")
        if amount is None:
            amount = refundable
        if amount < 1:
            raise _invalid("This value must be greater than or equal to 1.", param="amount")
        if amount > refundable:
            raise _invalid(
                f"Refund amount ({amount} {charge['currency']}) is greater than unrefunded amount "
                f"on charge ({refundable} {charge['currency']})",
                param="amount",
            )

        created = self.now()
        refund_id = _new_id("re")
        txn: JSON = {
            "id": _new_id("txn"),
            "object": "balance_transaction",
            "amount": -amount,
            "available_on": created,
            "balance_type": "payments",
            "created": created,
            "currency": charge["currency"],
            "description": "REFUND FOR CHARGE",
            "exchange_rate": None,
            "fee": 0,  # Stripe does not return its processing fee on refunds
            "fee_details": [],
            "net": -amount,
            "reporting_category": "refund",
            "source": refund_id,
            "status": "available",
            "type": "refund",
        }
        owner = self._objects[charge["id"]].account
        self._put(txn, owner)
        refund: JSON = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": txn["id"],
            "charge": charge["id"],
            "created": created,
            "currency": charge["currency"],
            "customer": charge["customer"],
            "customer_account": None,
            "description": None,
            "destination_details": {
                "card": {
                    "reference": None,
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "payment_method": charge["payment_method"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self._put(refund, owner)
        self._emit("refund.created", refund, owner, ctx)

        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        refunds = charge["refunds"]
        refunds["data"].insert(0, copy.deepcopy(refund))
        refunds["total_count"] = len(refunds["data"])
        self._emit("charge.refunded", charge, owner, ctx, previous)
        return self._render(refund, params, ctx.account)

    def _retrieve_refund(self, ctx: _Ctx, params: JSON, refund: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        return self._render(
            self._find(refund, "refund", "refund", ctx.account).obj, params, ctx.account
        )

    def _retrieve_charge(self, ctx: _Ctx, params: JSON, charge: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        return self._render(
            self._find(charge, "charge", "charge", ctx.account).obj, params, ctx.account
        )

    def _retrieve_balance_transaction(self, ctx: _Ctx, params: JSON, id: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        stored = self._find(id, "balance_transaction", "id", ctx.account)
        return self._render(stored.obj, params, ctx.account)

    # -- disputes -------------------------------------------------------------------

    def _charge_of(self, charge_or_intent_id: str, account: str | None = None) -> _Stored:
        any_account = account is None
        if charge_or_intent_id.startswith("pi_"):
            pi = self._find(
                charge_or_intent_id, "payment_intent", "intent", account, any_account=any_account
            ).obj
            if pi["latest_charge"] is None:
                raise _invalid(f"PaymentIntent {pi['id']} has no charge.", param="charge")
            charge_or_intent_id = pi["latest_charge"]
        return self._find(charge_or_intent_id, "charge", "charge", account, any_account=any_account)

    def _dispute(self, stored: _Stored, amount: int | None, reason: str) -> JSON:
        charge = stored.obj
        if not charge["captured"]:
            raise _invalid(f"Charge {charge['id']} was not captured: it cannot be disputed.")
        if charge["disputed"]:
            raise _invalid(f"Charge {charge['id']} is already disputed.", param="charge")
        if amount is None:
            amount = charge["amount_captured"]
        if not 1 <= amount <= charge["amount_captured"]:
            raise _invalid("The disputed amount must be between 1 and the captured amount.")
        created = self.now()
        dispute_id = _new_id("dp")
        currency = charge["currency"]
        txn: JSON = {
            "id": _new_id("txn"),
            "object": "balance_transaction",
            "amount": -amount,
            "available_on": created,
            "balance_type": "payments",
            "created": created,
            "currency": currency,
            "description": f"Chargeback withdrawal for {charge['id']}",
            "exchange_rate": None,
            "fee": _DISPUTE_FEE,
            "fee_details": [
                {
                    "amount": _DISPUTE_FEE,
                    "application": None,
                    "currency": currency,
                    "description": "Dispute fee",
                    "type": "stripe_fee",
                }
            ],
            "net": -amount - _DISPUTE_FEE,
            "reporting_category": "dispute",
            "source": dispute_id,
            "status": "available",
            "type": "adjustment",
        }
        self._put(txn, stored.account)
        card = charge["payment_method_details"]["card"]
        evidence_fields = (
            "access_activity_log", "billing_address", "cancellation_policy",
            "cancellation_policy_disclosure", "cancellation_rebuttal", "customer_communication",
            "customer_email_address", "customer_name", "customer_purchase_ip",
            "customer_signature", "duplicate_charge_documentation",
            "duplicate_charge_explanation", "duplicate_charge_id", "product_description",
            "receipt", "refund_policy", "refund_policy_disclosure", "refund_refusal_explanation",
            "service_date", "service_documentation", "shipping_address", "shipping_carrier",
            "shipping_date", "shipping_documentation", "shipping_tracking_number",
            "uncategorized_file", "uncategorized_text",
        )  # fmt: skip
        dispute: JSON = {
            "id": dispute_id,
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [copy.deepcopy(txn)],
            "charge": charge["id"],
            "created": created,
            "currency": currency,
            "enhanced_eligibility_types": [],
            "evidence": {
                **dict.fromkeys(evidence_fields),
                "enhanced_evidence": {},
            },
            "evidence_details": {
                "due_by": created + 7 * 86400,
                "enhanced_eligibility": {},
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {
                "card": {
                    "brand": card["brand"],
                    "case_type": "chargeback",
                    "network_reason_code": "10.4",
                    "network": card["network"],
                },
                "type": "card",
            },
            "reason": reason,
            "status": "needs_response",
        }
        self._put(dispute, stored.account)
        charge["disputed"] = True
        self._emit("charge.dispute.created", dispute, stored.account, None)
        self._emit("charge.dispute.funds_withdrawn", dispute, stored.account, None)
        return dispute

    def _http_dispute(self, ctx: _Ctx, params: JSON, charge: str) -> JSON:
        unknown = set(params) - {"amount", "reason", "expand"}
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(f"Received unknown parameter: {name}", param=name)
        stored = self._charge_of(charge, ctx.account)
        reason = _as_str(params, "reason") or "fraudulent"
        dispute = self._dispute(stored, _as_int(params, "amount"), reason)
        return self._render(dispute, params, ctx.account)

    def _retrieve_dispute(self, ctx: _Ctx, params: JSON, dispute: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        stored = self._find(dispute, "dispute", "dispute", ctx.account)
        return self._render(stored.obj, params, ctx.account)

    # -- payouts ----------------------------------------------------------------------

    def _pay_out(
        self,
        account: str | None,
        currency: str | None,
        wanted: list[str] | None,
        fees: list[int],
        amount: int | None,
    ) -> JSON:
        unpaid = [
            s.obj
            for s in self._objects.values()
            if s.account == account
            and s.obj["object"] == "balance_transaction"
            and s.obj["type"] != "payout"
            and s.obj["id"] not in self._paid_out
        ]
        if wanted is not None:
            by_key = {}
            for txn in unpaid:
                by_key[txn["id"]] = txn
                if txn["source"]:
                    by_key.setdefault(txn["source"], txn)
            missing = [key for key in wanted if key not in by_key]
            if missing:
                raise _invalid(
                    f"No unpaid balance transaction of this account for {missing[0]!r}.",
                    param="balance_transactions",
                )
            lines = list({by_key[key]["id"]: by_key[key] for key in wanted}.values())
        else:
            lines = unpaid
        if currency is None:
            if lines:
                currency = lines[0]["currency"]
            elif fees:
                currency = "usd"
            else:
                raise _invalid("There is nothing to pay out.", code="balance_insufficient")
        currency = currency.lower()
        if wanted is not None and any(txn["currency"] != currency for txn in lines):
            raise _invalid("A payout's lines are all in its currency.", param="currency")
        lines = [txn for txn in lines if txn["currency"] == currency]
        created = self.now()
        for fee in fees:
            if fee < 1:
                raise _invalid("A fee is a positive amount.", param="fees")
            txn = {
                "id": _new_id("txn"),
                "object": "balance_transaction",
                "amount": -fee,
                "available_on": created,
                "balance_type": "payments",
                "created": created,
                "currency": currency,
                "description": "Billing - Usage Fee",
                "exchange_rate": None,
                "fee": 0,
                "fee_details": [],
                "net": -fee,
                "reporting_category": "fee",
                "source": None,
                "status": "available",
                "type": "stripe_fee",
            }
            self._put(txn, account)
            lines.append(txn)
        total = sum(txn["net"] for txn in lines)
        paid = total if amount is None else amount
        if paid < 1:
            raise _invalid(
                f"The lines add up to {total} {currency}: nothing to pay out.",
                code="balance_insufficient",
            )
        payout_id = _new_id("po")
        own_line: JSON = {
            "id": _new_id("txn"),
            "object": "balance_transaction",
            "amount": -paid,
            "available_on": created,
            "balance_type": "payments",
            "created": created,
            "currency": currency,
            "description": "STRIPE PAYOUT",
            "exchange_rate": None,
            "fee": 0,
            "fee_details": [],
            "net": -paid,
            "reporting_category": "payout",
            "source": payout_id,
            "status": "available",
            "type": "payout",
        }
        self._put(own_line, account)
        for txn in lines:
            txn["status"] = "available"
            self._paid_out[txn["id"]] = payout_id
        self._paid_out[own_line["id"]] = payout_id
        payout: JSON = {
            "id": payout_id,
            "object": "payout",
            "amount": paid,
            "application_fee": None,
            "application_fee_amount": None,
            # Standard payouts arrive the next business day; the next day is enough here.
            "arrival_date": (created // 86400 + 1) * 86400,
            "automatic": True,
            "balance_transaction": own_line["id"],
            "created": created,
            "currency": currency,
            "description": "STRIPE PAYOUT",
            "destination": "ba_" + _random(24),
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": {},
            "method": "standard",
            "original_payout": None,
            "payout_method": None,
            "reconciliation_status": "completed",
            "reversed_by": None,
            "source_type": "card",
            "statement_descriptor": None,
            "status": "in_transit",
            "trace_id": {"status": "pending", "value": None},
            "type": "bank_account",
        }
        self._put(payout, account)
        self._emit("payout.created", payout, account, None)
        payout["status"] = "paid"
        payout["trace_id"] = {"status": "supported", "value": _random(15, string.digits)}
        self._emit("payout.paid", payout, account, None, {"status": "in_transit"})
        return payout

    def _http_pay_out(self, ctx: _Ctx, params: JSON) -> JSON:
        unknown = set(params) - {"amount", "balance_transactions", "currency", "fees", "expand"}
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(f"Received unknown parameter: {name}", param=name)
        fees = [_as_int({"fee": fee}, "fee") or 0 for fee in _as_str_list(params, "fees") or []]
        payout = self._pay_out(
            ctx.account,
            _as_currency(params),
            _as_str_list(params, "balance_transactions"),
            fees,
            _as_int(params, "amount"),
        )
        return self._render(payout, params, ctx.account)

    def _retrieve_payout(self, ctx: _Ctx, params: JSON, payout: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        stored = self._find(payout, "payout", "payout", ctx.account)
        return self._render(stored.obj, params, ctx.account)

    def _list_balance_transactions(self, ctx: _Ctx, params: JSON) -> JSON:
        _check_known(params, _BALANCE_LIST_PARAMS)
        payout_id = _as_str(params, "payout")
        if payout_id is not None:
            self._find(payout_id, "payout", "payout", ctx.account)
        source = _as_str(params, "source")
        type_filter = _as_str(params, "type")
        currency = _as_currency(params)
        created = params.get("created")
        newest_first = [
            s.obj
            for s in reversed(self._objects.values())
            if s.account == ctx.account
            and s.obj["object"] == "balance_transaction"
            and (payout_id is None or self._paid_out.get(s.obj["id"]) == payout_id)
            and (source is None or s.obj["source"] == source)
            and (type_filter is None or s.obj["type"] == type_filter)
            and (currency is None or s.obj["currency"] == currency)
            and _created_matches(s.obj["created"], created)
        ]
        listing = _page(newest_first, params, "balance_transaction", "/v1/balance_transactions")
        return self._render(listing, params, ctx.account)

    # -- events -------------------------------------------------------------------

    def _retrieve_event(self, ctx: _Ctx, params: JSON, id: str) -> JSON:
        _check_known(params, _RETRIEVE_PARAMS)
        for stored in self._events:
            if stored.obj["id"] == id and stored.account == ctx.account:
                return self._render(stored.obj, params, ctx.account)
        raise _missing("event", id, "id")

    def _list_events(self, ctx: _Ctx, params: JSON) -> JSON:
        _check_known(params, _EVENT_LIST_PARAMS)
        limit = _as_int(params, "limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= 100:
            raise _invalid("This value must be between 1 and 100.", param="limit")
        newest_first = [s.obj for s in reversed(self._events) if s.account == ctx.account]
        created = params.get("created")
        selected = [e for e in newest_first if _created_matches(e["created"], created)]
        type_filter = _as_str(params, "type")
        types = _as_str_list(params, "types")
        if type_filter is not None and types is not None:
            raise _invalid(
                "You may only specify one of these parameters: type, types.", param="types"
            )
        patterns = [type_filter] if type_filter else types
        if patterns:
            selected = [
                e for e in selected if any(fnmatch.fnmatchcase(e["type"], p) for p in patterns)
            ]

        starting_after = _as_str(params, "starting_after")
        ending_before = _as_str(params, "ending_before")
        if starting_after and ending_before:
            raise _invalid(
                "You may only specify one of these parameters: starting_after, ending_before.",
                param="ending_before",
            )
        cursor = starting_after or ending_before
        if cursor is not None:
            index = next((i for i, e in enumerate(selected) if e["id"] == cursor), None)
            if index is None:
                param = "starting_after" if starting_after else "ending_before"
                raise _missing("event", cursor, param)
        if starting_after:
            assert index is not None
            window = selected[index + 1 :]
            page, has_more = window[:limit], len(window) > limit
        elif ending_before:
            assert index is not None
            window = selected[:index]
            page, has_more = window[-limit:], len(window) > limit
        else:
            page, has_more = selected[:limit], len(selected) > limit
        listing = {"object": "list", "data": page, "has_more": has_more, "url": "/v1/events"}
        return self._render(listing, params, ctx.account)


def _page(selected: list[JSON], params: JSON, object_type: str, url: str) -> JSON:
    """One page of a list answer (newest first), with Stripe's ``limit`` and cursors."""
    limit = _as_int(params, "limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= 100:
        raise _invalid("This value must be between 1 and 100.", param="limit")
    starting_after = _as_str(params, "starting_after")
    ending_before = _as_str(params, "ending_before")
    if starting_after and ending_before:
        raise _invalid(
            "You may only specify one of these parameters: starting_after, ending_before.",
            param="ending_before",
        )
    cursor = starting_after or ending_before
    index = None
    if cursor is not None:
        index = next((i for i, item in enumerate(selected) if item["id"] == cursor), None)
        if index is None:
            raise _missing(
                object_type, cursor, "starting_after" if starting_after else "ending_before"
            )
    if starting_after:
        assert index is not None
        window = selected[index + 1 :]
        page, has_more = window[:limit], len(window) > limit
    elif ending_before:
        assert index is not None
        window = selected[:index]
        page, has_more = window[-limit:], len(window) > limit
    else:
        page, has_more = selected[:limit], len(selected) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def _check_expand(params: JSON, answers: str) -> None:
    """Refuse an ``expand[]`` that Stripe would refuse for an answer of type `answers`."""
    expand = params.get("expand")
    if expand is None:
        return
    if not isinstance(expand, list) or not all(isinstance(p, str) for p in expand):
        raise _invalid("Invalid array: expand must be an array of strings", param="expand")
    for path in expand:
        parts = path.split(".")
        object_type: str | None = answers
        if answers.startswith("list:"):
            if parts[0] != "data":
                raise _invalid(f"This property cannot be expanded ({path}).", param="expand")
            object_type, parts = answers.removeprefix("list:"), parts[1:]
        if len(parts) > _MAX_EXPAND_DEPTH:
            raise _invalid(
                f"You cannot expand more than {_MAX_EXPAND_DEPTH} levels of a property ({path}).",
                param="expand",
            )
        for part in parts:
            if object_type is None:
                break  # past a type this server does not model; nothing more to check
            if part not in _EXPANDABLE.get(object_type, frozenset()):
                raise _invalid(f"This property cannot be expanded ({path}).", param="expand")
            object_type = _EXPANDS_TO.get((object_type, part))


def _created_matches(created: int, condition: Any) -> bool:
    """Apply a ``created`` filter: an exact integer or ``{gt,gte,lt,lte}``."""
    if condition is None or condition == "":
        return True
    if isinstance(condition, str):
        value = _as_int({"created": condition}, "created")
        return created == value
    if not isinstance(condition, dict):
        raise _invalid("Invalid created filter", param="created")
    checks: dict[str, Callable[[int, int], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    for op in condition:
        if op not in checks:
            raise _invalid(f"Received unknown parameter: created[{op}]", param=f"created[{op}]")
        value = _as_int(condition, op)
        if value is not None and not checks[op](created, value):
            return False
    return True


def _coerce_card(card: Card | Mapping[str, Any] | None) -> Card:
    """A Card from a Card, a mapping of overrides (strings from a form are fine) or None."""
    if card is None:
        return CARD_VISA
    if isinstance(card, Card):
        return card
    allowed = set(Card.__dataclass_fields__)
    unknown = set(card) - allowed
    if unknown:
        raise _invalid(f"Received unknown parameter: card[{sorted(unknown)[0]}]", param="card")
    values: dict[str, Any] = dict(card)
    for name in ("exp_month", "exp_year"):
        if name in values:
            values[name] = _as_int(values, name)
    last4 = str(values.get("last4", CARD_VISA.last4))
    if not re.fullmatch(r"\d{4}", last4):
        raise _invalid("card[last4] must be exactly four digits", param="card[last4]")
    return Card(**values)


def _card_summary(card: Card) -> JSON:
    return {
        "brand": card.brand,
        "country": card.country,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "fingerprint": card.resolved_fingerprint,
        "funding": card.funding,
        "last4": card.last4,
    }
