"""Rollups: fed by every change, folded incrementally, and equal to a rebuild from scratch."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

from sqlalchemy import text

from commerce.reports import rollups
from commerce.reports.models import MEASURES
from commerce.reports.services import make_query, sales_report
from tests.factories import MerchantFactory, use_session
from tests.reports.helpers import (
    add_sale,
    add_touchpoint,
    expected_sales,
    random_history,
    update_sale,
)

START = datetime(2026, 9, 1, tzinfo=UTC)


def _snapshot(connection) -> dict[str, list[tuple]]:
    nonzero = " OR ".join(f"{m} <> 0" for m in MEASURES)
    keys = {
        "report_offer_rollups": "merchant_id, bucket, offer_id, conversation_id, currency",
        "report_merchant_quarters": "merchant_id, bucket, currency",
        "report_merchant_hours": "merchant_id, bucket, currency",
        "report_merchant_days": "merchant_id, day, currency",
    }
    return {
        table: [
            tuple(r)
            for r in connection.execute(
                text(
                    f"SELECT {cols}, {', '.join(MEASURES)} FROM {table}"  # noqa: S608
                    f" WHERE {nonzero} ORDER BY {cols}"
                )
            )
        ]
        for table, cols in keys.items()
    }


def test_every_change_leaves_a_delta_and_a_fold_moves_it(db):
    use_session(db)
    merchant = MerchantFactory()
    sale = add_sale(db, merchant.id, START, amount=1000, state="pending_payment")
    assert db.execute(text("SELECT count(*) FROM report_deltas")).scalar_one() == 0
    db.execute(
        text("UPDATE sales SET state = 'paid', amount_captured = 1000 WHERE id = :i"),
        {"i": sale.id},
    )
    update_sale(db, sale, refunded=300, state="partially_refunded")
    db.execute(text("UPDATE sales SET updated_at = now() WHERE id = :i"), {"i": sale.id})
    add_touchpoint(db, sale, "clicked", START)
    add_touchpoint(db, sale, "declined", START)
    deltas = db.execute(
        text("SELECT paid, gross, refunds, net, clicked FROM report_deltas ORDER BY id")
    ).all()
    # Paid, then refunded, then a touch of updated_at (nothing), a click, a decline (nothing).
    assert [tuple(d) for d in deltas] == [
        (1, 1000, 0, 1000, 0),
        (0, 0, 300, -300, 0),
        (0, 0, 0, 0, 1),
    ]

    result = rollups.fold_once(db.connection())
    assert result.folded == 3
    assert db.execute(text("SELECT count(*) FROM report_deltas")).scalar_one() == 0
    row = db.execute(
        text(
            "SELECT paid, gross, refunds, net, clicked FROM report_merchant_hours"
            " WHERE merchant_id = :m"
        ),
        {"m": merchant.id},
    ).one()
    assert tuple(row) == (1, 1000, 300, 700, 1)


def test_a_report_is_exact_before_and_after_the_fold(db):
    use_session(db)
    merchant = MerchantFactory()
    rng = random.Random(7)
    sales = random_history(db, [merchant.id], rng, 60, START)
    query = make_query(
        db,
        merchant_id=merchant.id,
        timezone="Asia/Kathmandu",
        first=date(2026, 8, 31),
        last=date(2026, 11, 5),
        grouping="day",
    )
    before = sales_report(db, query)
    rollups.fold_once(db.connection())
    after = sales_report(db, query)
    assert before == after
    got = {
        (r["period"], r["currency"]): {
            k: r[k] for k in ("count", "gross", "refunds", "disputes", "net")
        }
        for r in after["rows"]
    }
    assert got == expected_sales(sales, "Asia/Kathmandu", date(2026, 8, 31), date(2026, 11, 5))


def test_incremental_rollups_equal_a_rebuild(committed, engine):
    rng = random.Random(2026)
    with committed() as session:
        use_session(session)
        zones = ("America/New_York", "Asia/Kathmandu", "UTC")
        merchants = [MerchantFactory(timezone=zone).id for zone in zones]
        session.commit()
    sales = []
    # Several transactions, folded in between and in small batches, as the worker would.
    for round_ in range(4):
        with committed() as session:
            sales += random_history(session, merchants, rng, 40, START)
            session.commit()
        if round_ % 2:
            rollups.fold(engine, batch=7)
    with committed() as session:
        for sale in rng.sample(sales, 20):
            if sale.state == "paid":
                update_sale(session, sale, refunded=sale.captured, state="refunded")
        session.execute(
            text(
                "DELETE FROM touchpoints WHERE kind = 'viewed' AND ctid IN "
                "(SELECT ctid FROM touchpoints WHERE kind = 'viewed' LIMIT 5)"
            )
        )
        session.commit()
    rollups.fold(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM report_deltas")).scalar_one() == 0
        incremental = _snapshot(connection)
    assert all(incremental.values())

    rollups.rebuild(engine)
    with engine.connect() as connection:
        rebuilt = _snapshot(connection)
    assert rebuilt == incremental

    # And a rebuild of one merchant leaves the others' rows as they were.
    rollups.rebuild(engine, merchant_id=merchants[0])
    with engine.connect() as connection:
        assert _snapshot(connection) == incremental


def test_a_merchant_changing_zone_keeps_exact_reports_and_a_rebuild_recuts_its_days(
    committed, engine
):
    with committed() as session:
        use_session(session)
        merchant = MerchantFactory(timezone="America/New_York")
        sales = random_history(session, [merchant.id], random.Random(9), 50, START)
        session.commit()
    rollups.fold(engine)

    def report(zone: str) -> dict:
        with committed() as session:
            query = make_query(
                session,
                merchant_id=merchant.id,
                timezone=zone,
                first=date(2026, 9, 1),
                last=date(2026, 10, 31),
                grouping="day",
            )
            rows = sales_report(session, query)["rows"]
        return {
            (r["period"], r["currency"]): {
                k: r[k] for k in ("count", "gross", "refunds", "disputes", "net")
            }
            for r in rows
        }

    with engine.begin() as connection:
        connection.execute(
            text("UPDATE merchants SET timezone = 'Europe/Paris' WHERE id = :m"), {"m": merchant.id}
        )
        zone = connection.execute(
            text("SELECT timezone FROM report_day_zones WHERE merchant_id = :m"), {"m": merchant.id}
        ).scalar_one()
    assert zone == "America/New_York"  # days stay cut where they were, consistently
    for tz in ("Europe/Paris", "America/New_York"):
        assert report(tz) == expected_sales(sales, tz, date(2026, 9, 1), date(2026, 10, 31))
    rollups.rebuild(engine, merchant_id=merchant.id)
    with engine.connect() as connection:
        zone = connection.execute(
            text("SELECT timezone FROM report_day_zones WHERE merchant_id = :m"), {"m": merchant.id}
        ).scalar_one()
    assert zone == "Europe/Paris"
    assert report("Europe/Paris") == expected_sales(
        sales, "Europe/Paris", date(2026, 9, 1), date(2026, 10, 31)
    )
