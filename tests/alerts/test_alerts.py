"""Fraud alerts and balances end to end: partner events in through the door, judged under
consent, sent to a local stand-in of the chat send API, answered on the chat door."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from commerce import runtime
from commerce.alerts import balances, services
from commerce.alerts.models import FraudAlert
from commerce.alerts.tasks import MAX_RETRIES
from commerce.audit.models import AuditEntry
from commerce.chat import send
from commerce.chat.send import MessengerSendApi
from tests.alerts.helpers import (
    NOW,
    answer_item,
    balance,
    bank,
    chat,
    consent,
    deliver,
    text_item,
)
from tests.alerts.helpers import transaction as txn
from tests.conftest import wait_for
from tests.support.chat_server import PAGE_TOKENS
from webhooks import inbox


@pytest.fixture
def messenger(chat_server):
    chat_server.reset()
    return chat_server


@pytest.fixture
def sender(messenger):
    return MessengerSendApi(messenger.url, page_tokens=PAGE_TOKENS)


def process(inbox_id: str) -> str | None:
    return inbox.process(runtime.sessions(), inbox_id)


def routine(client, partner, count=6, **fields):
    for i in range(count):
        event = txn(i, at=NOW - timedelta(days=count - i), **fields)
        assert process(deliver(client, partner, "transaction.authorized", event)) == "processed"


def alerts(db) -> list[FraudAlert]:
    return db.scalars(
        select(FraudAlert).order_by(FraudAlert.created_at).execution_options(populate_existing=True)
    ).all()


def test_a_suspicious_transaction_makes_one_alert_under_duplicate_delivery(client, db):
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    event = txn(50, at=NOW, amount=50_000, country="BR")
    first = deliver(client, partner, "transaction.authorized", event, event_id="evt_dup")
    again = deliver(client, partner, "transaction.authorized", event, event_id="evt_dup")
    # The partner sends the same transaction once more under another event id.
    other = deliver(client, partner, "transaction.authorized", event, event_id="evt_dup_2")
    assert first == again
    for inbox_id in (first, other):
        assert process(inbox_id) == "processed"
    (alert,) = alerts(db)
    assert alert.state == "pending"
    assert [r["rule"] for r in alert.reasons] == ["unusual_amount", "new_country"]
    # The history was read for its purpose, and audited.
    assert db.scalars(
        select(AuditEntry).where(
            AuditEntry.action == "partner_data.read", AuditEntry.purpose == "fraud_alerts"
        )
    ).first()


def test_duplicate_charge_fires_through_the_door_and_a_near_miss_does_not(client, db):
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    for minutes, amount in ((0, 4200), (2, 4300), (20, 4200)):  # near misses: amount, time
        event = txn(60, at=NOW + timedelta(minutes=minutes), amount=amount, mid="000000000000777")
        process(deliver(client, partner, "transaction.authorized", event))
    assert alerts(db) == []
    event = txn(60, at=NOW + timedelta(minutes=23), amount=4200, mid="000000000000777")
    process(deliver(client, partner, "transaction.authorized", event))
    (alert,) = alerts(db)
    assert [r["rule"] for r in alert.reasons] == ["duplicate"]


def test_a_late_earlier_purchase_still_flags_the_later_one(client, db):
    """The second charge arrives first: when the first arrives, the second is judged again."""
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    first = txn(70, at=NOW, amount=4200, mid="000000000000888")
    second = txn(71, at=NOW + timedelta(minutes=1), amount=4200, mid="000000000000888")
    process(deliver(client, partner, "transaction.authorized", second))
    assert alerts(db) == []
    process(deliver(client, partner, "transaction.authorized", first))
    (alert,) = alerts(db)
    assert [r["rule"] for r in alert.reasons] == ["duplicate"]


@pytest.mark.parametrize(
    ("scopes", "purposes"),
    [
        (("transactions",), ("sales_attribution",)),
        (("transactions",), ("sales_attribution", "balance_display")),
    ],
)
def test_no_alert_without_fraud_alerts_consent(client, db, scopes, purposes):
    partner = bank(client)
    consent(client, partner, scopes=scopes, purposes=purposes)
    routine(client, partner)
    event = txn(50, at=NOW, amount=50_000, country="BR", card_present=False)
    assert process(deliver(client, partner, "transaction.authorized", event)) == "processed"
    assert alerts(db) == []


def test_no_alert_when_the_agreement_does_not_give_fraud_alerts(client, db):
    partner = bank(client, purposes=("sales_attribution", "balance_display"))
    consent(client, partner)
    routine(client, partner)
    event = txn(50, at=NOW, amount=50_000, country="BR")
    assert process(deliver(client, partner, "transaction.authorized", event)) == "processed"
    assert alerts(db) == []


def test_the_alert_is_sent_with_last_four_only_and_answers_are_recorded(
    client, db, messenger, sender
):
    partner = bank(client)
    consent(client, partner, psid="psid_7")
    routine(client, partner)
    event = txn(50, at=NOW, amount=50_000, name="Far Away Electronics", country="BR")
    event["card"]["par"] = "V0010013018036776064547392810"
    process(deliver(client, partner, "transaction.authorized", event))
    (alert,) = alerts(db)
    messenger.fail_next(1, status=503)
    assert services.send_alert(db, alert.id, sender).retry
    assert (alert.state, alert.attempts, alert.last_error[:20]) == (
        "pending",
        1,
        "send API answered 50",
    )
    assert services.send_alert(db, alert.id, sender).state == "sent"
    (message,) = messenger.to("psid_7")
    body = message.body
    assert (body["messaging_type"], body["tag"]) == ("MESSAGE_TAG", "ACCOUNT_UPDATE")
    text = body["message"]["text"]
    assert "500.00 USD" in text
    assert "Far Away Electronics" in text
    assert "ending 4242" in text
    # Never more of the card than its last four digits: no longer run of digits than the
    # amount's, and none of the card's other identifiers.
    assert not re.search(r"\d{5,}", str(body))
    assert "tok_1" not in str(body)
    assert "V001" not in str(body)
    payloads = [q["payload"] for q in body["message"]["quick_replies"]]
    assert payloads == [f"chatledger:alert:{alert.id}:me", f"chatledger:alert:{alert.id}:not_me"]
    assert (alert.state, alert.attempts, alert.last_error) == ("sent", 2, None)
    assert alert.message_id.startswith("m_")
    # A second run of the task sends nothing more.
    assert services.send_alert(db, alert.id, sender).state == "sent"
    assert len(messenger.to("psid_7")) == 1

    # Someone else's answer is dropped; the cardholder's is kept.
    assert process(chat(client, answer_item("psid_other", alert.id, "me", mid="m_a"))) in (
        "processed"
    )
    db.refresh(alert)
    assert alert.answer is None
    assert process(chat(client, answer_item("psid_7", alert.id, "not_me", mid="m_b")))
    db.refresh(alert)
    assert (alert.state, alert.answer) == ("answered", "not_me")
    assert alert.answered_at is not None


def test_a_send_that_keeps_failing_ends_failed(client, db, messenger, sender):
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    process(deliver(client, partner, "transaction.authorized", txn(50, at=NOW, amount=50_000)))
    (alert,) = alerts(db)
    messenger.fail_next(1, status=400)  # a refusal no retry will fix
    outcome = services.send_alert(db, alert.id, sender)
    assert (outcome.state, outcome.retry) == ("failed", False)
    assert "400" in alert.last_error
    assert MAX_RETRIES >= 3


def test_without_a_send_api_the_alert_waits_with_its_reason(client, db):
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    process(deliver(client, partner, "transaction.authorized", txn(50, at=NOW, amount=50_000)))
    (alert,) = alerts(db)
    outcome = services.send_alert(db, alert.id, None)
    assert (outcome.state, outcome.retry) == ("pending", False)
    assert alert.last_error == services.NO_SEND_API
    assert alert.attempts == 0


def test_revoking_consent_takes_the_alert_with_the_transaction(client, db):
    partner = bank(client)
    consent(client, partner)
    routine(client, partner)
    process(deliver(client, partner, "transaction.authorized", txn(50, at=NOW, amount=50_000)))
    assert len(alerts(db)) == 1
    consent(client, partner, status="revoked")
    assert alerts(db) == []


def test_balance_is_answered_with_the_latest_snapshot_and_stale_is_said(client, db, messenger):
    partner = bank(client)
    consent(client, partner, psid="psid_b")
    for as_of, available in ((NOW - timedelta(hours=3), 1000), (NOW - timedelta(hours=1), 7777)):
        deliver_balance = deliver(
            client,
            partner,
            "balance.updated",
            balance("ACC-000111", as_of=as_of, available=available),
        )
        assert process(deliver_balance) == "processed"
    old = balance("ACC-000222", as_of=NOW - timedelta(hours=30), available=500)
    assert process(deliver(client, partner, "balance.updated", old)) == "processed"
    text = balances.balance_text(db, channel="messenger", user_id="psid_b", now=NOW)
    lines = text.splitlines()
    assert lines[0] == "Your balances:"
    (fresh,) = [line for line in lines if "0111" in line]
    assert "77.77 USD available" in fresh
    assert "stale" not in fresh
    assert "10.00 USD" not in text  # the older snapshot of the same account is not told
    (stale,) = [line for line in lines if "0222" in line]
    assert "stale: last updated 30 hours ago" in stale
    assert "ACC-000" not in text  # only the account's last four
    shorter = balances.BalanceDisplay(stale_after=timedelta(minutes=30))
    assert (
        "stale"
        in balances.balance_text(
            db, channel="messenger", user_id="psid_b", now=NOW, display=shorter
        ).splitlines()[1]
    )
    balances.send_balance(
        db,
        MessengerSendApi(messenger.url, page_tokens=PAGE_TOKENS),
        channel="messenger",
        user_id="psid_b",
    )
    (message,) = messenger.to("psid_b")
    assert message.body["messaging_type"] == "RESPONSE"
    assert "77.77 USD" in message.text


def test_no_balance_without_balance_display(client, db):
    partner = bank(client)
    consent(client, partner, psid="psid_n", purposes=("fraud_alerts", "sales_attribution"))
    answer = deliver(client, partner, "balance.updated", balance("ACC-1", as_of=NOW))
    assert process(answer) == "processed"  # kept, but not for balance_display
    text = balances.balance_text(db, channel="messenger", user_id="psid_n", now=NOW)
    assert text == balances.NO_ACCOUNT
    assert balances.balance_text(db, channel="messenger", user_id="psid_x", now=NOW) == (
        balances.NO_ACCOUNT
    )


def test_balance_request_is_recognised_trimmed_and_case_insensitive():
    assert balances.asks_for_balance("  BaLaNcE \n")
    assert not balances.asks_for_balance("balances please")
    assert not balances.asks_for_balance(None)


@pytest.mark.worker
def test_end_to_end_through_the_worker(app, committed, worker, messenger):
    web = app.test_client()
    partner = bank(web)
    consent(web, partner, psid="psid_e2e")
    for i in range(6):
        deliver(web, partner, "transaction.authorized", txn(i, at=NOW - timedelta(days=6 - i)))
    event = txn(50, at=NOW, amount=50_000, name="Night Shop", country="BR")
    for _ in range(2):
        deliver(web, partner, "transaction.authorized", event, event_id="evt_e2e")
    (message,) = wait_for(lambda: messenger.to("psid_e2e"))
    assert "500.00 USD at Night Shop" in message.text
    # The worker's sender carries the default page's token from CHATLEDGER_CHAT_PAGE_TOKENS.
    assert message.page_id == next(iter(PAGE_TOKENS))
    assert messenger.unauthorized == []
    with committed() as session:
        (alert,) = session.scalars(select(FraudAlert)).all()
    wait_for(lambda: _state(committed, alert.id) == "sent")

    chat(web, answer_item("psid_e2e", alert.id, "me", mid="m_e2e"))
    wait_for(lambda: _state(committed, alert.id) == "answered")
    with committed() as session:
        assert session.get(FraudAlert, alert.id).answer == "me"

    deliver(web, partner, "balance.updated", balance("ACC-9876", as_of=NOW))
    wait_for(lambda: _processed_balance(committed))
    # Asked on a page chatledger has a token for: the reply comes from that page (a PSID
    # belongs to one page, so no other page could answer).
    page = next(iter(PAGE_TOKENS))
    chat(web, text_item("psid_e2e", " Balance ", mid="m_bal"), page_id=page)
    reply = wait_for(lambda: [m for m in messenger.to("psid_e2e") if "balances" in m.text])
    assert "Account ending 9876: 1234.56 USD available" in reply[0].text
    assert reply[0].page_id == page


def _state(factory, alert_id):
    with factory() as session:
        alert = session.get(FraudAlert, alert_id)
        return alert.state if alert else None


def _processed_balance(factory):
    from webhooks.models import InboxEvent

    with factory() as session:
        return session.scalars(
            select(InboxEvent).where(
                InboxEvent.event_type == "balance.updated", InboxEvent.status == "processed"
            )
        ).first()


def test_the_worker_configures_the_send_api_from_settings(settings):
    from app.worker import configure_domain

    previous = send.sender()
    try:
        configure_domain(settings)
        assert isinstance(send.sender(), MessengerSendApi)
    finally:
        send.configure(previous)
