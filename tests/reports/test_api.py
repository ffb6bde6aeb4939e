"""GET /v1/reports/*: figures equal to sums computed from the raw rows, in any zone, DST days
included; the merchant's own data only; JSON and CSV."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from tests.helpers import bearer, create_merchant
from tests.reports.helpers import add_sale, expected_sales, random_history

NY = ZoneInfo("America/New_York")
FIGURES = ("count", "gross", "refunds", "disputes", "net")


def _local(y: int, m: int, d: int, hh: int, mm: int = 0, tz: ZoneInfo = NY) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=tz).astimezone(UTC)


def _cells(body: dict) -> dict[tuple[str, str], dict[str, int]]:
    return {(r["period"], r["currency"]): {f: r[f] for f in FIGURES} for r in body["rows"]}


@pytest.fixture
def merchant(client):
    merchant, key = create_merchant(client, timezone="America/New_York")
    return merchant["id"], bearer(key)


def test_sales_by_day_week_and_month_equal_sums_of_the_raw_rows(client, db, merchant):
    merchant_id, headers = merchant
    other, _ = create_merchant(client)
    rng = random.Random(11)
    start = datetime(2026, 2, 20, tzinfo=UTC)
    sales = random_history(db, [merchant_id], rng, 120, start)
    noise = random_history(db, [other["id"]], rng, 30, start)
    for tz in ("America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"):
        for unit in ("day", "week", "month"):
            response = client.get(
                "/v1/reports/sales",
                query_string={
                    "timezone": tz,
                    "from": "2026-02-22",
                    "to": "2026-04-20",
                    "group_by": unit,
                },
                headers=headers,
            )
            assert response.status_code == 200, response.json
            expected = expected_sales(sales, tz, date(2026, 2, 22), date(2026, 4, 20), unit)
            assert _cells(response.json) == expected, (tz, unit)
    # Nothing of the other merchant's, even summed in a total.
    body = client.get(
        "/v1/reports/sales",
        query_string={"from": "2026-01-01", "to": "2026-12-31"},
        headers=headers,
    ).json
    gross = sum(t["gross"] for t in body["totals"])
    assert gross == sum(s.captured for s in sales)
    assert gross != sum(s.captured for s in sales + noise)


def test_dst_days_have_23_and_25_hours_and_keep_their_sales(client, db, merchant):
    merchant_id, headers = merchant
    placed = {
        # Spring forward, 2026-03-08: 02:00 EST -> 03:00 EDT; the day has 23 hours.
        "2026-03-07": [_local(2026, 3, 7, 23, 59)],
        "2026-03-08": [
            _local(2026, 3, 8, 0, 0),
            _local(2026, 3, 8, 1, 59),
            _local(2026, 3, 8, 3, 0),
            _local(2026, 3, 8, 23, 59),
        ],
        "2026-03-09": [_local(2026, 3, 9, 0, 0)],
        # Fall back, 2026-11-01: 02:00 EDT -> 01:00 EST; the day has 25 hours, 01:30 twice.
        "2026-11-01": [
            _local(2026, 11, 1, 0, 0),
            datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT
            datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST
            _local(2026, 11, 1, 23, 59),
        ],
        "2026-11-02": [_local(2026, 11, 2, 0, 0)],
    }
    for times in placed.values():
        for at in times:
            add_sale(db, merchant_id, at, amount=100)
    for first, last in (("2026-03-07", "2026-03-09"), ("2026-10-31", "2026-11-02")):
        body = client.get(
            "/v1/reports/sales",
            query_string={"from": first, "to": last, "timezone": "America/New_York"},
            headers=headers,
        ).json
        for row in body["rows"]:
            assert row["count"] == len(placed[row["period"]]), row
            hours = datetime.fromisoformat(row["end"]) - datetime.fromisoformat(row["start"])
            expected = {"2026-03-08": 23, "2026-11-01": 25}.get(row["period"], 24)
            assert hours == timedelta(hours=expected), row
    # A week holding the spring change is 7 * 24 - 1 hours long.
    body = client.get(
        "/v1/reports/sales",
        query_string={"from": "2026-03-02", "to": "2026-03-15", "group_by": "week"},
        headers=headers,
    ).json
    # Monday 2026-03-02 to Sunday 2026-03-08; the sale at Monday 03-09 00:00 is the next week's.
    assert [(r["period"], r["count"]) for r in body["rows"]] == [
        ("2026-03-02", 5),
        ("2026-03-09", 1),
    ]
    row = body["rows"][0]
    span = datetime.fromisoformat(row["end"]) - datetime.fromisoformat(row["start"])
    assert span == timedelta(hours=7 * 24 - 1)


def test_a_quarter_hour_zone_cuts_days_at_its_own_midnight(client, db, merchant):
    merchant_id, headers = merchant
    kathmandu = ZoneInfo("Asia/Kathmandu")  # +05:45
    add_sale(db, merchant_id, _local(2026, 5, 1, 23, 59, kathmandu), amount=100)
    add_sale(db, merchant_id, _local(2026, 5, 2, 0, 0, kathmandu), amount=200)
    add_sale(db, merchant_id, _local(2026, 5, 2, 0, 14, kathmandu), amount=400)
    body = client.get(
        "/v1/reports/sales",
        query_string={"from": "2026-05-01", "to": "2026-05-02", "timezone": "Asia/Kathmandu"},
        headers=headers,
    ).json
    assert [(r["period"], r["gross"]) for r in body["rows"]] == [
        ("2026-05-01", 100),
        ("2026-05-02", 600),
    ]
    assert body["rows"][1]["start"] == "2026-05-01T18:15:00Z"


def test_sales_by_offer_and_by_conversation(client, db, merchant):
    merchant_id, headers = merchant
    first = add_sale(db, merchant_id, _local(2026, 6, 1, 10), amount=500)
    second = add_sale(
        db, merchant_id, _local(2026, 6, 1, 11), amount=700, conversation_id=first.conversation_id
    )
    query = {"from": "2026-06-01", "to": "2026-06-01"}
    by_offer = client.get(
        "/v1/reports/sales", query_string={**query, "by": "offer"}, headers=headers
    ).json
    assert {(r["offer_id"], r["conversation_id"], r["gross"]) for r in by_offer["rows"]} == {
        (first.offer_id, first.conversation_id, 500),
        (second.offer_id, first.conversation_id, 700),
    }
    assert all(r["offer_title"] for r in by_offer["rows"])
    by_conversation = client.get(
        "/v1/reports/sales", query_string={**query, "by": "conversation"}, headers=headers
    ).json
    assert [(r["conversation_id"], r["count"], r["gross"]) for r in by_conversation["rows"]] == [
        (first.conversation_id, 2, 1200)
    ]


TITLES = (
    'Quote " and back\\slash',
    "\u202eRTL override\u200b zero width",
    "Emoji \U0001f600 and \u00e9\u00e8 accents",
    "</script><script>alert(1)</script>",
    "{{7*7}} ${7*7} '; DROP TABLE sales; --",
)


def test_offer_titles_come_back_exactly_whatever_they_hold(client, db, merchant):
    # The rows of the sales report are written as JSON by PostgreSQL: the text of each title
    # must survive that encoding and the response exactly, in JSON and in CSV.
    merchant_id, headers = merchant
    at = _local(2026, 6, 2, 10)
    expected = {}
    for i, title in enumerate(TITLES):
        sale = add_sale(db, merchant_id, at + timedelta(minutes=i), amount=100 + i)
        db.execute(
            text("UPDATE offers SET title = :t WHERE id = :o"), {"t": title, "o": sale.offer_id}
        )
        expected[sale.offer_id] = (title, 100 + i)
    db.flush()
    query = {"from": "2026-06-02", "to": "2026-06-02", "by": "offer"}
    body = client.get("/v1/reports/sales", query_string=query, headers=headers).json
    assert {r["offer_id"]: (r["offer_title"], r["gross"]) for r in body["rows"]} == expected
    assert body["totals"] == [
        {
            "currency": "USD",
            "count": len(TITLES),
            "gross": sum(100 + i for i in range(len(TITLES))),
            "refunds": 0,
            "disputes": 0,
            "net": sum(100 + i for i in range(len(TITLES))),
        }
    ]
    answer = client.get(
        "/v1/reports/sales", query_string=query, headers={**headers, "Accept": "text/csv"}
    )
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert {r["offer_id"]: r["offer_title"] for r in rows} == {
        o: t for o, (t, _) in expected.items()
    }


def test_funnel_counts_and_rates(client, db, merchant):
    merchant_id, headers = merchant
    rng = random.Random(5)
    sales = random_history(db, [merchant_id], rng, 40, datetime(2026, 7, 1, tzinfo=UTC))
    rows = db.execute(
        text("SELECT kind, occurred_at FROM touchpoints WHERE merchant_id = :m"),
        {"m": merchant_id},
    ).all()
    first, last = date(2026, 7, 1), date(2026, 8, 15)
    inside = Counter(k for k, at in rows if first <= at.astimezone(NY).date() <= last)
    paid = sum(
        1 for s in sales if s.captured and first <= s.created_at.astimezone(NY).date() <= last
    )
    body = client.get(
        "/v1/reports/funnel", query_string={"from": str(first), "to": str(last)}, headers=headers
    ).json
    assert body["funnel"] == {
        "delivered": inside["delivered"],
        "viewed": inside["viewed"],
        "clicked": inside["clicked"],
        "accepted": inside["accepted"],
        "paid": paid,
    }
    assert body["rates"]["clicked_per_viewed"] == round(inside["clicked"] / inside["viewed"], 4)
    assert body["rates"]["paid_per_delivered"] == round(paid / inside["delivered"], 4)
    per_offer = client.get(
        "/v1/reports/funnel",
        query_string={"from": str(first), "to": str(last), "by": "offer"},
        headers=headers,
    ).json["rows"]
    assert sum(r["viewed"] for r in per_offer) == inside["viewed"]


def test_csv_has_the_same_rows(client, db, merchant):
    merchant_id, headers = merchant
    sale = add_sale(db, merchant_id, _local(2026, 6, 3, 12), amount=1234, currency="EUR")
    db.execute(
        text("UPDATE offers SET title = '=HYPERLINK(1)' WHERE id = :o"), {"o": sale.offer_id}
    )
    query = {"from": "2026-06-01", "to": "2026-06-30", "by": "offer"}
    response = client.get(
        "/v1/reports/sales", query_string=query, headers={**headers, "Accept": "text/csv"}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1
    assert rows[0]["period"] == "2026-06-03"
    assert rows[0]["currency"] == "EUR"
    assert rows[0]["gross"] == "1234"
    assert rows[0]["offer_title"] == "'=HYPERLINK(1)"  # never a formula in a spreadsheet
    funnel = client.get(
        "/v1/reports/funnel",
        query_string=query | {"by": None},
        headers={**headers, "Accept": "text/csv"},
    )
    assert (
        funnel.get_data(as_text=True).splitlines()[0].startswith("offer_id,offer_title,delivered")
    )
    attribution = client.get(
        "/v1/reports/attribution",
        query_string={"from": "2026-06-01"},
        headers={**headers, "Accept": "text/csv"},
    )
    lines = attribution.get_data(as_text=True).splitlines()
    assert lines[0].startswith("channel,offer_id")
    assert lines[1].startswith(f"in_chat,{sale.offer_id}")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"from": "2026-05-02", "to": "2026-05-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-05-01"}, "to"),
        ({"group_by": "hour"}, "group_by"),
        ({"by": "customer"}, "by"),
        ({"from": "yesterday"}, "from"),
    ],
)
def test_bad_parameters_are_400(client, merchant, query, field):
    _, headers = merchant
    response = client.get("/v1/reports/sales", query_string=query, headers=headers)
    assert response.status_code == 400
    assert field in response.json["errors"]


def test_reports_need_a_merchant_key(client):
    assert client.get("/v1/reports/sales").status_code == 401
    from tests.helpers import OPERATOR

    assert client.get("/v1/reports/funnel", headers=OPERATOR).status_code == 403


def test_in_chat_attribution_by_offer(client, db, merchant):
    merchant_id, headers = merchant
    big = add_sale(db, merchant_id, _local(2026, 6, 2, 9), amount=9000)
    small = add_sale(db, merchant_id, _local(2026, 6, 2, 10), amount=100)
    body = client.get(
        "/v1/reports/attribution",
        query_string={"from": "2026-06-01", "to": "2026-06-30"},
        headers=headers,
    ).json
    assert [(r["offer_id"], r["revenue"], r["window"]) for r in body["in_chat"]["rows"]] == [
        (big.offer_id, 9000, "in_chat"),
        (small.offer_id, 100, "in_chat"),
    ]
    assert body["in_chat"]["totals"] == [{"currency": "USD", "count": 2, "revenue": 9100}]
    # No card purchase was attributed to these offers: nothing off platform.
    assert body["off_platform"]["rows"] == []
    assert body["off_platform"]["totals"] == {"by_currency": [], "by_window": [], "by_offer": []}
