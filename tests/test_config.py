"""Settings: every bad value stops start-up with a message naming its variable."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, Settings

KEY = base64.b64encode(b"k" * 32).decode()


def test_defaults_need_no_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.embedded
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_dir == tmp_path / "var"
    assert settings.stripe_webhook_secrets == ()


def test_values_are_read_and_settings_are_immutable():
    settings = Settings.from_env(
        {
            "CHATLEDGER_DATABASE_URL": "postgresql://db.internal:5432/ledger",
            "CHATLEDGER_REDIS_URL": "redis://cache.internal:6379/0",
            "CHATLEDGER_PORT": "9000",
            "CHATLEDGER_STRIPE_WEBHOOK_SECRETS": "whsec_new, whsec_old",
            "CHATLEDGER_CARD_KEYS": f"v2:{KEY},v1:{KEY}",
            "CHATLEDGER_RECONCILIATION_BATCH_SESSIONS": "4",
        }
    )
    assert not settings.embedded
    assert settings.port == 9000
    assert settings.reconciliation_batch_sessions == 4
    assert settings.stripe_webhook_secrets == ("whsec_new", "whsec_old")
    assert [k.version for k in settings.card_keys] == ["v2", "v1"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_secrets_stay_out_of_the_repr():
    settings = Settings.from_env(
        {"CHATLEDGER_OPERATOR_KEY": "ck_op_" + "s" * 30, "CHATLEDGER_CARD_KEYS": f"v1:{KEY}"}
    )
    assert "s" * 30 not in repr(settings)
    assert KEY not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHATLEDGER_DATABASE_URL", "mysql://db/x"),
        ("CHATLEDGER_DATABASE_URL", "not a url"),
        ("CHATLEDGER_REDIS_URL", "http://cache:6379"),
        ("CHATLEDGER_PORT", "eighty"),
        ("CHATLEDGER_PORT", "70000"),
        ("CHATLEDGER_OPERATOR_KEY", "short"),
        ("CHATLEDGER_STRIPE_API_KEY", "pk_test_123"),
        ("CHATLEDGER_STRIPE_API_BASE", "ftp://stripe"),
        ("CHATLEDGER_STRIPE_WEBHOOK_SECRETS", "whsec_ok,nope"),
        ("CHATLEDGER_CARD_KEYS", "v1:not-base64!"),
        ("CHATLEDGER_CARD_KEYS", "v1:" + base64.b64encode(b"short").decode()),
        ("CHATLEDGER_CARD_KEYS", f"v1:{KEY},v1:{KEY}"),
        ("CHATLEDGER_CARD_KEYS", KEY),
        ("CHATLEDGER_RATE_LIMIT_PER_MINUTE", "0"),
        ("CHATLEDGER_LOG_LEVEL", "LOUD"),
        ("CHATLEDGER_RECONCILIATION_BATCH_SESSIONS", "0"),
        ("CHATLEDGER_RECONCILIATION_BATCH_SESSIONS", "many"),
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(variable)
    assert value not in str(error.value) or len(value) < 6


def test_the_command_stops_with_the_variable_named():
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "check"],
        env={"CHATLEDGER_PORT": "eighty", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "CHATLEDGER_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_logs_mask_card_numbers(app, caplog):
    """Every handler the app configured masks card numbers, whatever logger wrote them."""
    import logging

    from app.logs import install_pan_filter

    install_pan_filter()
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord(
        "webhooks.receive",
        logging.WARNING,
        __file__,
        1,
        "card %s refused",
        ("4242 4242 4242 4242",),
        None,
    )
    assert all(f.filter(record) for f in handler.filters)
    assert "4242 4242 4242 4242" not in record.getMessage()
    assert record.getMessage().endswith("refused")
