"""The worker's `reports.fold` task moves the change log into the rollups."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from commerce.reports import tasks
from tests.conftest import wait_for
from tests.factories import MerchantFactory, use_session
from tests.reports.helpers import add_sale


@pytest.mark.worker
def test_the_worker_folds_the_log(committed, engine, worker):
    with committed() as session:
        use_session(session)
        merchant = MerchantFactory(timezone="Europe/Paris")
        add_sale(session, merchant.id, datetime(2026, 7, 14, 21, 30, tzinfo=UTC), amount=2500)
        session.commit()

    def log_size() -> int:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM report_deltas")).scalar_one()

    assert log_size() == 1
    tasks.fold.apply_async()
    wait_for(lambda: log_size() == 0)
    with engine.connect() as connection:
        day = connection.execute(
            text("SELECT day, gross FROM report_merchant_days WHERE merchant_id = :m"),
            {"m": merchant.id},
        ).one()
    assert (day.day.isoformat(), day.gross) == ("2026-07-14", 2500)  # 23:30 in Paris
