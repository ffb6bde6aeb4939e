"""A consent that ends while reconciliation or attribution runs still takes everything the
run wrote about the cardholder's data: the run holds the card transactions (and touchpoints)
it writes about, the deletion waits for its commit, and the triggers of migrations 0012 and
0014 then delete what it wrote. Real commits, two sessions."""

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


def _attribute(session, partner_id):
    outcome = attribution.attribute(session, [(partner_id, "cust_1")])
    assert outcome.changed["written"] == 1  # one purchase, one touchpoint


def _reconcile(session, _partner_id):
    outcome = reconciliation.reconcile(session, PERIOD)
    assert outcome.changed["exceptions_written"] == 1  # the purchase, an orphan


PERIOD = Scope.period(T0 - timedelta(days=1), T0 + timedelta(days=1), as_of=T0)

#: What each run writes about the card data, counted after the deletion.
LEFT = {
    "attribution": "SELECT count(*) FROM attributions WHERE merchant_id = :m",
    "reconciliation": "SELECT count(*) FROM reconciliation_exceptions WHERE merchant_id = :m",
}


@pytest.mark.parametrize(
    ("kind", "run_it"), [("attribution", _attribute), ("reconciliation", _reconcile)]
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
        run_it(run, partner_id)  # written, not committed yet
        deletion = threading.Thread(target=end_the_consent)
        deletion.start()
        deadline = time.monotonic() + 30
        while not (pids and _waiting_on_a_lock(committed, pids[0])):
            assert deletion.is_alive(), f"the deletion did not wait for the run: {deleted}"
            assert time.monotonic() < deadline, "the deletion never waited for the run's locks"
            time.sleep(0.05)
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
