"""Off-platform attribution (docs/ATTRIBUTION.md): each model and window, no double counting
with reconciled sales, take-back on refund and on revocation, and one result whether it runs
as events arrive or as a batch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from commerce.attribution import engine
from commerce.attribution.models import Attribution
from commerce.offers.services import record_touchpoint
from commerce.reconciliation import engine as reconciliation
from commerce.reconciliation.engine import Scope
from tests.alerts.helpers import OPERATOR, consent
from tests.factories import ConversationFactory, CustomerFactory, OfferFactory
from tests.reconciliation.scenario import T0, open_shop

HOLDER = "cust_1"


@pytest.fixture
def shop(db, client):
    shop = open_shop(db, client)  # the cardholder cust_1 consented, chat identity psid_1
    customer = CustomerFactory(channel="messenger", channel_user_id="psid_1")
    shop.conversation = ConversationFactory(merchant_id=shop.merchant_id, customer_id=customer.id)
    db.flush()
    return shop


def offer(shop, **windows):
    made = OfferFactory(conversation=shop.conversation, merchant_id=shop.merchant_id, **windows)
    shop.db.flush()
    return made


def touch(shop, an_offer, kind, at):
    touchpoint, _ = record_touchpoint(
        shop.db, merchant_id=shop.merchant_id, offer_id=an_offer.id, kind=kind, occurred_at=at
    )
    return touchpoint


def run(shop, as_of=T0 + timedelta(days=1)):
    """Reconcile, then attribute the cardholder: what processing an event does."""
    reconciliation.reconcile(
        shop.db,
        Scope.period(T0 - timedelta(days=30), T0 + timedelta(days=60), as_of=as_of),
    )
    return engine.attribute(shop.db, [(shop.partner_id, HOLDER)])


def credits(shop, model=None):
    """The merchant's credits under each model (or one), as the view gives them."""
    rows = shop.db.execute(
        text(
            'SELECT model, offer_id, "window", amount, refunded, status'
            " FROM attribution_credits WHERE merchant_id = :m"
            " AND (CAST(:model AS text) IS NULL OR model = :model)"
        ),
        {"m": shop.merchant_id, "model": model},
    )
    return sorted(tuple(row) for row in rows)


def test_each_model_credits_the_touchpoints_in_their_windows(shop):
    a, b, c, far = offer(shop), offer(shop), offer(shop), offer(shop)
    touch(shop, far, "clicked", T0 - timedelta(days=8))  # past the 7-day click window
    touch(shop, a, "clicked", T0 - timedelta(days=6))
    touch(shop, b, "accepted", T0 - timedelta(days=1))
    touch(shop, c, "viewed", T0 - timedelta(hours=2))
    touch(shop, far, "viewed", T0 - timedelta(days=2))  # past the 1-day view window
    touch(shop, far, "clicked", T0 + timedelta(hours=1))  # after the purchase
    shop.card("authorized", 1000, at=T0)
    run(shop)
    assert credits(shop) == sorted(
        [
            ("last_touch", c.id, "view_1d", 1000, 0, "active"),
            ("first_touch", a.id, "click_7d", 1000, 0, "active"),
            ("linear", a.id, "click_7d", 333, 0, "active"),
            ("linear", b.id, "click_7d", 333, 0, "active"),
            ("linear", c.id, "view_1d", 334, 0, "active"),
        ]
    )


def test_an_offers_own_window_comes_first(shop):
    long_click = offer(shop, click_window_seconds=10 * 86400)
    short_view = offer(shop, view_window_seconds=3600)
    touch(shop, long_click, "clicked", T0 - timedelta(days=9))
    touch(shop, short_view, "viewed", T0 - timedelta(hours=2))
    shop.card("authorized", 500, at=T0)
    run(shop)
    assert credits(shop, "last_touch") == [
        ("last_touch", long_click.id, "click_10d", 500, 0, "active")
    ]


def test_a_purchase_that_is_an_in_chat_sale_is_never_credited_twice(shop):
    a = offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(hours=1))
    shop.sale(1250, at=T0)
    shop.card("authorized", 1250, at=T0 + timedelta(minutes=1))
    run(shop)
    assert credits(shop) == []
    # A second purchase in the store the same day is off platform.
    shop.card("authorized", 480, at=T0 + timedelta(hours=3))
    run(shop)
    assert credits(shop, "last_touch") == [("last_touch", a.id, "click_7d", 480, 0, "active")]


