"""A consent that ends while reconciliation or attribution runs still takes everything the
run wrote about the cardholder's data: attribution holds the card transactions and
touchpoints it writes about, reconciliation the merchant's lock
(`partnerdata.lock_merchants`); the deletion waits for the run's commit, and the triggers of
migrations 0012 and 0014 then delete what it wrote. A reconciliation that starts while a
deletion is in progress waits for it and reads what it left. Real commits, two sessions."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from commerce.attribution import engine as attribution
from commerce.consent.cascade import delete_partner_data
from commerce.offers.services import record_touchpoint
from commerce.reconciliation import engine as reconciliation
from commerce.reconciliation.engine import Scope
from tests.factories import ConversationFactory, CustomerFactory, OfferFactory
from tests.reconciliation.scenario import T0, open_shop


@pytest.fixture
def web(app, committed):
    return app.test_client()


def _waiting_on_a_lock(sessions, pid: int) -> bool:
    with sessions() as probe:
        return (
            probe.scalar(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
            == "Lock"
        )


def _until_it_waits(sessions, thread, pids: list[int], what: str, results: list) -> None:
    """Until the session of `thread` (its backend pid in `pids`) waits on a lock."""
    deadline = time.monotonic() + 30
    while not (pids and _waiting_on_a_lock(sessions, pids[0])):
        assert thread.is_alive(), f"{what} ended without waiting: {results}"
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.05)


def _attribute(session, partner_id, _merchant_id):
    outcome = attribution.attribute(session, [(partner_id, "cust_1")])
    assert outcome.changed["written"] == 1  # one purchase, one touchpoint


def _reconcile(session, _partner_id, _merchant_id):
    outcome = reconciliation.reconcile(session, PERIOD)
    assert outcome.changed["exceptions_written"] == 1  # the purchase, an orphan


def _reconcile_group(session, _partner_id, merchant_id):
    """The continuous path: the card group of the purchase, as a drain reconciles it."""
    outcome = reconciliation.reconcile(session, Scope.items(merchant_id, last4s=["4242"], as_of=T0))
    assert outcome.changed["exceptions_written"] == 1


PERIOD = Scope.period(T0 - timedelta(days=1), T0 + timedelta(days=1), as_of=T0)

#: What each run writes about the card data, counted after the deletion.
LEFT = {
    "attribution": "SELECT count(*) FROM attributions WHERE merchant_id = :m",
    "reconciliation": "SELECT count(*) FROM reconciliation_exceptions WHERE merchant_id = :m",
    "reconciliation of a card group": (
        "SELECT count(*) FROM reconciliation_exceptions WHERE merchant_id = :m"
    ),
}


@pytest.mark.parametrize(
    ("kind", "run_it"),
    [
        ("attribution", _attribute),
        ("reconciliation", _reconcile),
        ("reconciliation of a card group", _reconcile_group),
    ],
)
def test_a_consent_ended_mid_run_takes_what_the_run_wrote(web, committed, kind, run_it):
    with committed() as setup:
        shop = open_shop(setup, web)  # the cardholder cust_1 consented, chat identity psid_1
        customer = CustomerFactory(channel="messenger", channel_user_id="psid_1")
        conversation = ConversationFactory(merchant_id=shop.merchant_id, customer_id=customer.id)
        offer = OfferFactory(conversation=conversation, merchant_id=shop.merchant_id)
        setup.flush()
        record_touchpoint(
            setup,
            merchant_id=shop.merchant_id,
            offer_id=offer.id,
            kind="clicked",
            occurred_at=T0 - timedelta(hours=1),
        )
        shop.card("authorized", 1000, at=T0)
        if kind == "attribution":  # attribution counts the purchases reconciliation left
            reconciliation.reconcile(setup, PERIOD)
        setup.commit()
        partner_id, merchant_id = shop.partner_id, shop.merchant_id

    run = committed()
    deleted: list[BaseException | None] = []
    pids: list[int] = []

    def end_the_consent() -> None:
        try:
            with committed() as session:
                pids.append(session.scalar(text("SELECT pg_backend_pid()")))
                delete_partner_data(
                    session, partner_id=partner_id, customer_ref="cust_1", reason="consent_revoked"
                )
                session.commit()
            deleted.append(None)
        except BaseException as exc:  # reported to the test below
            deleted.append(exc)

    try:
        run_it(run, partner_id, merchant_id)  # written, not committed yet
        deletion = threading.Thread(target=end_the_consent)
        deletion.start()
        _until_it_waits(committed, deletion, pids, "the deletion", deleted)
        run.commit()
    finally:
        run.close()
    deletion.join(timeout=30)
    assert deleted == [None]

    with committed() as check:
        left = check.scalar(text(LEFT[kind]), {"m": merchant_id})
        cards = check.scalar(
            text("SELECT count(*) FROM card_transactions WHERE partner_id = :p"),
            {"p": partner_id},
        )
    assert (cards, left) == (0, 0)


@pytest.mark.parametrize("path", ["batch", "card group"])
def test_a_reconciliation_started_during_a_deletion_reads_what_it_left(web, committed, path):
    with committed() as setup:
        shop = open_shop(setup, web)
        shop.card("authorized", 1000, at=T0)
        setup.commit()
        partner_id, merchant_id = shop.partner_id, shop.merchant_id
    scope = PERIOD if path == "batch" else Scope.items(merchant_id, last4s=["4242"], as_of=T0)

    deletion = committed()
    outcomes: list[object] = []
    pids: list[int] = []

    def reconcile() -> None:
        try:
            with committed() as session:
                pids.append(session.scalar(text("SELECT pg_backend_pid()")))
                outcomes.append(reconciliation.reconcile(session, scope))
                session.commit()
        except BaseException as exc:  # reported to the test below
            outcomes.append(exc)

    try:
        receipt = delete_partner_data(
            deletion, partner_id=partner_id, customer_ref="cust_1", reason="consent_revoked"
        )
        assert receipt is not None  # deleted, not committed yet
        run = threading.Thread(target=reconcile)
        run.start()
        _until_it_waits(committed, run, pids, "the run", outcomes)
        deletion.commit()
    finally:
        deletion.close()
    run.join(timeout=30)

    [outcome] = outcomes
    assert not isinstance(outcome, BaseException), outcome
    assert outcome.purchases == 0  # the card data was gone when the run read
    with committed() as check:
        left = check.scalar(
            text("SELECT count(*) FROM reconciliation_exceptions WHERE merchant_id = :m"),
            {"m": merchant_id},
        )
    assert left == 0
