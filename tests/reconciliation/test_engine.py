"""The reconciliation rules (docs/RECONCILIATION.md), one case each, on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from commerce.reconciliation import engine
from commerce.reconciliation.engine import Scope
from tests.reconciliation.scenario import T0, open_shop

AS_OF = T0 + timedelta(days=1)
PERIOD = (T0 - timedelta(days=30), T0 + timedelta(days=30))


@pytest.fixture
def shop(db, client):
    return open_shop(db, client)


def batch(shop, as_of=AS_OF):
    return engine.reconcile(
        shop.db, Scope.period(*PERIOD, merchant_id=shop.merchant_id, as_of=as_of)
    )


def test_an_exact_match_records_how_it_was_made_and_leaves_no_exception(shop):
    sale = shop.sale(1250, charges=("ch_1",))
    txn = shop.card("authorized", 1250)
    shop.card("cleared", 1250, txn=txn, at=T0 + timedelta(days=1))
    batch(shop)
    assert shop.matches() == {
        (sale.id, "stripe_charge", "ch_1", "payment_intent"),
        (sale.id, "card_purchase", shop.key(txn), "card_exact"),
    }
    assert shop.exceptions() == {}


def test_a_clearing_above_the_capture_is_an_amount_mismatch_with_both_values(shop):
    sale = shop.sale(1250)
    txn = shop.card("authorized", 1250)
    shop.card("cleared", 1400, txn=txn)
    batch(shop)
    assert shop.exceptions() == {
        ("amount_mismatch", f"sale:{sale.id}:card"): {
            "amount": {"sale": 1250, "card": 1400},
            "transaction": shop.key(txn),
        }
    }


def test_stripe_capturing_another_amount_is_an_amount_mismatch(shop):
    sale = shop.sale(1250, captured=1000, last4=None)
    batch(shop)
    assert shop.exceptions() == {
        ("amount_mismatch", f"sale:{sale.id}:stripe"): {"amount": {"sale": 1250, "stripe": 1000}}
    }


def test_a_tolerance_lets_a_near_amount_match_and_stay_quiet(shop, db):
    from commerce.reconciliation.models import ReconciliationSettings

    sale = shop.sale(1250)
    txn = shop.card("authorized", 1260)
    shop.card("cleared", 1260, txn=txn)
    batch(shop)
    assert (sale.id, "card_purchase", shop.key(txn), "card_time") in shop.matches()
    assert ("amount_mismatch", f"sale:{sale.id}:card") in shop.exceptions()

    db.add(ReconciliationSettings(merchant_id=shop.merchant_id, amount_tolerance=10))
    db.flush()
    batch(shop)
    assert (sale.id, "card_purchase", shop.key(txn), "card_tolerance") in shop.matches()
    assert shop.exceptions() == {}
    assert ("amount_mismatch", f"sale:{sale.id}:card") in shop.exceptions(status="resolved")


def test_another_currency_is_a_currency_mismatch(shop):
    sale = shop.sale(1250, currency="USD")
    shop.card("authorized", 1150, currency="EUR")
    batch(shop)
    found = shop.exceptions()
    assert found[("currency_mismatch", f"sale:{sale.id}:card")]["currency"] == {
        "sale": "USD",
        "card": "EUR",
    }


def test_a_purchase_matching_no_sale_is_an_orphan_until_its_sale_appears(shop):
    txn = shop.card("authorized", 990, at=T0 + timedelta(hours=3))
    batch(shop)
    assert shop.exceptions() == {
        ("orphan_transaction", f"txn:{shop.key(txn)}"): {
            "sale": {"expected": True, "found": False},
            "mid": shop.mid,
            "amount": 990,
            "currency": "USD",
        }
    }
    sale = shop.sale(990, at=T0 + timedelta(hours=3, minutes=-2))
    batch(shop)
    assert shop.exceptions() == {}
    assert (sale.id, "card_purchase", shop.key(txn), "card_exact") in shop.matches()


def test_a_second_identical_purchase_is_a_duplicate_charge_not_an_orphan(shop):
    sale = shop.sale(1250)
    first = shop.card("authorized", 1250, at=T0 + timedelta(minutes=1))
    second = shop.card("authorized", 1250, at=T0 + timedelta(minutes=3))
    batch(shop)
    assert (sale.id, "card_purchase", shop.key(first), "card_exact") in shop.matches()
    assert shop.exceptions() == {
        ("duplicate_charge", f"txn:{shop.key(second)}"): {
            "transaction": {"matched": shop.key(first), "duplicate": shop.key(second)},
            "amount": 1250,
            "currency": "USD",
        }
    }


def test_two_stripe_charges_for_one_sale_are_a_duplicate_charge(shop):
    sale = shop.sale(1250, charges=("ch_a", "ch_b"), last4=None)
    batch(shop)
    assert shop.exceptions()[("duplicate_charge", f"sale:{sale.id}:stripe")] == {
        "charges": {"expected": 1, "stripe": 2},
        "charge_ids": ["ch_a", "ch_b"],
    }


def test_an_authorization_never_cleared_is_missing_until_a_late_clearing(shop):
    sale = shop.sale(1250)
    txn = shop.card("authorized", 1250)
    batch(shop, as_of=T0 + timedelta(days=6))
    assert shop.exceptions() == {}
    batch(shop, as_of=T0 + timedelta(days=8))
    assert ("missing_clearing", f"txn:{shop.key(txn)}") in shop.exceptions()
    shop.card("cleared", 1250, txn=txn, at=T0 + timedelta(days=9))
    batch(shop, as_of=T0 + timedelta(days=10))
    assert shop.exceptions() == {}
    assert ("missing_clearing", f"txn:{shop.key(txn)}") in shop.exceptions(status="resolved")
    assert (sale.id, "card_purchase", shop.key(txn), "card_exact") in shop.matches()


def test_a_reversed_authorization_is_neither_matched_nor_missing(shop):
    shop.sale(1250)
    voided = shop.card("authorized", 1250, at=T0 + timedelta(seconds=30))
    shop.card("reversed", 1250, txn="rev_1", original=voided)
    real = shop.card("authorized", 1250, at=T0 + timedelta(minutes=2))
    shop.card("cleared", 1250, txn=real)
    batch(shop, as_of=T0 + timedelta(days=20))
    assert {m[2] for m in shop.matches() if m[1] == "card_purchase"} == {shop.key(real)}
    assert shop.exceptions() == {}


def test_partial_refunds_match_by_refund_id_then_by_amount_never_by_a_total(shop):
    sale = shop.sale(1000)
    txn = shop.card("authorized", 1000)
    shop.card("cleared", 1000, txn=txn)
    re_300 = shop.refund(sale, 300, at=T0 + timedelta(days=2))
    re_200 = shop.refund(sale, 200, at=T0 + timedelta(days=3))
    c200 = shop.card("refunded", 200, txn="r200", original=txn, at=T0 + timedelta(days=4))
    c300 = shop.card("refunded", 300, txn="r300", original=txn, at=T0 + timedelta(days=5))
    extra = shop.card("refunded", 100, txn="r100", original=txn, at=T0 + timedelta(days=6))
    batch(shop)
    found = shop.matches()
    assert (sale.id, "stripe_refund", re_300, "refund_id") in found
    assert (sale.id, "stripe_refund", re_200, "refund_id") in found
    assert (sale.id, "card_refund", shop.key(c200), "refund_amount") in found
    assert (sale.id, "card_refund", shop.key(c300), "refund_amount") in found
    assert shop.exceptions() == {
        ("refund_mismatch", f"txn:{shop.key(extra)}"): {
            "refund": {"card": 100, "stripe": None},
            "currency": "USD",
        }
    }


def test_a_clearing_without_a_stripe_capture_is_a_missing_payment(shop):
    sale = shop.sale(1250, charges=())
    txn = shop.card("authorized", 1250)
    shop.card("cleared", 1250, txn=txn)
    batch(shop)
    assert shop.exceptions() == {
        ("missing_payment", f"sale:{sale.id}"): {
            "captured": {"stripe": 0, "card": 1250},
            "transaction": shop.key(txn),
        }
    }


def test_greedy_assignment_takes_the_closest_pairs(shop):
    early = shop.sale(500, at=T0)
    late = shop.sale(500, at=T0 + timedelta(hours=2))
    a = shop.card("authorized", 500, at=T0 + timedelta(hours=2, minutes=1))
    b = shop.card("authorized", 500, at=T0 + timedelta(minutes=1))
    batch(shop)
    purchases = {m[0]: m[2] for m in shop.matches() if m[1] == "card_purchase"}
    assert purchases == {early.id: shop.key(b), late.id: shop.key(a)}


def test_a_second_run_changes_nothing(shop):
    shop.sale(1250)
    shop.card("authorized", 1250)
    shop.card("authorized", 777, at=T0 + timedelta(hours=5))
    first = batch(shop)
    assert first.changed["matches_written"] == 1  # the card purchase (Stripe's are read)
    assert first.changed["exceptions_written"] == 1
    second = batch(shop)
    assert second.changed == {
        "matches_deleted": 0,
        "matches_written": 0,
        "exceptions_resolved": 0,
        "exceptions_written": 0,
    }


def test_the_continuous_scope_gives_the_batch_result(shop):
    sales = [shop.sale(1000 + i, at=T0 + timedelta(minutes=10 * i)) for i in range(4)]
    txns = [
        shop.card("authorized", 1000 + i, at=T0 + timedelta(minutes=10 * i + 1)) for i in range(4)
    ]
    orphan = shop.card("authorized", 5, at=T0 + timedelta(minutes=3))
    # As processing would: each sale's Stripe facts, then the card group's transactions.
    for sale in sales:
        engine.reconcile(shop.db, Scope.items(shop.merchant_id, sale_ids=[sale.id], as_of=AS_OF))
    engine.reconcile(shop.db, Scope.items(shop.merchant_id, last4s=["4242"], as_of=AS_OF))
    continuous = (shop.matches(), shop.exceptions())
    batch(shop)
    assert (shop.matches(), shop.exceptions()) == continuous
    assert len([m for m in continuous[0] if m[1] == "card_purchase"]) == len(txns)
    assert ("orphan_transaction", f"txn:{shop.key(orphan)}") in continuous[1]


def test_each_opening_is_announced_to_the_merchants_webhooks_once(shop, db):
    from sqlalchemy import select

    from commerce.outbound import services as outbound
    from commerce.outbound.guard import AddressPolicy
    from commerce.outbound.models import OutboundEvent

    outbound.create_endpoint(
        db,
        merchant_id=shop.merchant_id,
        url="http://127.0.0.1:9/hooks",
        event_types=["reconciliation.exception"],
        policy=AddressPolicy(allow=frozenset({("127.0.0.1", 9)})),
    )
    txn = shop.card("authorized", 990, at=T0 + timedelta(hours=3))

    def announced():
        return [
            e.payload["data"]
            for e in db.scalars(
                select(OutboundEvent)
                .where(OutboundEvent.merchant_id == shop.merchant_id)
                .order_by(OutboundEvent.created_at)
            )
        ]

    batch(shop)
    batch(shop)
    (opened,) = announced()
    assert opened["object"] == "reconciliation_exception"
    assert (opened["type"], opened["status"]) == ("orphan_transaction", "open")
    assert opened["subject_key"] == f"txn:{shop.key(txn)}"

    sale = shop.sale(990, at=T0 + timedelta(hours=3))
    batch(shop)
    assert len(announced()) == 1  # resolving is not announced
    sale.card_last4 = "0000"  # it was another card after all: the purchase is an orphan again
    db.flush()
    batch(shop)
    events = announced()
    assert len(events) == 2
    assert events[1]["id"] == opened["id"]


def test_queued_events_are_reconciled_together_by_the_drain(shop, db):
    from sqlalchemy import func, select

    from commerce.reconciliation.models import ReconciliationQueue

    sales = [shop.sale(700 + i, at=T0 + timedelta(minutes=10 * i)) for i in range(3)]
    for i in range(3):
        shop.card("authorized", 700 + i, at=T0 + timedelta(minutes=10 * i + 1))
    orphan = shop.card("authorized", 5, at=T0 + timedelta(minutes=2))
    # What processing does: each event queues its sale or card group, some of them twice.
    engine.sales_changed(db, {sale.id: None for sale in sales})
    engine.sales_changed(db, {sales[0].id: None})
    engine.enqueue(db, shop.merchant_id, last4s=["4242"], cardholders=[(shop.partner_id, "cust_1")])
    # Stripe's matches are read from the events; the card matching waits for the drain.
    assert {m[1] for m in shop.matches()} == {"stripe_charge"}
    assert shop.exceptions() == {}

    # Three sales with their group, one of them twice, the group and the cardholder.
    assert engine.drain(db, as_of=AS_OF) == 10
    assert db.scalar(select(func.count()).select_from(ReconciliationQueue)) == 0
    assert engine.drain(db, as_of=AS_OF) == 0
    drained = (shop.matches(), shop.exceptions())
    assert len([m for m in drained[0] if m[1] == "card_purchase"]) == 3
    assert ("orphan_transaction", f"txn:{shop.key(orphan)}") in drained[1]
    batch(shop)
    assert (shop.matches(), shop.exceptions()) == drained


def test_a_cardholders_deleted_data_takes_its_matches_and_exceptions_with_it(shop, db, client):
    from commerce.consent.cascade import delete_partner_data
    from tests.alerts.helpers import consent

    consent(
        client,
        {"id": shop.partner_id},
        "cust_2",
        psid="psid_2",
        scopes=("transactions",),
        purposes=("sales_attribution",),
    )
    sale = shop.sale(1250, charges=("ch_1",))
    txn = shop.card("authorized", 1250)
    orphan = shop.card("authorized", 40, at=T0 + timedelta(hours=3))
    other = shop.card("authorized", 70, at=T0 + timedelta(hours=4), customer_ref="cust_2")
    batch(shop)
    assert (sale.id, "card_purchase", shop.key(txn), "card_exact") in shop.matches()
    assert {key for _, key in shop.exceptions()} == {
        f"txn:{shop.key(orphan)}",
        f"txn:{shop.key(other)}",
    }

    delete_partner_data(
        db, partner_id=shop.partner_id, customer_ref="cust_1", reason="consent_revoked"
    )
    # Stripe's match stays (it is the sale's own); what the bank's data said is gone.
    assert shop.matches() == {(sale.id, "stripe_charge", "ch_1", "payment_intent")}
    assert {key for _, key in shop.exceptions(status=None)} == {f"txn:{shop.key(other)}"}


def test_a_scope_of_many_card_groups_holds_a_bounded_number_of_locks(shop, db):
    # PostgreSQL's lock table is shared by every session: a drain of a large queue must not
    # take a lock per card group (thousands), or it fills the table for everyone.
    last4s = [f"{n:04d}" for n in range(0, 10_000, 7)]  # 1,429 groups
    engine.reconcile(shop.db, Scope.items(shop.merchant_id, last4s=last4s, as_of=AS_OF))
    held = db.execute(
        text(
            "SELECT count(*) FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        )
    ).scalar_one()
    assert 0 < held <= engine.GROUP_LOCK_STRIPES + 1  # the stripes and the merchant's lock


def test_a_merchant_that_cannot_be_reconciled_waits_and_holds_up_no_one(shop, db, monkeypatch):
    from sqlalchemy import select

    from commerce.reconciliation.models import ReconciliationQueue
    from tests.factories import MerchantFactory

    other = MerchantFactory()
    db.flush()
    sale = shop.sale(1250, charges=("ch_1",))
    txn = shop.card("authorized", 1250)
    engine.sales_changed(db, {sale.id: None})
    engine.enqueue(db, other.id, last4s=["1111"])

    reconcile = engine.reconcile

    def faulty(session, scope):
        if scope.merchant_id == other.id:
            raise RuntimeError("unexpected fact on card 4242424242424242\nsecond line")
        return reconcile(session, scope)

    monkeypatch.setattr(engine, "reconcile", faulty)
    queued = db.scalar(text("SELECT count(*) FROM reconciliation_queue"))
    assert engine.drain(db, as_of=AS_OF) == queued
    # The shop's sale is reconciled all the same.
    assert (sale.id, "card_purchase", shop.key(txn), "card_exact") in shop.matches()
    waiting = db.scalars(select(ReconciliationQueue)).one()
    assert (waiting.merchant_id, waiting.last4, waiting.attempts) == (other.id, "1111", 1)
    assert waiting.last_error == "RuntimeError: unexpected fact on card [card •••• 4242]"
    # It waits a minute (now() is the test transaction's start), then twice as long.
    wait = "SELECT extract(epoch FROM retry_at - now()) FROM reconciliation_queue"
    assert db.scalar(text(wait)) == engine.RETRY_FIRST_WAIT_SECONDS
    assert engine.drain(db, as_of=AS_OF) == 0
    db.execute(text("UPDATE reconciliation_queue SET retry_at = now() - interval '1 second'"))
    assert engine.drain(db, as_of=AS_OF) == 1
    assert db.scalar(select(ReconciliationQueue.attempts)) == 2
    assert db.scalar(text(wait)) == 2 * engine.RETRY_FIRST_WAIT_SECONDS

    # Once it can be reconciled, it is, and leaves the queue.
    monkeypatch.setattr(engine, "reconcile", reconcile)
    db.execute(text("UPDATE reconciliation_queue SET retry_at = now() - interval '1 second'"))
    assert engine.drain(db, as_of=AS_OF) == 1
    assert db.scalars(select(ReconciliationQueue)).all() == []


def test_a_database_failure_in_a_drain_is_raised_for_the_task_to_retry(shop, db, monkeypatch):
    from sqlalchemy.exc import OperationalError

    engine.enqueue(db, shop.merchant_id, last4s=["4242"])

    def gone(session, scope):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(engine, "reconcile", gone)
    with pytest.raises(OperationalError):
        engine.drain(db, as_of=AS_OF)
    # Nothing was put back to wait: the drain's transaction rolls back, items and all.
    assert db.scalar(text("SELECT count(*) FROM reconciliation_queue WHERE attempts > 0")) == 0
