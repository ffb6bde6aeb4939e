"""Signature checks, with real signatures: what passes and every way to fail."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from tests.support.signing import meta_headers, partner_headers, stripe_headers
from webhooks.verify import SignatureError, verify_meta, verify_standard, verify_stripe

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"id":"evt_1","object":"event"}'


def test_standard_webhooks_published_vector():
    """The test vector of the Standard Webhooks specification."""
    body = b'{"test": 2432232314}'
    signature = Webhook(SECRET).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), body.decode()
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert verify_standard(body, headers, [SECRET], now=1614265330) == (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
    )
    with pytest.raises(SignatureError):
        verify_standard(body + b" ", headers, [SECRET], now=1614265330)


def test_standard_webhooks_accepts_any_listed_signature_and_any_active_secret():
    headers = partner_headers(BODY, "whsec_" + "b2xk" * 8, "msg_1")
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert verify_standard(BODY, headers, [SECRET, "whsec_" + "b2xk" * 8])[0] == "msg_1"


@pytest.mark.parametrize("skew", [-301, 301, -10_000, 10_000])
def test_standard_webhooks_timestamp_tolerance_both_ways(skew):
    headers = partner_headers(BODY, SECRET, "msg_1", timestamp=int(time.time()) + skew)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_standard(BODY, headers, [SECRET])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.pop("webhook-signature"),
        lambda h: h.pop("webhook-id"),
        lambda h: h.pop("webhook-timestamp"),
        lambda h: h.update({"webhook-id": "msg_2"}),
        lambda h: h.update({"webhook-signature": "v2," + h["webhook-signature"][3:]}),
        lambda h: h.update({"webhook-signature": "garbage"}),
        lambda h: h.update({"webhook-timestamp": "12.5"}),
    ],
)
def test_standard_webhooks_tampered_headers_fail(mutate):
    headers = partner_headers(BODY, SECRET, "msg_1")
    mutate(headers)
    with pytest.raises(SignatureError):
        verify_standard(BODY, headers, [SECRET])


def test_no_secret_means_no_entry():
    with pytest.raises(SignatureError):
        verify_standard(BODY, partner_headers(BODY, SECRET, "m"), [])
    with pytest.raises(SignatureError):
        verify_stripe(BODY, stripe_headers(BODY, "whsec_x")["Stripe-Signature"], [])
    with pytest.raises(SignatureError):
        verify_meta(BODY, meta_headers(BODY, "s")["X-Hub-Signature-256"], "")


def test_stripe_signature_with_rotated_secrets():
    header = stripe_headers(BODY, "whsec_old")["Stripe-Signature"]
    assert verify_stripe(BODY, header, ["whsec_new", "whsec_old"]) > 0
    with pytest.raises(SignatureError):
        verify_stripe(BODY, header, ["whsec_new"])


@pytest.mark.parametrize("skew", [-301, 301])
def test_stripe_timestamp_tolerance_both_ways(skew):
    header = stripe_headers(BODY, "whsec_a", timestamp=int(time.time()) + skew)["Stripe-Signature"]
    with pytest.raises(SignatureError):
        verify_stripe(BODY, header, ["whsec_a"])


def test_meta_signature():
    header = meta_headers(BODY, "app-secret")["X-Hub-Signature-256"]
    verify_meta(BODY, header, "app-secret")
    flipped = header[:-1] + ("1" if header[-1] == "0" else "0")
    for bad in (header.replace("sha256=", "sha1="), flipped, None):
        with pytest.raises(SignatureError):
            verify_meta(BODY, bad, "app-secret")
    with pytest.raises(SignatureError):
        verify_meta(BODY + b"x", header, "app-secret")
