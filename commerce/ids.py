"""Opaque, random, type-prefixed identifiers (`sale_...`, `ofr_...`).

Random rather than sequential so an id reveals neither volume nor order, and a
merchant cannot guess another merchant's ids.
"""

from __future__ import annotations

import re
import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: 22 base62 characters carry ~131 bits of randomness.
_LENGTH = 22

PREFIXES = {
    "merchant": "mer",
    "api_key": "key",
    "customer": "cus",
    "conversation": "cnv",
    "offer": "ofr",
    "touchpoint": "tch",
    "sale": "sale",
    "sale_event": "sev",
    "refund": "rfd",
    "inbox_event": "inb",
    "partner": "prt",
    "agreement": "agr",
    "card_ref": "crd",
    "card_transaction": "ctx",
    "consent": "cns",
    "card_alias": "card",
    "deletion_receipt": "del",
    "webhook_endpoint": "whe",
    "outbound_event": "evt",
    "webhook_delivery": "whd",
    "fraud_alert": "fal",
    "reconciliation_exception": "rex",
    "reconciliation_run": "rcr",
    "attribution": "atr",
}

ID_PATTERN = re.compile(r"^[a-z]{3,4}_[0-9A-Za-z]{22}$")


def new_id(kind: str) -> str:
    prefix = PREFIXES[kind]
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))


def looks_like(kind: str, value: str) -> bool:
    """True when `value` has the shape of an id of this kind (it may still not exist)."""
    return value.startswith(PREFIXES[kind] + "_") and bool(ID_PATTERN.match(value))
