"""The card scrubber (SPEC 4.3): PANs found and masked, card fields hashed, secrets dropped.

Pure unit tests: no database, no fixtures from the conftest.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import pickle
import random
import re
import time
import unicodedata
from dataclasses import dataclass
from decimal import Decimal

import pytest

from commerce.cards import (
    DEFAULT_CARD_FIELDS,
    CardHasher,
    CardKeyError,
    PanHash,
    PanLogFilter,
    brand_of,
    card_fields,
    find_pans,
    is_secret_field,
    luhn_valid,
    mask,
    normalize_digits,
    scrub,
)


def check_digit(body: str) -> str:
    """`body` completed with its Luhn check digit (computed here independently of the module)."""
    total = 0
    for index, ch in enumerate(reversed(body)):
        d = int(ch)
        if index % 2 == 0:  # doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def independent_luhn(digits: str) -> bool:
    return (
        sum(
            (int(c) if i % 2 == 0 else (int(c) * 2 - 9 if int(c) > 4 else int(c) * 2))
            for i, c in enumerate(reversed(digits))
        )
        % 10
        == 0
    )


UNIONPAY_19 = check_digit("621234567890123456")
VISA_19 = "4111111111111111110"

# Well-known test numbers of every brand and length.
TEST_PANS = {
    "4242424242424242": "visa",
    "4000056655665556": "visa",
    "4222222222222": "visa",  # 13 digits
    VISA_19: "visa",  # 19 digits
    "5555555555554444": "mastercard",
    "2223003122003222": "mastercard",  # 2-series
    "378282246310005": "amex",  # 15 digits
    "6011111111111117": "discover",
    "3056930009020004": "diners",
    "36227206271667": "diners",  # 14 digits
    "3566002020360505": "jcb",
    "6200000000000005": "unionpay",
    UNIONPAY_19: "unionpay",  # 19 digits
    "6759649826438453": "maestro",
}

FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


def fw(ascii_digits: str) -> str:
    """The same text with full-width digits."""
    return ascii_digits.translate(FULL_WIDTH)


ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))


def grouped(pan: str, sep: str, size: int = 4) -> str:
    return sep.join(pan[i : i + size] for i in range(0, len(pan), size))


def masked(last4: str) -> str:
    return f"[card •••• {last4}]"


def test_the_test_numbers_are_luhn_valid():
    for pan in TEST_PANS:
        assert 12 <= len(pan) <= 19
        assert independent_luhn(pan), pan
        assert luhn_valid(pan), pan
    assert len(UNIONPAY_19) == 19


# --- find_pans / mask -----------------------------------------------------------------------


@pytest.mark.parametrize("pan", TEST_PANS)
@pytest.mark.parametrize(
    "written",
    [
        pytest.param(lambda p: p, id="plain"),
        pytest.param(lambda p: grouped(p, " "), id="spaced"),
        pytest.param(lambda p: grouped(p, "-"), id="dashed"),
        pytest.param(lambda p: grouped(p, "\u00a0"), id="no-break-space"),
        pytest.param(lambda p: grouped(p, "\u2013"), id="en-dash"),
        pytest.param(lambda p: grouped(p, "\u200b"), id="zero-width-space"),
        pytest.param(lambda p: grouped(p, " ", 3), id="groups-of-3"),
        pytest.param(lambda p: p.translate(FULL_WIDTH), id="full-width"),
        pytest.param(lambda p: grouped(p.translate(FULL_WIDTH), "\u3000"), id="full-width-spaced"),
        pytest.param(lambda p: p.translate(ARABIC_INDIC), id="arabic-indic"),
        pytest.param(lambda p: grouped(p, "."), id="dotted-4-4-4-4"),
    ],
)
def test_pans_are_found_and_masked_in_every_format(pan, written):
    text = f"my card is {written(pan)} exp 12/30"
    matches = find_pans(text)
    assert len(matches) == 1
    assert matches[0].digits == pan
    assert text[matches[0].start : matches[0].end] == written(pan)
    assert mask(text) == f"my card is {masked(pan[-4:])} exp 12/30"


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "4242 4242 4242 4242 is mine",
        "mine: 4242-4242-4242-4242",
        "(4242424242424242)",
        "tok4242424242424242",  # letters are boundaries, not protection
        "card=4242424242424242&exp=1230",
        '{"n":"4242424242424242"}',
        "4242 4242 4242 4242\n",
    ],
)
def test_pans_at_the_start_end_and_inside_punctuation(text):
    result = mask(text)
    assert "4242424242424242" not in result.replace(" ", "").replace("-", "")
    assert masked("4242") in result
    assert len(find_pans(text)) == 1


def test_amex_in_its_own_grouping_and_mixed_separators():
    assert mask("3782 822463 10005") == masked("0005")
    assert mask("4242 4242-4242 4242") == masked("4242")


def test_a_pan_followed_by_its_cvc_or_preceded_by_a_number_is_still_found():
    # Separated neighbours do not hide a PAN: the CVC stays (nothing can tell it from a
    # quantity), the card number does not.
    assert mask("4242 4242 4242 4242 123") == masked("4242") + " 123"
    assert mask("order 77 4242 4242 4242 4242") == "order 77 " + masked("4242")


def test_a_luhn_valid_run_of_groups_inside_a_separated_number_is_a_pan():
    # The first twelve digits of this Luhn-invalid number form a Luhn-valid 12-digit run of
    # groups: by the definition that is a PAN, and it is masked.
    assert mask("4242 4242 4242 4241") == masked("4242") + " 4241"


def test_two_pans_in_one_separated_run_are_two_masks():
    text = "4242 4242 4242 4242 5555 5555 5555 4444"
    assert mask(text) == f"{masked('4242')} {masked('4444')}"
    assert len(find_pans(text)) == 2


def test_an_accidental_window_overlapping_the_real_pan_leaks_none_of_its_digits():
    # "1008" + the first twelve digits of the card is itself Luhn-valid: both windows are
    # masked as one span, so neither the first digits nor anything but the last four remain.
    assert independent_luhn("1008" + "424242424242")
    text = "ref 1008 4242 4242 4242 4242 thanks"
    assert mask(text) == f"ref {masked('4242')} thanks"


def test_masks_keep_at_most_the_last_four_and_masking_twice_changes_nothing():
    text = f"a 4242 4242 4242 4242 b {fw('5555555555554444')} c"
    once = mask(text)
    assert once == f"a {masked('4242')} b {masked('4444')} c"
    assert mask(once) == once
    assert find_pans(once) == []


def test_text_without_a_pan_is_returned_as_is():
    text = "Blue Bottle Mission St, order 1250, 2026-11-28T12:00:01Z " * 10
    assert mask(text) is text


def test_the_match_repr_does_not_show_the_number():
    (match,) = find_pans("4242424242424242")
    assert "4242" not in repr(match)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("4242424242424241", id="luhn-invalid-16"),
        pytest.param("4000 0566 5566 5557", id="luhn-invalid-spaced"),
        pytest.param("42424242424", id="11-digits"),
        pytest.param("4242 4242 424", id="11-digits-spaced"),
        pytest.param("Order ORD-2026-000123 and #100234", id="order-numbers"),
        pytest.param("call +1 415 555 0100 today", id="us-phone"),
        pytest.param("call +44 20 7946 0006 today", id="uk-phone-luhn-valid-12-digits"),
        pytest.param("+86 138 0013 8002", id="cn-phone-luhn-valid-13-digits"),
        pytest.param("2026-11-28T12:00:01Z until 2026-12-31", id="iso-dates"),
        pytest.param("2026-11-28 2026-11-29", id="two-dates"),
        pytest.param(
            "Linux-6.18.44-fc-v657-x86_64-with-glibc2.36 2026-11-29 08:56:58",
            id="version-then-date-time-luhn-valid-12-digits",
        ),
        pytest.param("amount 1250 USD", id="amount"),
        pytest.param("at 1764331203", id="timestamp"),
        pytest.param("1234567890" + "4242424242424242" + "1", id="27-digit-run-with-a-pan"),
        pytest.param("9" * 9 + "4242424242424242", id="25-digit-run-with-a-pan-window"),
        pytest.param("V0010013019194478349571382459", id="payment-account-reference"),
        pytest.param("from 192.168.100.100", id="ipv4-luhn-valid-12-digits"),
        pytest.param("t=1764331203.123453", id="float-timestamp-luhn-valid-16-digits"),
        pytest.param("v4242.42424242.42424242", id="dots-outside-the-4-4-4-4-grouping"),
        pytest.param("100004\t654321", id="tab-separated-columns"),
        pytest.param("100004\n654321", id="lines"),
        pytest.param("4242  4242  4242  4242", id="double-spaces-split-the-run"),
        pytest.param("4242/4242/4242/4242", id="slashes-are-not-separators"),
        pytest.param("¹²³⁴⁵⁶⁷⁸⁹⁰¹²³⁴⁵⁶", id="superscripts-are-not-decimal"),
    ],
)
def test_near_misses_are_left_alone(text):
    assert find_pans(text) == []
    assert mask(text) is text


def test_the_near_misses_would_be_pans_if_the_rules_were_looser():
    # Guards the near-miss cases above against proving nothing.
    assert independent_luhn("442079460006")
    assert independent_luhn("8613800138002")
    assert independent_luhn("192168100100")
    assert independent_luhn("1764331203123453")
    assert independent_luhn("100004654321")
    assert independent_luhn("4242424242424242")
    assert independent_luhn("362026112908")  # "2.36 2026-11-29 08", read across its groups


def test_a_card_number_beside_a_date_time_is_still_found():
    for text in (
        "4242 4242 4242 4242 2026-11-29 08:56",
        "2026-11-29T08:56:58Z 4242-4242-4242-4242",
        "paid 2026-11-29 08:56 with 4242424242424242",
    ):
        (match,) = find_pans(text)
        assert match.digits == "4242424242424242", text


def test_a_plus_is_a_phone_number_only_up_to_fifteen_digits():
    assert find_pans("+4242424242424242") != []
    assert mask("+44 4242 4242 4242 4242") == "+44 " + masked("4242")


def test_a_long_message_of_short_numbers_is_scanned_in_linear_time():
    rng = random.Random(7)
    text = " ".join(str(rng.randrange(10)) for _ in range(20_000))
    started = time.perf_counter()
    masked_text = mask(text)
    assert time.perf_counter() - started < 5
    # Whatever was masked, nothing Luhn-valid of 12 to 19 digits is left.
    assert_no_pan_left(masked_text)


# --- property-style check -------------------------------------------------------------------

SEPARATORS = ["", " ", "-", "\u00a0", "\u3000", "\u2010", "\ufeff"]
SCRIPTS = [None, FULL_WIDTH, ARABIC_INDIC]
BEFORE = ["", "my card is ", "ref 77 ", "order #A-1234 ", "tel +1 415 555 0100, card ", "(", "x"]
AFTER = ["", " exp 12/30", ".", ", thanks!", " - cvc 123", ")", "x"]
CHECK_SEPARATORS = set("".join(SEPARATORS))


def digit_runs(text: str) -> list[list[str]]:
    """Independent of the module: runs of ASCII digit groups joined by one separator."""
    runs: list[list[str]] = []
    current: list[str] = []
    group = ""
    previous_was_separator = False
    for ch in text:
        if ch.isdecimal():
            group += str(unicodedata.decimal(ch))
            previous_was_separator = False
        elif ch in CHECK_SEPARATORS and group and not previous_was_separator:
            current.append(group)
            group = ""
            previous_was_separator = True
        else:
            if group:
                current.append(group)
            if current:
                runs.append(current)
            current, group, previous_was_separator = [], "", False
    if group:
        current.append(group)
    if current:
        runs.append(current)
    return runs


def assert_no_pan_left(text: str) -> None:
    for groups in digit_runs(text):
        for i in range(len(groups)):
            for j in range(i, len(groups)):
                digits = "".join(groups[i : j + 1])
                if len(digits) > 19:
                    break
                assert not (len(digits) >= 12 and independent_luhn(digits)), text


def test_property_random_pans_in_random_text_never_survive():
    rng = random.Random(20261128)
    for _ in range(3000):
        length = rng.randint(12, 19)
        pan = check_digit("".join(str(rng.randrange(10)) for _ in range(length - 1)))
        script = rng.choice(SCRIPTS)
        sep = rng.choice(SEPARATORS)
        sizes = []
        left = length
        while left:
            size = min(left, rng.randint(1, 6))
            sizes.append(size)
            left -= size
        parts, at = [], 0
        for size in sizes:
            parts.append(pan[at : at + size])
            at += size
        written = (sep if rng.random() < 0.8 else rng.choice(SEPARATORS)).join(parts)
        if script is not None:
            written = written.translate(script)
        text = rng.choice(BEFORE) + written + rng.choice(AFTER)

        result = mask(text)

        assert_no_pan_left(result)
        assert masked(pan[-4:]) in result, text
        flat = "".join(g for run in digit_runs(result) for g in run)
        assert pan[:-4] not in flat, text
        assert mask(result) == result


# --- secret field names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "cvc", "cvv", "CVV", "cvv2", "CVC2", "cvc_2", "cid", "csc", "cvn", "card_cvc", "card-cvc",
        "cardCvc", "cardCVV", "CardSecurityCode", "cardSecurityCode", "security_code",
        "card_verification", "card_verification_value", "cardVerificationCode", "cardCode",
        "cvv_number", "\uff23\uff36\uff36", "track1", "track2", "Track2Data", "track_data",
        "track_1_data",
        "track_2_equivalent_data", "magstripe", "mag_stripe", "magneticStripeData", "pin",
        "PIN", "pin_block", "pinBlock", "PINBlock", "pin_number", "encrypted_pin_block",
    ],
)  # fmt: skip
def test_secret_field_names(name):
    assert is_secret_field(name)


@pytest.mark.parametrize(
    "name",
    [
        "cvc_check", "cvv_result", "cvc_present", "pin_check", "address_line1_check",
        "pinned", "is_pinned", "spinner", "shipping", "opinion", "pinterest", "track",
        "track_id", "tracking_number", "stripe", "code", "auth_code", "card", "card_number",
        "number", "cvc_token", "security", "verification_code", "description", "spinach",
        "pinned_message", "csc_result", "cidr",
    ],
)  # fmt: skip
def test_innocent_field_names(name):
    assert not is_secret_field(name)


# --- scrub ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    version: str
    secret: bytes


KEY_V1 = Key("v1", b"k1" * 16)
KEY_V2 = Key("v2", b"k2" * 16)


def partner_event(card: dict) -> dict:
    return {
        "id": "evt_7Hq2",
        "type": "transaction.authorized",
        "created": "2026-11-28T12:00:03Z",
        "data": {
            "transaction_id": "txn_88f1",
            "original_transaction_id": None,
            "customer_ref": "cust_4821",
            "card": card,
            "merchant": {"mid": "000123456789012", "name": "Blue Bottle", "mcc": "5814"},
            "amount": 1250,
            "currency": "USD",
            "occurred_at": "2026-11-28T12:00:01Z",
            "auth_code": "A1B2C3",
            "card_present": False,
            "wallet": None,
        },
    }


def test_a_partner_card_pan_becomes_a_keyed_hash_brand_and_last4():
    event = partner_event(
        {"token": "tok_9d2", "par": "V0010013019194478349571382459", "pan": "4242424242424242"}
    )
    hasher = CardHasher([KEY_V2, KEY_V1])

    result = scrub(event, hasher=hasher)

    card = result.document["data"]["card"]
    assert "pan" not in card
    assert card == {
        "token": "tok_9d2",
        "par": "V0010013019194478349571382459",
        "brand": "visa",
        "last4": "4242",
        "pan_hash": hasher.hash_pan("4242424242424242").digest_hex,
        "pan_hash_version": "v2",
        # With an older key still configured: the hash a rotation re-keyed the old one to.
        "pan_hash_rotated": [
            {"version": "v2<v1", "hash": hasher.chained("4242424242424242")[1][1]}
        ],
    }
    assert hasher.chained("4242424242424242")[1][0] == "v2<v1"
    assert (result.pans_found, result.pan_fields_hashed, result.dropped_fields) == (1, 1, [])
    # Everything else is untouched.
    assert result.document["data"]["merchant"] == event["data"]["merchant"]
    assert result.document["data"]["amount"] == 1250
    assert "4242424242424242" not in json.dumps(result.document)


@pytest.mark.parametrize(
    "card",
    [
        {"number": "4242 4242 4242 4242"},
        {"cardNumber": fw("4242424242424242")},
        {"account_number": 4242424242424242},
        {"PAN": "4242-4242-4242-4242"},
    ],
)
def test_card_fields_by_other_names_and_formats(card):
    hasher = CardHasher([KEY_V1])
    result = scrub({"data": {"card": card}}, hasher=hasher)
    out = result.document["data"]["card"]
    assert out == {
        "brand": "visa",
        "last4": "4242",
        "pan_hash": hasher.hash_pan("4242424242424242").digest_hex,
        "pan_hash_version": "v1",
    }
    assert result.pan_fields_hashed == 1


def test_the_senders_brand_and_last4_are_kept():
    hasher = CardHasher([KEY_V1])
    result = scrub({"card": {"pan": "5555555555554444", "brand": "MC"}}, hasher=hasher)
    assert result.document["card"]["brand"] == "MC"
    assert result.document["card"]["last4"] == "4444"


def test_a_number_outside_a_card_is_masked_not_hashed():
    hasher = CardHasher([KEY_V1])
    result = scrub({"invoice": {"number": "4242424242424242"}}, hasher=hasher)
    assert result.document == {"invoice": {"number": masked("4242")}}
    assert (result.pans_found, result.pan_fields_hashed) == (1, 0)


def test_a_card_field_without_a_pan_is_kept():
    doc = {"card": {"number": "•••• 4242", "pan": None, "last4": "4242"}}
    result = scrub(doc, hasher=CardHasher([KEY_V1]))
    assert result.document == doc
    assert result.pans_found == 0


def test_a_card_field_with_two_pans_is_masked_in_place():
    doc = {"card": {"number": "4242424242424242 or 5555555555554444"}}
    result = scrub(doc, hasher=CardHasher([KEY_V1]))
    assert result.document == {"card": {"number": f"{masked('4242')} or {masked('4444')}"}}
    assert (result.pans_found, result.pan_fields_hashed) == (2, 0)


def test_without_a_hasher_a_card_pan_is_dropped_keeping_brand_and_last4():
    result = scrub({"data": {"card": {"pan": "378282246310005"}}}, hasher=None)
    assert result.document == {"data": {"card": {"brand": "amex", "last4": "0005"}}}
    assert result.dropped_fields == ["data.card.pan"]
    assert (result.pans_found, result.pan_fields_hashed) == (1, 0)


def test_custom_card_field_rules():
    rule = card_fields(anywhere=["cardNo"])
    result = scrub({"payer": {"card_no": "4242424242424242"}}, hasher=None, card_paths=rule)
    assert result.document == {"payer": {"brand": "visa", "last4": "4242"}}

    def only_at(path):
        return path == ("x", 0, "value")

    result = scrub({"x": [{"value": 4242424242424242}]}, hasher=None, card_paths=only_at)
    assert result.document == {"x": [{"brand": "visa", "last4": "4242"}]}
    assert DEFAULT_CARD_FIELDS(("cards", 2, "number"))
    assert not DEFAULT_CARD_FIELDS(("order", "number"))


def test_pans_are_masked_everywhere_else():
    doc = {
        "description": "paid with 4242 4242 4242 4242 exp 12/30",
        "metadata": {"note 5555555555554444": "see key", "list": [["x", "6011-1111-1111-1117"]]},
        "numbers": [4242424242424242, 4242424242424241, 1250, 1764331203, True, 1.5, None],
        "float_pan": 4242424242424242.0,
        "decimal_pan": Decimal("4242424242424242"),
        "tuple": ("378282246310005",),
        4242424242424242: "int key",
    }
    result = scrub(doc, hasher=None)
    assert result.document == {
        "description": f"paid with {masked('4242')} exp 12/30",
        "metadata": {f"note {masked('4444')}": "see key", "list": [["x", masked("1117")]]},
        "numbers": [masked("4242"), 4242424242424241, 1250, 1764331203, True, 1.5, None],
        "float_pan": masked("4242"),
        "decimal_pan": masked("4242"),
        "tuple": (masked("0005"),),
        masked("4242"): "int key",
    }
    assert result.pans_found == 8
    assert result.pan_fields_hashed == 0


def test_secret_fields_are_dropped_and_their_paths_recorded():
    doc = {
        "data": {
            "card": {"cvv": "123", "exp_month": 12, "track2": ";4242=2512?", "pinBlock": "ab"},
            "items": [{"pin": "1234"}, {"card-cvc": "999", "pinned": True}],
        },
        "CardSecurityCode": 123,
        "shipping": {"spinner": 1, "opinion": "good"},
    }
    result = scrub(doc, hasher=None)
    assert result.document == {
        "data": {"card": {"exp_month": 12}, "items": [{}, {"pinned": True}]},
        "shipping": {"spinner": 1, "opinion": "good"},
    }
    assert result.dropped_fields == [
        "data.card.cvv",
        "data.card.track2",
        "data.card.pinBlock",
        "data.items[0].pin",
        "data.items[1].card-cvc",
        "CardSecurityCode",
    ]
    assert "123" not in "".join(result.dropped_fields)


def test_stripe_cvc_check_survives():
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_method_details": {
            "type": "card",
            "card": {
                "brand": "visa",
                "last4": "4242",
                "fingerprint": "Xt5EWLLDS7FJjR1c",
                "checks": {
                    "cvc_check": "pass",
                    "address_line1_check": None,
                    "address_postal_code_check": "pass",
                },
                "exp_month": 12,
                "exp_year": 2030,
            },
        },
    }
    result = scrub(charge, hasher=CardHasher([KEY_V1]))
    assert result.document == charge
    assert result.document["payment_method_details"]["card"]["checks"]["cvc_check"] == "pass"
    assert (result.pans_found, result.dropped_fields) == (0, [])


def test_the_input_document_is_never_modified():
    doc = partner_event({"pan": "4242424242424242", "cvv": "123"})
    doc["data"]["notes"] = ["4242 4242 4242 4242", {"pin": "0000"}]
    before = copy.deepcopy(doc)
    result = scrub(doc, hasher=CardHasher([KEY_V1]))
    assert doc == before
    assert result.document is not doc
    assert result.document["data"] is not doc["data"]
    assert result.document["data"]["notes"] is not doc["data"]["notes"]


def test_a_clean_document_comes_back_equal():
    doc = partner_event({"token": "tok_9d2", "brand": "visa", "last4": "4242"})
    result = scrub(doc, hasher=None)
    assert result.document == doc
    assert (result.pans_found, result.pan_fields_hashed, result.dropped_fields) == (0, 0, [])


def test_scrubbing_a_few_kilobyte_event_is_fast():
    doc = partner_event({"token": "tok_9d2"})
    doc["data"]["metadata"] = {
        f"k{i}": f"description {i} of the order 2026-11-28" for i in range(60)
    }
    assert len(json.dumps(doc)) > 2000
    started = time.perf_counter()
    for _ in range(200):
        scrub(doc, hasher=None)
    # Generous bound against accidental quadratic work; typical is well under 1 ms per event.
    assert (time.perf_counter() - started) / 200 < 0.02


# --- CardHasher -----------------------------------------------------------------------------


def test_same_pan_and_key_give_the_same_digest_in_any_format():
    hasher = CardHasher([KEY_V1])
    first = hasher.hash_pan("4242424242424242")
    assert first == hasher.hash_pan("4242 4242 4242 4242")
    assert first == hasher.hash_pan(fw("4242424242424242"))
    assert first == PanHash("v1", first.digest_hex, "visa", "4242")
    assert re.fullmatch(r"[0-9a-f]{64}", first.digest_hex)
    assert hasher.hash_pan("5555555555554444").digest_hex != first.digest_hex


def test_a_new_key_version_gives_a_new_digest_and_old_hashes_still_match():
    old = CardHasher([KEY_V1]).hash_pan("4242424242424242")
    rotated = CardHasher([KEY_V2, KEY_V1])
    new = rotated.hash_pan("4242424242424242")
    assert new.version == "v2"
    assert new.digest_hex != old.digest_hex
    assert rotated.matches("4242424242424242", old)
    assert rotated.matches("4242-4242-4242-4242", new)
    assert not rotated.matches("4000056655665556", old)
    assert not rotated.matches("4000056655665556", new)


def test_a_hash_of_a_retired_key_version_is_an_error_not_a_mismatch():
    old = CardHasher([KEY_V1]).hash_pan("4242424242424242")
    with pytest.raises(CardKeyError, match="v1"):
        CardHasher([KEY_V2]).matches("4242424242424242", old)


@pytest.mark.parametrize("pan", TEST_PANS)
def test_a_digest_is_never_a_plain_hash_of_the_number(pan):
    digest = CardHasher([KEY_V1]).hash_pan(pan).digest_hex
    for text in (pan, grouped(pan, " "), grouped(pan, "-")):
        for algorithm in ("sha256", "sha1", "md5", "sha512"):
            assert hashlib.new(algorithm, text.encode()).hexdigest() != digest


def test_a_hasher_without_keys_refuses_to_exist():
    with pytest.raises(CardKeyError, match="refusing to hash"):
        CardHasher([])


@pytest.mark.parametrize(
    "keys",
    [
        [Key("v1", b"short")],
        [Key("", b"k" * 32)],
        [Key("v1", b"a" * 32), Key("v1", b"b" * 32)],
    ],
)
def test_bad_keys_are_refused(keys):
    with pytest.raises(CardKeyError):
        CardHasher(keys)


def test_the_hasher_never_shows_or_ships_its_keys():
    hasher = CardHasher([KEY_V2, KEY_V1])
    assert repr(hasher) == "CardHasher(versions=['v2', 'v1'])"
    with pytest.raises(TypeError):
        pickle.dumps(hasher)
    with pytest.raises(TypeError):
        copy.deepcopy(hasher)


@pytest.mark.parametrize("bad", ["4242", "4242 4242 4242 4242 4242 4242", "4242x4242x4242x4242"])
def test_hash_pan_refuses_what_is_not_a_card_number_without_echoing_it(bad):
    with pytest.raises(ValueError, match=r"card number|digits") as error:
        CardHasher([KEY_V1]).hash_pan(bad)
    assert "4242" not in str(error.value)


def test_normalize_digits():
    text = f"{fw('4242')} {'4242'.translate(ARABIC_INDIC)}-4242"
    assert normalize_digits(text) == "424242424242"
    with pytest.raises(ValueError, match="only decimal digits"):
        normalize_digits("4242/4242")


@pytest.mark.parametrize(("pan", "brand"), TEST_PANS.items())
def test_brand_of_the_test_numbers(pan, brand):
    assert brand_of(pan) == brand


@pytest.mark.parametrize(
    ("prefix", "brand"),
    [
        ("4", "visa"), ("51", "mastercard"), ("55", "mastercard"), ("2221", "mastercard"),
        ("2720", "mastercard"), ("2721", "unknown"), ("2200", "mir"), ("34", "amex"),
        ("37", "amex"), ("6011", "discover"), ("644", "discover"), ("649", "discover"),
        ("65", "discover"), ("643", "maestro"), ("3528", "jcb"), ("3589", "jcb"),
        ("3590", "unknown"), ("300", "diners"), ("305", "diners"), ("306", "unknown"),
        ("3095", "diners"), ("36", "diners"), ("38", "diners"), ("39", "diners"),
        ("62", "unionpay"), ("50", "maestro"), ("56", "maestro"), ("58", "maestro"),
        ("63", "maestro"), ("67", "maestro"), ("59", "unknown"), ("1", "unknown"),
        ("9", "unknown"),
    ],
)  # fmt: skip
def test_brand_of_iin_ranges(prefix, brand):
    assert brand_of(prefix.ljust(16, "0")) == brand


def test_brand_of_garbage_is_unknown():
    assert brand_of("") == "unknown"
    assert brand_of("abc") == "unknown"


# --- logs -----------------------------------------------------------------------------------


@pytest.fixture
def scrubbed_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(PanLogFilter())
    logger = logging.getLogger("tests.commerce.test_scrub")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_log_filter_masks_pans_given_through_args(scrubbed_log):
    logger, stream = scrubbed_log
    logger.info("paid with %s for %d", "4242 4242 4242 4242", 1250)
    logger.warning("dict args %(card)s", {"card": fw("5555555555554444")})
    assert stream.getvalue() == (
        f"INFO paid with {masked('4242')} for 1250\nWARNING dict args {masked('4444')}\n"
    )


def test_log_filter_masks_pans_in_exceptions(scrubbed_log):
    logger, stream = scrubbed_log
    try:
        raise ValueError("card 4242424242424242 refused")
    except ValueError:
        logger.exception("while handling %s", "6011-1111-1111-1117")
    text = stream.getvalue()
    assert f"while handling {masked('1117')}" in text
    assert f"ValueError: card {masked('4242')} refused" in text
    assert "Traceback" in text
    assert_no_pan_left(text)


def test_log_filter_masks_extras_and_survives_broken_formats(scrubbed_log):
    logger, stream = scrubbed_log
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep()
    keep.addFilter(PanLogFilter())
    logger.addHandler(keep)
    try:
        logger.info(
            "extra", extra={"note": "4242424242424242", "payload": {"card": {"cvv": "123"}}}
        )
        logger.info("broken %s %s", "4242424242424242")
    finally:
        logger.removeHandler(keep)
    assert records[0].note == masked("4242")
    assert records[0].payload == {"card": {}}
    assert records[1].args == ()
    assert masked("4242") in records[1].msg
    assert_no_pan_left(stream.getvalue())


def test_log_filter_always_keeps_the_record():
    record = logging.LogRecord("x", logging.INFO, "p", 1, "no card %s", ("here",), None)
    assert PanLogFilter().filter(record) is True
    assert (record.msg, record.args) == ("no card here", ())


def test_identifier_fields_keep_a_luhn_valid_id_but_not_text():
    """A source-assigned id that happens to pass the Luhn check is kept where the door says
    identifiers live; text there, or the same digits anywhere else, are still masked."""
    from commerce.cards.scrub import paths

    luhn_valid_id = "4242424242424242"
    document = {
        "sender": {"id": luhn_valid_id},
        "recipient": {"id": "1000001"},
        "timestamp": 4242424242424242,
        "message": {"text": f"id {luhn_valid_id}", "mid": luhn_valid_id},
        "entry": [{"id": luhn_valid_id}],
    }
    rule = paths("sender.id", "recipient.id", "timestamp", "entry.*.id")
    result = scrub(document, hasher=None, identifiers=rule)
    assert result.document["sender"]["id"] == luhn_valid_id
    assert result.document["entry"][0]["id"] == luhn_valid_id
    assert result.document["timestamp"] == 4242424242424242
    assert luhn_valid_id not in result.document["message"]["text"]
    assert result.document["message"]["mid"] != luhn_valid_id
    spaced = scrub({"sender": {"id": "4242 4242 4242 4242"}}, hasher=None, identifiers=rule)
    assert "4242 4242" not in spaced.document["sender"]["id"]


def test_the_log_filter_masks_url_encoded_card_numbers():
    record = logging.LogRecord(
        "stripe",
        logging.DEBUG,
        __file__,
        1,
        "body: %s",
        ("description=Gift+card+4242+4242+4242+4242&amount=100",),
        None,
    )
    PanLogFilter().filter(record)
    assert "4242+4242+4242+4242" not in record.getMessage()
    assert "4242 4242 4242 4242" not in record.getMessage()
    assert "amount=100" in record.getMessage()


def test_digits_between_the_letters_of_a_digest_are_not_a_card_number():
    """One SHA-256 hex digest in about 130 holds a Luhn-valid run of digits between its
    letters; a digest is not a card. A card number next to a short word still is one."""
    import hashlib

    digests = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(5000)]
    assert not [d for d in digests if find_pans(d)]
    assert find_pans("card4242424242424242")
    assert find_pans("x" * 40 + " 4242424242424242")
    # A long run of digits alone is an identifier (no letter), handled by the group rule.
    assert not find_pans("1" * 40)
