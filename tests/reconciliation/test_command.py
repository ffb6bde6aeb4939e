"""`chatledger reconcile --from --to`, run as the operator would: the batch over a period,
its summary printed, and a second run that changes nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app.cli import main
from commerce.db import transaction
from commerce.reconciliation.models import ReconciliationException, ReconciliationRun
from tests.conftest import settings_env
from tests.reconciliation.scenario import T0, open_shop


@pytest.fixture
def invoke(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        if name.startswith("CHATLEDGER_"):
            monkeypatch.setenv(name, value)

    def run(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run


def test_reconcile_runs_the_batch_and_prints_its_summary(app, committed, invoke):
    with transaction(committed) as session:
        shop = open_shop(session, app.test_client())
        shop.sale(1250)
        paid = shop.card("authorized", 1250)
        shop.card("cleared", 1250, txn=paid, at=T0 + timedelta(days=1))
        walk_in = shop.card("authorized", 333, at=T0 + timedelta(hours=4))
        shop.card("cleared", 333, txn=walk_in, at=T0 + timedelta(days=1))
        merchant_id = shop.merchant_id

    period = ("--from", "2026-09-30", "--to", "2026-10-03", "--merchant", merchant_id)
    first = invoke("reconcile", *period)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert (summary["sales"], summary["reconciled"], summary["card_matched"]) == (1, 1, 1)
    assert summary["exceptions"] == {"orphan_transaction": {"open": 1}}
    assert summary["changed"]["exceptions_written"] == 1

    again = json.loads(invoke("reconcile", *period).output)
    assert again["changed"] == {
        "matches_deleted": 0,
        "matches_written": 0,
        "exceptions_resolved": 0,
        "exceptions_written": 0,
    }
    with committed() as session:
        runs = session.scalars(select(ReconciliationRun.status)).all()
        assert runs == ["succeeded", "succeeded"]
        (orphan,) = session.scalars(select(ReconciliationException)).all()
        assert orphan.fields["amount"] == 333


def test_reconcile_refuses_a_bad_period_clearly(committed, invoke):
    result = invoke("reconcile", "--from", "2026-10-03", "--to", "2026-10-01")
    assert result.exit_code != 0
    assert "to: Must be after `from`." in result.output
    unknown = invoke(
        "reconcile", "--from", "2026-10-01", "--to", "2026-10-03", "--merchant", "mer_x"
    )
    assert unknown.exit_code != 0
    assert "no merchant mer_x" in unknown.output