def test_refunds_within_the_return_period_take_the_credit_back(shop):
    a = offer(shop, return_period_days=14)
    touch(shop, a, "clicked", T0 - timedelta(hours=1))
    full = shop.card("authorized", 1000, at=T0)
    part = shop.card("authorized", 600, at=T0 + timedelta(hours=2))
    late = shop.card("authorized", 300, at=T0 + timedelta(hours=3))
    shop.card("refunded", 1000, txn="rf1", original=full, at=T0 + timedelta(days=3))
    shop.card("refunded", 200, txn="rf2", original=part, at=T0 + timedelta(days=3))
    shop.card("refunded", 300, txn="rf3", original=late, at=T0 + timedelta(days=20))
    run(shop)
    assert credits(shop, "last_touch") == sorted(
        [
            ("last_touch", a.id, "click_7d", 1000, 1000, "taken_back"),
            ("last_touch", a.id, "click_7d", 600, 200, "active"),
            ("last_touch", a.id, "click_7d", 300, 0, "active"),
        ]
    )


def test_a_reversal_takes_the_credit_back(shop):
    a = offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(hours=1))
    txn = shop.card("authorized", 1000, at=T0)
    run(shop)
    assert credits(shop, "last_touch")[0][-1] == "active"
    shop.card("reversed", 1000, txn="rev", original=txn, at=T0 + timedelta(hours=1))
    run(shop)
    # A reversed authorization moved no money: it is no purchase, so nothing is credited.
    assert credits(shop) == []


def test_revoking_consent_removes_the_credits(shop, client):
    a = offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(hours=1))
    shop.card("authorized", 1000, at=T0)
    run(shop)
    assert len(credits(shop)) == 3
    partner = {"id": shop.partner_id}
    consent(
        client,
        partner,
        scopes=("transactions",),
        purposes=("sales_attribution",),
        status="revoked",
    )
    assert credits(shop) == []


def test_a_late_reported_click_is_credited_when_it_is_recorded(shop):
    a = offer(shop)
    shop.card("authorized", 700, at=T0)
    run(shop)
    assert credits(shop) == []
    touch(shop, a, "clicked", T0 - timedelta(hours=5))  # reported after the purchase
    assert credits(shop) == []  # queued for the worker's next drain
    assert reconciliation.drain(shop.db) == 1
    assert credits(shop, "last_touch") == [("last_touch", a.id, "click_7d", 700, 0, "active")]


