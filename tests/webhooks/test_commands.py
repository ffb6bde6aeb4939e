"""`chatledger webhooks replay` and `chatledger stripe backfill`, run as the operator would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import main
from commerce.db import transaction
from commerce.sales.models import Sale
from commerce.sales.services import checkout
from tests.conftest import settings_env
from tests.helpers import open_shop
from webhooks import inbox
from webhooks.models import InboxEvent


@pytest.fixture
def run(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        if name.startswith("CHATLEDGER_"):
            monkeypatch.setenv(name, value)

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_backfill_stores_the_events_the_inbox_lacks_once(app, committed, stripe, run):
    shop = open_shop(app.test_client(), amount=3000)
    with transaction(committed) as session:
        sale = checkout(session, merchant_id=shop.merchant["id"], offer_id=shop.offer["id"]).sale
        sale_id, intent_id = sale.id, sale.payment_intent_id
    stripe.succeed(intent_id)
    listed = len(stripe.events)
    assert listed >= 3  # created, charge.succeeded, payment_intent.succeeded

    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    first = run("stripe", "backfill", "--since", since)
    assert f"{listed} events listed by Stripe, {listed} were missing" in first
    again = run("stripe", "backfill", "--since", since)
    assert f"{listed} events listed by Stripe, 0 were missing" in again

    with committed() as session:
        ids = session.scalars(select(InboxEvent.id).where(InboxEvent.source == "stripe")).all()
        assert len(ids) == listed
    for inbox_id in ids:
        inbox.process(committed, inbox_id)
    with committed() as session:
        assert session.get(Sale, sale_id).state == "paid"


def test_replay_by_filter_puts_failed_events_back(app, committed, run):
    with transaction(committed) as session:
        for n in range(3):
            payout = {"id": f"po_replay_{n}", "amount": 100, "currency": "usd", "status": "paid"}
            inbox.store(
                session,
                source="stripe",
                event_id=f"evt_replay_{n}",
                event_type="payout.paid",
                payload={"id": f"evt_replay_{n}", "data": {"object": payout}},
                # Two failed for good (stored as such, so no task is sent for them), one done.
                status="failed" if n < 2 else "processed",
                error="boom" if n < 2 else None,
            )
        session.execute(
            InboxEvent.__table__.update()
            .where(InboxEvent.status == "failed")
            .values(attempts=inbox.MAX_ATTEMPTS)
        )
    output = run("webhooks", "replay", "--status", "failed")
    assert "2 events sent for processing" in output
    with committed() as session:
        rows = session.scalars(select(InboxEvent).order_by(InboxEvent.event_id)).all()
        # Back to pending, or already processed by a worker the replay sent them to.
        assert {r.status for r in rows} <= {"pending", "processed"}
        assert all(r.attempts <= 1 for r in rows[:2])
        assert (
            session.scalar(
                select(func.count()).select_from(InboxEvent).where(InboxEvent.status == "failed")
            )
            == 0
        )


def test_replay_needs_ids_or_a_filter(settings, monkeypatch):
    for name, value in settings_env(settings).items():
        if name.startswith("CHATLEDGER_"):
            monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["webhooks", "replay"])
    assert result.exit_code == 2
    assert "filter" in result.output
