"""Page access tokens for the send API, and the alert thresholds and balance stale age read
from the settings: validated at start-up, handed to the worker's domain, never logged."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.config import ConfigError, Settings
from commerce import runtime
from commerce.alerts import balances, services
from commerce.alerts import config as alerts_config
from commerce.alerts.models import FraudAlert
from commerce.alerts.rules import Thresholds
from commerce.alerts.tasks import send_balance
from commerce.chat import send
from commerce.chat.send import ChatSendError, MessengerSendApi, MissingPageToken
from tests.alerts.helpers import NOW, balance, bank, consent, deliver
from tests.alerts.helpers import transaction as txn
from tests.support.chat_server import PAGE_TOKENS
from webhooks import inbox

DEFAULT_PAGE, OTHER_PAGE = PAGE_TOKENS
TOKENS = "111:EAATfirst0token, 222:EAATsecond0token"

THRESHOLD_VARIABLES = {
    "CHATLEDGER_ALERT_VELOCITY_COUNT": ("velocity_count", "7", 7),
    "CHATLEDGER_ALERT_VELOCITY_WINDOW_MINUTES": ("velocity_window", "3", timedelta(minutes=3)),
    "CHATLEDGER_ALERT_AMOUNT_FACTOR": ("amount_factor", "9", 9),
    "CHATLEDGER_ALERT_AMOUNT_MIN_HISTORY": ("amount_min_history", "2", 2),
    "CHATLEDGER_ALERT_NEW_COUNTRY_MIN_HISTORY": ("new_country_min_history", "8", 8),
    "CHATLEDGER_ALERT_DUPLICATE_WINDOW_MINUTES": ("duplicate_window", "60", timedelta(hours=1)),
    "CHATLEDGER_ALERT_NEW_MERCHANT_MIN_HISTORY": ("new_merchant_min_history", "4", 4),
    "CHATLEDGER_ALERT_LOOKBACK_DAYS": ("lookback", "30", timedelta(days=30)),
}


@pytest.fixture
def messenger(chat_server):
    chat_server.reset()
    return chat_server


@pytest.fixture
def configured() -> Iterator[None]:
    """Whatever a test configures, the defaults are back afterwards."""
    yield
    alerts_config.configure()


def process(inbox_id: str) -> str | None:
    return inbox.process(runtime.sessions(), inbox_id)


# --- Settings ---------------------------------------------------------------------------------


def test_defaults_are_the_rules_own() -> None:
    settings = Settings.from_env({})
    assert settings.alert_thresholds == Thresholds()
    assert settings.balance_stale_after == timedelta(hours=24)
    assert settings.chat_page_tokens == ()


@pytest.mark.parametrize("variable", sorted(THRESHOLD_VARIABLES))
def test_each_threshold_has_its_variable(variable: str) -> None:
    name, raw, value = THRESHOLD_VARIABLES[variable]
    thresholds = Settings.from_env({variable: raw}).alert_thresholds
    assert getattr(thresholds, name) == value
    # Only that one changed.
    assert dataclasses.replace(thresholds, **{name: getattr(Thresholds(), name)}) == Thresholds()


def test_the_stale_age_and_page_tokens_are_read() -> None:
    settings = Settings.from_env(
        {"CHATLEDGER_BALANCE_STALE_HOURS": "6", "CHATLEDGER_CHAT_PAGE_TOKENS": TOKENS + ","}
    )
    assert settings.balance_stale_after == timedelta(hours=6)
    assert settings.chat_page_tokens == (("111", "EAATfirst0token"), ("222", "EAATsecond0token"))
    assert "EAAT" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHATLEDGER_ALERT_VELOCITY_COUNT", "1"),
        ("CHATLEDGER_ALERT_VELOCITY_COUNT", "five"),
        ("CHATLEDGER_ALERT_VELOCITY_WINDOW_MINUTES", "0"),
        ("CHATLEDGER_ALERT_AMOUNT_FACTOR", "1"),
        ("CHATLEDGER_ALERT_AMOUNT_MIN_HISTORY", "0"),
        ("CHATLEDGER_ALERT_NEW_COUNTRY_MIN_HISTORY", "-3"),
        ("CHATLEDGER_ALERT_DUPLICATE_WINDOW_MINUTES", "99999"),
        ("CHATLEDGER_ALERT_NEW_MERCHANT_MIN_HISTORY", "2.5"),
        ("CHATLEDGER_ALERT_LOOKBACK_DAYS", "0"),
        ("CHATLEDGER_BALANCE_STALE_HOURS", "0"),
        ("CHATLEDGER_CHAT_PAGE_TOKENS", "EAATnopageid0token"),
        ("CHATLEDGER_CHAT_PAGE_TOKENS", "111:short"),
        ("CHATLEDGER_CHAT_PAGE_TOKENS", "111:EAAT with0space"),
        ("CHATLEDGER_CHAT_PAGE_TOKENS", "page id:EAATsecret0token"),
        ("CHATLEDGER_CHAT_PAGE_TOKENS", "111:EAATsecret0token,111:EAATsecret0other"),
    ],
)
def test_a_bad_value_names_its_variable_and_never_the_token(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(variable)
    assert "EAAT" not in str(error.value)


def test_the_worker_hands_the_settings_to_the_domain(settings: Settings, configured) -> None:
    from app.worker import configure_domain

    strict = Thresholds(velocity_count=2, amount_factor=2)
    previous = send.sender()
    try:
        configure_domain(
            dataclasses.replace(
                settings, alert_thresholds=strict, balance_stale_after=timedelta(hours=2)
            )
        )
        sender = send.sender()
        assert isinstance(sender, MessengerSendApi)
        assert sender.default_page == DEFAULT_PAGE
        assert "EAAT" not in repr(sender)
        assert alerts_config.thresholds() == strict
        assert balances.BalanceDisplay.configured().stale_after == timedelta(hours=2)
    finally:
        send.configure(previous)


# --- Thresholds at work -----------------------------------------------------------------------


def test_configured_thresholds_judge_the_transactions(client, db, configured) -> None:
    """Two purchases within 10 minutes: quiet by default (5 fire), an alert once
    CHATLEDGER_ALERT_VELOCITY_COUNT=2 is in force."""
    partner = bank(client)
    consent(client, partner)
    for i, minutes in enumerate((0, 1)):
        event = txn(80 + i, at=NOW + timedelta(minutes=minutes), card_present=True)
        assert process(deliver(client, partner, "transaction.authorized", event)) == "processed"
    assert db.scalars(select(FraudAlert)).all() == []

    alerts_config.configure(thresholds=Thresholds(velocity_count=2))
    event = txn(82, at=NOW + timedelta(minutes=2), card_present=True)
    assert process(deliver(client, partner, "transaction.authorized", event)) == "processed"
    (alert,) = db.scalars(select(FraudAlert)).all()
    assert [r["rule"] for r in alert.reasons] == ["velocity"]


def test_the_configured_stale_age_is_told(client, db, configured) -> None:
    partner = bank(client)
    consent(client, partner, psid="psid_s")
    snapshot = balance("ACC-000333", as_of=NOW - timedelta(hours=3))
    assert process(deliver(client, partner, "balance.updated", snapshot)) == "processed"
    text = balances.balance_text(db, channel="messenger", user_id="psid_s", now=NOW)
    assert "stale" not in text
    alerts_config.configure(stale_after=timedelta(hours=2))
    text = balances.balance_text(db, channel="messenger", user_id="psid_s", now=NOW)
    assert "(stale: last updated 3 hours ago)" in text


# --- Page tokens ------------------------------------------------------------------------------


def test_every_send_carries_its_pages_token(messenger) -> None:
    sender = MessengerSendApi(messenger.url, page_tokens=PAGE_TOKENS)
    sender.send(recipient_id="psid_1", message={"text": "a"}, messaging_type="RESPONSE")
    sender.send(
        recipient_id="psid_1",
        message={"text": "b"},
        messaging_type="RESPONSE",
        page_id=OTHER_PAGE,
    )
    assert [(m.text, m.page_id) for m in messenger.to("psid_1")] == [
        ("a", DEFAULT_PAGE),
        ("b", OTHER_PAGE),
    ]
    assert messenger.unauthorized == []


def test_the_stand_in_refuses_a_wrong_token(messenger) -> None:
    sender = MessengerSendApi(messenger.url, page_tokens={DEFAULT_PAGE: "EAATnot0the0real0one"})
    with pytest.raises(ChatSendError) as error:
        sender.send(recipient_id="psid_1", message={"text": "a"}, messaging_type="RESPONSE")
    assert (error.value.status, error.value.retryable) == (400, False)
    assert "OAuthException" in error.value.detail
    assert "not0the0real0one" not in error.value.detail
    assert messenger.sent == []
    assert len(messenger.unauthorized) == 1


@pytest.mark.parametrize("tokens", [{}, {OTHER_PAGE: PAGE_TOKENS[OTHER_PAGE]}])
def test_a_page_without_a_token_is_never_sent_from(messenger, tokens) -> None:
    sender = MessengerSendApi(messenger.url, page_tokens=tokens)
    with pytest.raises(MissingPageToken) as error:
        sender.send(
            recipient_id="psid_1",
            message={"text": "a"},
            messaging_type="RESPONSE",
            page_id=DEFAULT_PAGE if tokens else None,
        )
    assert not error.value.retryable
    assert "CHATLEDGER_CHAT_PAGE_TOKENS" in error.value.detail
    # Nothing reached the platform, not even unauthenticated.
    assert (messenger.sent, messenger.unauthorized) == ([], [])


def test_an_alert_without_a_page_token_fails_and_says_why(client, db, messenger) -> None:
    partner = bank(client)
    consent(client, partner)
    for i in range(6):
        event = txn(i, at=NOW - timedelta(days=6 - i))
        process(deliver(client, partner, "transaction.authorized", event))
    process(deliver(client, partner, "transaction.authorized", txn(50, at=NOW, amount=50_000)))
    (alert,) = db.scalars(select(FraudAlert)).all()
    outcome = services.send_alert(db, alert.id, MessengerSendApi(messenger.url))
    assert (outcome.state, outcome.retry) == ("failed", False)
    assert alert.last_error.startswith("not sent: no page access token")
    assert "CHATLEDGER_CHAT_PAGE_TOKENS" in alert.last_error
    assert (messenger.sent, messenger.unauthorized) == ([], [])


def test_a_balance_reply_comes_from_the_page_written_to(client, db, messenger) -> None:
    partner = bank(client)
    consent(client, partner, psid="psid_p")
    previous = send.sender()
    send.configure(MessengerSendApi(messenger.url, page_tokens=PAGE_TOKENS))
    try:
        assert send_balance.run("messenger", "psid_p", OTHER_PAGE) is True
        assert send_balance.run("messenger", "psid_p") is True
        # A page chatledger holds no token for: not sent, and the task does not retry.
        assert send_balance.run("messenger", "psid_p", "999999") is False
    finally:
        send.configure(previous)
    assert [m.page_id for m in messenger.to("psid_p")] == [OTHER_PAGE, DEFAULT_PAGE]
    assert messenger.unauthorized == []


def test_tokens_never_reach_the_logs(messenger, caplog) -> None:
    """urllib3 logs every request's URL at DEBUG, and the URL carries the token: the
    filter leaves the request's line in the log with the token replaced."""
    sender = MessengerSendApi(messenger.url, page_tokens=PAGE_TOKENS)
    with caplog.at_level(logging.DEBUG):
        sender.send(recipient_id="psid_1", message={"text": "a"}, messaging_type="RESPONSE")
        messenger.fail_next(1, status=500)
        with pytest.raises(ChatSendError) as error:
            sender.send(recipient_id="psid_1", message={"text": "b"}, messaging_type="RESPONSE")
    assert "access_token=***" in caplog.text
    for token in PAGE_TOKENS.values():
        assert token not in caplog.text
        assert token not in error.value.detail
    # Unreachable: the error names the exception's type only, never its URL.
    gone = MessengerSendApi("http://127.0.0.1:9", page_tokens=PAGE_TOKENS)
    with pytest.raises(ChatSendError) as error:
        gone.send(recipient_id="psid_1", message={"text": "c"}, messaging_type="RESPONSE")
    assert error.value.retryable
    assert "EAAT" not in error.value.detail