def test_the_batch_gives_what_the_events_gave_and_a_rerun_changes_nothing(shop):
    offers = [offer(shop) for _ in range(3)]
    for i, an_offer in enumerate(offers):
        touch(shop, an_offer, "clicked", T0 - timedelta(hours=10 - i))
        touch(shop, an_offer, "viewed", T0 + timedelta(hours=i))
    for i in range(5):
        shop.card("authorized", 100 * (i + 1), at=T0 + timedelta(hours=i, minutes=30))
    run(shop)
    incremental = credits(shop)
    assert len(incremental) > 5
    outcome = engine.attribute_period(shop.db, T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert credits(shop) == incremental
    assert outcome.changed == {"deleted": 0, "written": 0}


def test_the_merchants_default_windows_apply_where_an_offer_sets_none(shop, client):
    from commerce.access.services import issue_key
    from tests.helpers import bearer

    headers = bearer(issue_key(shop.db, role="merchant", merchant_id=shop.merchant_id)[1])
    assert client.get("/v1/attribution/settings", headers=headers).json == {
        "click_window_seconds": 7 * 86400,
        "view_window_seconds": 86400,
        "return_period_days": 30,
    }
    answer = client.put(
        "/v1/attribution/settings", json={"click_window_seconds": 2 * 86400}, headers=headers
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["click_window_seconds"] == 2 * 86400
    assert client.put(
        "/v1/attribution/settings", json={"view_window_seconds": 1}, headers=headers
    ).status_code in (400, 422)
    a = offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(days=3))  # inside 7 days, outside 2
    shop.card("authorized", 900, at=T0)
    run(shop)
    assert credits(shop) == []


def test_each_credit_takes_back_under_its_own_offers_return_period(shop):
    short = offer(shop, return_period_days=7)
    long = offer(shop, return_period_days=14)
    touch(shop, short, "clicked", T0 - timedelta(hours=2))
    touch(shop, long, "clicked", T0 - timedelta(hours=1))
    txn = shop.card("authorized", 1000, at=T0)
    shop.card("refunded", 1000, txn="rf", original=txn, at=T0 + timedelta(days=10))
    run(shop)
    assert credits(shop, "linear") == sorted(
        [
            ("linear", short.id, "click_7d", 500, 0, "active"),
            ("linear", long.id, "click_7d", 500, 500, "taken_back"),
        ]
    )


def test_linear_shares_of_a_refund_add_up_to_it(shop):
    offers = [offer(shop) for _ in range(3)]
    for hours, an_offer in zip((3, 2, 1), offers, strict=True):
        touch(shop, an_offer, "clicked", T0 - timedelta(hours=hours))
    txn = shop.card("authorized", 1000, at=T0)
    shop.card("refunded", 500, txn="rf", original=txn, at=T0 + timedelta(days=1))
    run(shop)
    linear = credits(shop, "linear")
    assert sorted((amount, refunded) for _, _, _, amount, refunded, _ in linear) == [
        (333, 166),
        (333, 167),
        (334, 167),
    ]
    assert sum(row[4] for row in linear) == 500


def credited(shop, an_offer):
    """One purchase credited under each model to a click on `an_offer`."""
    touch(shop, an_offer, "clicked", T0 - timedelta(hours=1))
    shop.card("authorized", 1000, at=T0)
    run(shop)
    assert len(credits(shop)) == 3


def stored(shop):
    """Every credit, whatever its merchant."""
    return shop.db.scalar(text("SELECT count(*) FROM attribution_credits"))


def test_deleting_an_offer_takes_the_credits_of_its_touchpoints(shop):
    kept, gone = offer(shop), offer(shop)
    touch(shop, kept, "clicked", T0 - timedelta(hours=2))
    touch(shop, gone, "clicked", T0 - timedelta(hours=1))
    shop.card("authorized", 1000, at=T0)
    run(shop)
    assert {row[1] for row in credits(shop)} == {kept.id, gone.id}
    shop.db.execute(text("DELETE FROM offers WHERE id = :id"), {"id": gone.id})
    assert {row[1] for row in credits(shop)} == {kept.id}


def test_deleting_a_touchpoint_takes_its_credits(shop):
    credited(shop, offer(shop))
    shop.db.execute(text("DELETE FROM touchpoints WHERE merchant_id = :m"), {"m": shop.merchant_id})
    assert stored(shop) == 0


def test_deleting_the_merchant_takes_its_credits(shop):
    credited(shop, offer(shop))
    # The bank's card facts outlive the merchant, no longer at one of its MIDs: only the
    # merchant's own deletion (through its offers and touchpoints) can take the credits.
    shop.db.execute(
        text("UPDATE card_transactions SET merchant_id = NULL WHERE merchant_id = :m"),
        {"m": shop.merchant_id},
    )
    shop.db.execute(text("DELETE FROM merchants WHERE id = :m"), {"m": shop.merchant_id})
    assert stored(shop) == 0


def test_a_conversation_with_credited_touchpoints_cannot_be_deleted(shop):
    credited(shop, offer(shop))
    with pytest.raises(IntegrityError), shop.db.begin_nested():
        shop.db.execute(
            text("DELETE FROM conversations WHERE id = :id"), {"id": shop.conversation.id}
        )
    assert stored(shop) == 3


def test_terminating_the_partners_agreement_removes_the_credits(shop, client):
    from commerce.partners.models import Agreement

    credited(shop, offer(shop))
    agreement = shop.db.scalar(select(Agreement.id).where(Agreement.partner_id == shop.partner_id))
    answer = client.post(
        f"/v1/partners/{shop.partner_id}/agreements/{agreement}/terminate", headers=OPERATOR
    )
    assert answer.status_code == 200, answer.json
    assert stored(shop) == 0


def test_erasing_the_customer_removes_the_credits(shop, client):
    credited(shop, offer(shop))
    erased = client.delete(f"/v1/customers/{shop.conversation.customer_id}", headers=OPERATOR)
    assert erased.status_code == 200, erased.json
    assert stored(shop) == 0


def listen(shop):
    """The merchant's webhook endpoint listening for `attribution.created`."""
    from commerce.outbound import services as outbound
    from commerce.outbound.guard import AddressPolicy

    outbound.create_endpoint(
        shop.db,
        merchant_id=shop.merchant_id,
        url="http://127.0.0.1:9/hooks",
        event_types=["attribution.created"],
        policy=AddressPolicy(allow=frozenset({("127.0.0.1", 9)})),
    )


def test_each_new_last_touch_credit_is_announced_once(shop):
    from commerce.outbound.models import OutboundEvent

    listen(shop)
    a, b = offer(shop), offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(hours=2))
    touch(shop, b, "viewed", T0 - timedelta(hours=1))
    shop.card("authorized", 1000, at=T0)
    shop.card("authorized", 400, at=T0 + timedelta(minutes=30))
    run(shop)
    run(shop)
    engine.attribute_period(shop.db, T0 - timedelta(days=1), T0 + timedelta(days=1))
    events = [
        e.payload["data"]
        for e in shop.db.scalars(
            select(OutboundEvent).where(OutboundEvent.type == "attribution.created")
        )
    ]
    last = shop.db.execute(
        text("SELECT id, offer_id, amount FROM attribution_credits WHERE model = 'last_touch'")
    ).all()
    assert sorted((e["id"], e["offer_id"], e["amount"]) for e in events) == sorted(
        (row.id, b.id, row.amount) for row in last
    )
    assert all(e["model"] == "last_touch" for e in events)
    assert sorted(e["amount"] for e in events) == [400, 1000]


