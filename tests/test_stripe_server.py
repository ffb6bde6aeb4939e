"""The test Stripe server, driven through the real ``stripe`` SDK.

These tests pin the behaviours the product's own tests rely on (idempotency,
refund limits, events, faults) and, where ``../shared/data/stripe`` is present,
hold the server to Stripe's example objects and OpenAPI document.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import stripe

from tests.support.stripe_server import (
    CARD_MASTERCARD,
    Card,
    StripeApiError,
    StripeServer,
    parse_form,
)
from tests.support.stripe_spec import (
    STRIPE_FIXTURES,
    STRIPE_SPEC,
    assert_allowed_by_spec,
    check_request,
    load_fixtures,
    load_spec,
    shared_data_path,
)

API_KEY = "sk_test_123"

SALE_METADATA = {
    "sale_id": "sale_7Hq2",
    "offer_id": "ofr_88f1",
    "conversation_id": "conv_4821",
    "merchant_id": "mer_19a",
}


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as running:
        yield running


@contextlib.contextmanager
def _client(
    server: StripeServer, api_key: str = API_KEY, *, max_network_retries: int = 0
) -> Iterator[stripe.StripeClient]:
    """The SDK configured as the product configures it, with the server as API base.

    It gets its own http client so that its pooled connections are closed when the
    test ends, not whenever the garbage collector gets to them.
    """
    http_client = stripe.RequestsClient()
    try:
        yield stripe.StripeClient(
            api_key,
            base_addresses={"api": server.url},
            http_client=http_client,
            max_network_retries=max_network_retries,
        )
    finally:
        http_client.close()


@pytest.fixture
def sdk(server: StripeServer) -> Iterator[stripe.StripeClient]:
    with _client(server) as sdk:
        yield sdk


@pytest.fixture
def retrying_sdk(server: StripeServer) -> Iterator[stripe.StripeClient]:
    with _client(server, max_network_retries=2) as sdk:
        yield sdk


def _create_intent(
    sdk: stripe.StripeClient, amount: int = 1250, *, key: str | None = None, **extra: Any
) -> stripe.PaymentIntent:
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "usd",
        "metadata": SALE_METADATA,
        "automatic_payment_methods": {"enabled": True},
        "description": "2 x cold brew, chat offer ofr_88f1",
        "statement_descriptor_suffix": "CHAT SALE",
        **extra,
    }
    options: stripe.RequestOptions = {"idempotency_key": key} if key else {}
    return sdk.v1.payment_intents.create(params=params, options=options)


# -- PaymentIntents ------------------------------------------------------------


def test_create_payment_intent_answers_like_stripe(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    intent = _create_intent(sdk)

    assert intent.object == "payment_intent"
    assert re.fullmatch(r"pi_[A-Za-z0-9]{24}", intent.id)
    assert intent.status == "requires_payment_method"
    assert re.fullmatch(rf"{intent.id}_secret_[A-Za-z0-9]+", intent.client_secret or "")
    assert intent.amount == 1250
    assert intent.currency == "usd"
    assert intent.livemode is False
    assert intent.metadata.to_dict() == SALE_METADATA
    assert intent.automatic_payment_methods is not None
    assert intent.automatic_payment_methods.enabled is True
    assert intent.statement_descriptor_suffix == "CHAT SALE"

    # What went over the wire: nested form params and the SDK's Idempotency-Key.
    sent = server.requests[-1]
    assert (sent.method, sent.path, sent.status) == ("POST", "/v1/payment_intents", 200)
    assert sent.params["metadata"] == SALE_METADATA
    assert sent.params["automatic_payment_methods"] == {"enabled": "true"}
    assert sent.params["amount"] == "1250"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.idempotency_key

    assert sdk.v1.payment_intents.retrieve(intent.id).to_dict() == intent.to_dict()
    assert [e["type"] for e in server.events] == ["payment_intent.created"]


def test_idempotent_replay_returns_the_same_intent_and_creates_nothing(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    first = _create_intent(sdk, key="sale_7Hq2:create")
    again = _create_intent(sdk, key="sale_7Hq2:create")

    assert again.id == first.id
    assert again.client_secret == first.client_secret
    assert server.requests[-1].replayed is True
    assert len(server.objects("payment_intent")) == 1
    assert len(server.events) == 1


def test_same_key_with_other_parameters_is_an_idempotency_error(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    _create_intent(sdk, key="sale_7Hq2:create")

    with pytest.raises(stripe.IdempotencyError) as excinfo:
        _create_intent(sdk, amount=1300, key="sale_7Hq2:create")
    assert excinfo.value.http_status == 400
    assert "same parameters" in str(excinfo.value.user_message)

    # Same key on another endpoint: refused as well.
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.refunds.create(
            params={"payment_intent": "pi_x"}, options={"idempotency_key": "sale_7Hq2:create"}
        )
    assert len(server.objects("payment_intent")) == 1


def test_validation_errors_are_stripe_shaped(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        _create_intent(sdk, amount_in_cents=1250)
    assert unknown.value.http_status == 400
    assert unknown.value.param == "amount_in_cents"
    assert unknown.value.error is not None
    assert unknown.value.error.type == "invalid_request_error"

    with pytest.raises(stripe.InvalidRequestError) as too_small:
        _create_intent(sdk, amount=10)
    assert too_small.value.code == "amount_too_small"

    with pytest.raises(stripe.InvalidRequestError) as kwd:
        _create_intent(sdk, amount=1255, currency="kwd")
    assert kwd.value.param == "amount"

    # Refused before anything is created, like every other bad input.
    with pytest.raises(stripe.InvalidRequestError) as bad_expand:
        _create_intent(sdk, expand=["latest_charge.nonsense"])
    assert bad_expand.value.param == "expand"
    assert server.objects("payment_intent") == []

    with pytest.raises(stripe.InvalidRequestError) as missing:
        sdk.v1.payment_intents.retrieve("pi_doesnotexist")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    assert missing.value.param == "intent"


def test_metadata_follows_stripe_limits(sdk: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as too_many:
        _create_intent(sdk, metadata={f"k{i}": "v" for i in range(51)})
    assert too_many.value.param == "metadata"

    with pytest.raises(stripe.InvalidRequestError):
        _create_intent(sdk, metadata={"k" * 41: "v"})

    intent = _create_intent(sdk)
    updated = sdk.v1.payment_intents.update(
        intent.id, params={"metadata": {"offer_id": "", "note": "gift"}}
    )
    expected = {**SALE_METADATA, "note": "gift"}
    del expected["offer_id"]  # an empty value removes the key, as on Stripe
    assert updated.metadata.to_dict() == expected


def test_api_key_is_required_and_must_be_a_test_key(server: StripeServer) -> None:
    for key in ("pk_test_123", "sk_live_123456789012", "Bearer"):
        with _client(server, key) as wrong, pytest.raises(stripe.AuthenticationError) as excinfo:
            wrong.v1.payment_intents.retrieve("pi_any")
        assert excinfo.value.http_status == 401
    assert [r.status for r in server.requests] == [401, 401, 401]

    with StripeServer(api_key="sk_test_only_this_one") as strict:
        with _client(strict) as other, pytest.raises(stripe.AuthenticationError):
            other.v1.events.list()
        with _client(strict, "sk_test_only_this_one") as right:
            assert right.v1.events.list().data == []


def test_cancel(server: StripeServer, sdk: stripe.StripeClient) -> None:
    intent = _create_intent(sdk)
    canceled = sdk.v1.payment_intents.cancel(intent.id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "abandoned"
    assert canceled.canceled_at is not None

    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        sdk.v1.payment_intents.cancel(intent.id)
    assert excinfo.value.code == "payment_intent_unexpected_state"
    with pytest.raises(StripeApiError):
        server.succeed(intent.id)


# -- the simulated customer ------------------------------------------------------


def test_succeed_creates_a_charge_with_card_details(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    intent = _create_intent(sdk)
    server.succeed(intent.id, card=CARD_MASTERCARD)

    paid = sdk.v1.payment_intents.retrieve(
        intent.id, params={"expand": ["latest_charge.balance_transaction"]}
    )
    assert paid.status == "succeeded"
    assert paid.amount_received == 1250
    charge = paid.latest_charge
    assert isinstance(charge, stripe.Charge)
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert (card.brand, card.last4) == ("mastercard", "4444")  # type: ignore[union-attr]
    assert card.fingerprint == CARD_MASTERCARD.resolved_fingerprint  # type: ignore[union-attr]
    assert charge.amount_captured == 1250
    assert charge.metadata.to_dict() == SALE_METADATA
    balance = charge.balance_transaction
    assert isinstance(balance, stripe.BalanceTransaction)
    assert balance.amount == 1250
    assert balance.net == balance.amount - balance.fee
    assert [e["type"] for e in server.events][-2:] == [
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_test_helpers_over_http(server: StripeServer, sdk: stripe.StripeClient) -> None:
    declined = _create_intent(sdk)
    sdk.raw_request("post", f"/_test/payment_intents/{declined.id}/fail", code="card_declined")
    after = sdk.v1.payment_intents.retrieve(declined.id)
    assert after.status == "requires_payment_method"
    assert after.last_payment_error is not None
    assert after.last_payment_error.code == "card_declined"
    assert server.get(str(after.latest_charge))["status"] == "failed"

    # The customer tries again with another card, and it goes through.
    sdk.raw_request(
        "post",
        f"/_test/payment_intents/{declined.id}/succeed",
        card={"brand": "visa", "last4": "5556", "funding": "debit"},
    )
    paid = sdk.v1.payment_intents.retrieve(declined.id)
    assert paid.status == "succeeded"
    charge = sdk.v1.charges.retrieve(str(paid.latest_charge))
    assert charge.payment_method_details.card.funding == "debit"  # type: ignore[union-attr]
    assert [r.path for r in server.requests if r.is_test_helper] == [
        f"/_test/payment_intents/{declined.id}/fail",
        f"/_test/payment_intents/{declined.id}/succeed",
    ]


def test_same_card_same_fingerprint() -> None:
    assert Card("visa", "4242").resolved_fingerprint == Card("visa", "4242").resolved_fingerprint
    assert Card("visa", "4242").resolved_fingerprint != Card("visa", "5556").resolved_fingerprint
    assert Card(fingerprint="fixedFp").resolved_fingerprint == "fixedFp"


# -- refunds and capture -----------------------------------------------------------


def test_partial_refunds_then_over_refund_is_refused(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    intent = _create_intent(sdk, amount=1000)
    server.succeed(intent.id)

    first = sdk.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 300, "reason": "requested_by_customer"}
    )
    second = sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 300})
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert first.id != second.id
    assert sdk.v1.refunds.retrieve(first.id).amount == 300

    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    assert excinfo.value.param == "amount"

    rest = sdk.v1.refunds.create(params={"payment_intent": intent.id})  # what is left: 400
    assert rest.amount == 400
    charge = sdk.v1.charges.retrieve(str(rest.charge))
    assert (charge.amount_refunded, charge.refunded) == (1000, True)

    with pytest.raises(stripe.InvalidRequestError) as done:
        sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert done.value.code == "charge_already_refunded"
    refund_events = [e for e in server.events if e["type"] == "charge.refunded"]
    assert [e["data"]["object"]["amount_refunded"] for e in refund_events] == [300, 600, 1000]


def test_refund_needs_a_successful_charge(sdk: stripe.StripeClient) -> None:
    intent = _create_intent(sdk)
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        sdk.v1.refunds.create(params={"payment_intent": intent.id})
    assert excinfo.value.param == "payment_intent"


def test_manual_capture_of_part_releases_the_rest(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    intent = _create_intent(sdk, amount=1000, capture_method="manual")
    authorized = server.succeed(intent.id)
    assert (authorized["status"], authorized["amount_capturable"]) == ("requires_capture", 1000)

    captured = sdk.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 600})
    assert (captured.status, captured.amount_received) == ("succeeded", 600)
    charge = sdk.v1.charges.retrieve(str(captured.latest_charge))
    assert (charge.amount_captured, charge.amount_refunded) == (600, 400)

    # Only what was captured can be refunded.
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 601})
    assert sdk.v1.refunds.create(params={"payment_intent": intent.id}).amount == 600


# -- events ------------------------------------------------------------------------


def test_events_list_pages_newest_first_and_filters_by_created(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    first = _create_intent(sdk)
    server.advance_clock(60)
    since = server.now()
    later = [_create_intent(sdk) for _ in range(3)]

    page = sdk.v1.events.list(params={"limit": 2})
    assert page.object == "list"
    assert page.has_more is True
    assert [e.data.object["id"] for e in page.data] == [later[2].id, later[1].id]

    following = sdk.v1.events.list(params={"limit": 2, "starting_after": page.data[-1].id})
    assert [e.data.object["id"] for e in following.data] == [later[0].id, first.id]
    assert following.has_more is False

    recent = sdk.v1.events.list(params={"created": {"gte": since}})
    assert {e.data.object["id"] for e in recent.data} == {i.id for i in later}

    everything = list(sdk.v1.events.list(params={"limit": 1}).auto_paging_iter())
    assert len(everything) == 4
    assert [e.id for e in everything] == [e["id"] for e in reversed(server.events)]

    typed = sdk.v1.events.list(params={"type": "payment_intent.*"})
    assert len(typed.data) == 4

    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.events.list(params={"limit": 101})


# -- faults ----------------------------------------------------------------------


def test_injected_500_is_an_api_error_without_retries(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    server.fail_next(1, status=500)
    with pytest.raises(stripe.APIError) as excinfo:
        _create_intent(sdk)
    assert excinfo.value.http_status == 500
    assert server.objects("payment_intent") == []
    _create_intent(sdk)  # the fault is spent


def test_sdk_retry_after_500_reuses_the_idempotency_key(
    server: StripeServer, retrying_sdk: stripe.StripeClient
) -> None:
    server.fail_next(1, status=500, path_prefix="/v1/payment_intents")
    intent = _create_intent(retrying_sdk)

    attempts = server.requests
    assert [r.status for r in attempts] == [500, 200]
    assert attempts[0].idempotency_key == attempts[1].idempotency_key
    assert [p["id"] for p in server.objects("payment_intent")] == [intent.id]


def test_lost_response_then_retry_replays_the_created_intent(
    server: StripeServer, retrying_sdk: stripe.StripeClient
) -> None:
    # The request is carried out but the connection drops before the answer.
    server.fail_next(1, status=None, applied=True)
    intent = _create_intent(retrying_sdk)

    first, retry = server.requests
    assert first.status is None
    assert retry.replayed is True
    assert [p["id"] for p in server.objects("payment_intent")] == [intent.id]


def test_dropped_connection_is_a_connection_error(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    server.fail_next(1, status=None)
    with pytest.raises(stripe.APIConnectionError):
        _create_intent(sdk)
    assert server.objects("payment_intent") == []


# -- Connect -----------------------------------------------------------------------


def test_connected_account_objects_are_invisible_to_the_platform(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    on_account = sdk.v1.payment_intents.create(
        params={"amount": 1250, "currency": "usd"}, options={"stripe_account": "acct_1Merchant"}
    )
    with pytest.raises(stripe.InvalidRequestError) as excinfo:
        sdk.v1.payment_intents.retrieve(on_account.id)
    assert excinfo.value.http_status == 404
    seen = sdk.v1.payment_intents.retrieve(
        on_account.id, options={"stripe_account": "acct_1Merchant"}
    )
    assert seen.id == on_account.id
    assert server.events[-1]["account"] == "acct_1Merchant"
    assert sdk.v1.events.list().data == []


# -- form decoding ---------------------------------------------------------------


def test_parse_form_nests_like_stripe() -> None:
    assert parse_form(
        [
            ("metadata[sale_id]", "sale_1"),
            ("metadata[0]", "zero"),
            ("expand[0]", "latest_charge"),
            ("expand[1]", "customer"),
            ("created[gte]", "10"),
            ("types[]", "a"),
            ("types[]", "b"),
        ]
    ) == {
        "metadata": {"sale_id": "sale_1", "0": "zero"},
        "expand": ["latest_charge", "customer"],
        "created": {"gte": "10"},
        "types": ["a", "b"],
    }
    with pytest.raises(StripeApiError):
        parse_form([("a", "1"), ("a[b]", "2")])
    with pytest.raises(StripeApiError):
        parse_form([("a]b[", "1")])


# -- against Stripe's own reference data (../shared/data/stripe) -----------------


def _one_of_each(server: StripeServer, sdk: stripe.StripeClient) -> dict[str, dict[str, Any]]:
    intent = _create_intent(sdk)
    server.succeed(intent.id)
    refund = sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    paid = server.get(intent.id)
    event = server.events[-1]
    dispute = server.dispute(intent.id, amount=500)
    server.succeed(_create_intent(sdk, amount=5000).id)  # enough for the dispute fee
    return {
        "payment_intent": paid,
        "charge": server.get(paid["latest_charge"]),
        "refund": server.get(refund.id),
        "balance_transaction": server.get(server.get(paid["latest_charge"])["balance_transaction"]),
        "event": event,
        "dispute": dispute,
        "payout": server.pay_out(),
    }


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "integer", str: "string"}.get(
        type(value), type(value).__name__
    )


@pytest.mark.parametrize(
    "object_type",
    ["payment_intent", "refund", "charge", "event", "balance_transaction", "dispute", "payout"],
)
def test_objects_carry_every_top_level_field_of_stripes_examples(
    server: StripeServer, sdk: stripe.StripeClient, object_type: str
) -> None:
    example = load_fixtures()[object_type]
    ours = _one_of_each(server, sdk)[object_type]

    assert sorted(set(example) - set(ours)) == []
    # Where both sides have a value, it is of the same JSON kind.
    mismatched = {
        name: (_json_kind(example[name]), _json_kind(ours[name]))
        for name in example
        if example[name] is not None
        and ours[name] is not None
        and _json_kind(example[name]) != _json_kind(ours[name])
    }
    assert mismatched == {}
    if shared_data_path(STRIPE_SPEC).exists():
        required = load_spec().schema(object_type).get("required", [])
        assert sorted(set(required) - set(ours)) == []


def test_fixtures_are_read_from_beside_the_repository() -> None:
    resources = load_fixtures()
    assert {"payment_intent", "refund", "charge", "event"} <= set(resources)
    assert STRIPE_FIXTURES.startswith("stripe/")


def test_requests_the_sdk_sends_are_allowed_by_stripes_spec(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    load_spec()  # skip early, before any traffic, when the spec is absent
    intent = _create_intent(sdk, key="sale_7Hq2:create")
    sdk.v1.payment_intents.update(intent.id, params={"metadata": {"note": "gift"}})
    server.succeed(intent.id)
    sdk.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]})
    sdk.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 100, "metadata": {"sale_id": "sale_7Hq2"}}
    )
    sdk.v1.events.list(params={"created": {"gte": 0}, "limit": 5, "types": ["charge.*"]})
    manual = _create_intent(sdk, capture_method="manual")
    server.succeed(manual.id)
    sdk.v1.payment_intents.capture(manual.id, params={"amount_to_capture": 600})
    sdk.v1.payment_intents.cancel(_create_intent(sdk).id)

    assert len(server.requests) == 9
    assert_allowed_by_spec(server.requests)


def test_spec_checker_catches_what_stripe_would_refuse(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    load_spec()
    # A wrong top-level parameter, sent for real by the SDK: the server refuses
    # it, and the checker names it from the recorded request.
    with pytest.raises(stripe.InvalidRequestError):
        _create_intent(sdk, amount_in_cents=1250)
    refused = server.requests[-1]
    assert refused.status == 400
    problems = check_request(refused.method, refused.path, refused.params)
    assert problems == [
        "POST /v1/payment_intents: unknown parameter 'amount_in_cents' "
        "(not in the operation's form schema)"
    ]
    with pytest.raises(AssertionError, match="amount_in_cents"):
        assert_allowed_by_spec(server.requests)

    # Nested typos, enums, types, and operations that do not exist.
    typo = {"amount": "1", "currency": "usd", "automatic_payment_methods": {"enable": "true"}}
    nested = check_request("POST", "/v1/payment_intents", typo)
    assert nested == [
        "POST /v1/payment_intents: unknown parameter 'automatic_payment_methods[enable]'"
    ]
    assert check_request("POST", "/v1/payment_intents", {"capture_method": "later"})
    assert check_request("POST", "/v1/refunds", {"amount": "ten"})
    assert check_request("GET", "/v1/events", {"created": {"after": "1"}})
    assert check_request("DELETE", "/v1/payment_intents/pi_123", {})
    assert check_request("POST", "/v1/payment_intent", {})
    # ...while metadata takes any key, and templated paths match.
    assert check_request("POST", "/v1/payment_intents/pi_123", {"metadata": {"any_key": "v"}}) == []


# -- raw HTTP and concurrency ------------------------------------------------------


def test_raw_http_errors_are_stripe_shaped(server: StripeServer) -> None:
    with requests.Session() as http:
        anonymous = http.get(f"{server.url}/v1/events")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "invalid_request_error"

        auth = {"Authorization": f"Bearer {API_KEY}"}
        as_json = http.post(f"{server.url}/v1/payment_intents", json={"amount": 1}, headers=auth)
        assert as_json.status_code == 400
        assert "Content-Type" in as_json.json()["error"]["message"]

        unknown = http.get(f"{server.url}/v1/customers/cus_1", headers=auth)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"].startswith("Unrecognized request URL")
    assert [r.status for r in server.requests] == [401, 400, 404]


def test_concurrent_requests_with_one_key_create_one_intent(server: StripeServer) -> None:
    def create(_: int) -> str:
        with _client(server) as own:
            return _create_intent(own, key="sale_race:create").id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(create, range(8)))
    assert len(ids) == 1
    assert len(server.objects("payment_intent")) == 1


# -- disputes and payouts ------------------------------------------------------------


def test_a_payout_lists_its_charges_refunds_disputes_and_fees(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    kept = _create_intent(sdk, amount=2000)
    server.succeed(kept.id)
    refunded = _create_intent(sdk, amount=1000)
    server.succeed(refunded.id)
    refund = sdk.v1.refunds.create(params={"payment_intent": refunded.id, "amount": 300})
    disputed = _create_intent(sdk, amount=1500)
    server.succeed(disputed.id)
    dispute = server.dispute(disputed.id)
    assert (dispute["status"], dispute["amount"]) == ("needs_response", 1500)
    assert sdk.v1.charges.retrieve(dispute["charge"]).disputed is True
    assert [e["type"] for e in server.events][-2:] == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
    ]
    withdrawal = dispute["balance_transactions"][0]
    assert (withdrawal["type"], withdrawal["source"]) == ("adjustment", dispute["id"])
    assert withdrawal["net"] == -1500 - withdrawal["fee"]
    assert sdk.v1.disputes.retrieve(dispute["id"]).charge == dispute["charge"]

    payout = server.pay_out(fees=[25])
    lines = list(
        sdk.v1.balance_transactions.list(
            params={"payout": payout["id"], "limit": 2}
        ).auto_paging_iter()
    )
    by_type: dict[str, list[Any]] = {}
    for line in lines:
        by_type.setdefault(line.type, []).append(line)
    assert sorted((t, len(v)) for t, v in by_type.items()) == [
        ("adjustment", 1),
        ("charge", 3),
        ("payout", 1),
        ("refund", 1),
        ("stripe_fee", 1),
    ]
    assert by_type["refund"][0].source == refund.id
    assert by_type["payout"][0].source == payout["id"]
    assert by_type["stripe_fee"][0].source is None
    assert by_type["stripe_fee"][0].net == -25
    assert payout["amount"] == sum(line.net for line in lines if line.type != "payout")
    assert by_type["payout"][0].amount == -payout["amount"]
    assert len({line.id for line in lines}) == len(lines) == 7

    fetched = sdk.v1.payouts.retrieve(payout["id"])
    assert (fetched.status, fetched.amount, fetched.automatic) == ("paid", payout["amount"], True)
    paid = [e for e in server.events if e["type"] == "payout.paid"]
    assert [e["data"]["object"]["id"] for e in paid] == [payout["id"]]
    assert paid[0]["data"]["previous_attributes"] == {"status": "in_transit"}

    # Paid out once: the next payout has only what came after.
    later = _create_intent(sdk, amount=800)
    server.succeed(later.id)
    second = server.pay_out()
    listed = sdk.v1.balance_transactions.list(params={"payout": second["id"]})
    assert sorted(line.type for line in listed.data) == ["charge", "payout"]
    charge_line = next(line for line in listed.data if line.type == "charge")
    assert second["amount"] == charge_line.net


def test_a_payout_of_chosen_lines_that_does_not_add_up(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    one, two = _create_intent(sdk, amount=1000), _create_intent(sdk, amount=1200)
    server.succeed(one.id)
    server.succeed(two.id)
    charge = server.get(server.get(one.id)["latest_charge"])
    payout = server.pay_out(balance_transactions=[charge["id"]], amount=123)
    listed = sdk.v1.balance_transactions.list(
        params={"payout": payout["id"], "expand": ["data.source"]}
    )
    assert sorted(line.type for line in listed.data) == ["charge", "payout"]
    line = next(line for line in listed.data if line.type == "charge")
    assert isinstance(line.source, stripe.Charge)
    assert line.source.payment_intent == one.id
    assert payout["amount"] == 123 != line.net

    with pytest.raises(StripeApiError):
        server.pay_out(balance_transactions=[charge["id"]])  # paid out already
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        sdk.v1.balance_transactions.list(params={"payout": "po_doesnotexist"})
    assert unknown.value.http_status == 404


def test_payouts_over_http_and_per_connected_account(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    account = {"stripe_account": "acct_1Merchant"}
    intent = sdk.v1.payment_intents.create(
        params={"amount": 1250, "currency": "usd"}, options=account
    )
    sdk.raw_request("post", f"/_test/payment_intents/{intent.id}/succeed", **account)
    platform = _create_intent(sdk)
    server.succeed(platform.id)

    payout = sdk.raw_request("post", "/_test/payouts", fees=["10"], **account)
    payout_id = sdk.deserialize(payout, api_mode="V1").id
    lines = sdk.v1.balance_transactions.list(params={"payout": payout_id}, options=account)
    assert sorted(line.type for line in lines.data) == ["charge", "payout", "stripe_fee"]
    assert server.events[-1]["account"] == "acct_1Merchant"
    assert server.events[-1]["type"] == "payout.paid"
    # Another account's payout answers like one that does not exist.
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.payouts.retrieve(payout_id)
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.balance_transactions.list(params={"payout": payout_id})

    disputed = sdk.raw_request("post", f"/_test/charges/{platform.id}/dispute", amount="500")
    dispute = sdk.deserialize(disputed, api_mode="V1")
    assert (dispute.object, dispute.amount) == ("dispute", 500)


def test_payout_requests_are_allowed_by_stripes_spec(
    server: StripeServer, sdk: stripe.StripeClient
) -> None:
    load_spec()
    intent = _create_intent(sdk, amount=5000)
    server.succeed(intent.id)
    server.dispute(intent.id, amount=400)
    payout = server.pay_out(fees=[5])
    sdk.v1.payouts.retrieve(payout["id"])
    page = sdk.v1.balance_transactions.list(
        params={"payout": payout["id"], "limit": 1, "expand": ["data.source"]}
    )
    sdk.v1.balance_transactions.list(
        params={"payout": payout["id"], "limit": 1, "starting_after": page.data[0].id}
    )
    sdk.v1.balance_transactions.list(params={"type": "charge", "currency": "usd"})
    sdk.v1.disputes.retrieve(server.objects("dispute")[0]["id"])
    assert_allowed_by_spec(server.requests)