def test_one_row_per_purchase_and_touchpoint_gives_every_models_credit(shop):
    a, b = offer(shop), offer(shop)
    touch(shop, a, "clicked", T0 - timedelta(hours=3))
    touch(shop, b, "clicked", T0 - timedelta(hours=2))
    shop.card("authorized", 1001, at=T0)
    run(shop)
    rows = shop.db.execute(
        select(
            Attribution.offer_id, Attribution.touch_rank, Attribution.touches, Attribution.amount
        )
    ).all()
    assert sorted(rows) == sorted([(a.id, 1, 2, 1001), (b.id, 2, 2, 1001)])
    assert credits(shop) == sorted(
        [
            ("last_touch", b.id, "click_7d", 1001, 0, "active"),
            ("first_touch", a.id, "click_7d", 1001, 0, "active"),
            ("linear", a.id, "click_7d", 500, 0, "active"),
            ("linear", b.id, "click_7d", 501, 0, "active"),
        ]
    )


def test_a_later_touch_reported_late_becomes_the_last_touch_and_is_announced(shop):
    from commerce.outbound.models import OutboundEvent

    listen(shop)
    a, b = offer(shop), offer(shop)
    first = touch(shop, a, "clicked", T0 - timedelta(hours=3))
    shop.card("authorized", 900, at=T0)
    run(shop)
    touch(shop, b, "viewed", T0 - timedelta(hours=1))  # reported after the purchase
    assert reconciliation.drain(shop.db) >= 1
    assert credits(shop, "last_touch") == [("last_touch", b.id, "view_1d", 900, 0, "active")]
    assert credits(shop, "first_touch") == [("first_touch", a.id, "click_7d", 900, 0, "active")]
    announced = [
        (e.payload["data"]["offer_id"], e.payload["data"]["amount"])
        for e in shop.db.scalars(
            select(OutboundEvent)
            .where(OutboundEvent.type == "attribution.created")
            .order_by(OutboundEvent.created_at)
        )
    ]
    assert sorted(announced) == sorted([(a.id, 900), (b.id, 900)])
    # The first touch's row was updated in place (now the first of two), not written again.
    assert (
        shop.db.scalar(select(Attribution.touches).where(Attribution.touchpoint_id == first.id))
        == 2
    )
