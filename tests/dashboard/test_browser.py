"""The dashboard in a real headless Chromium (Debian's, at /usr/bin/chromium) through
Playwright: it loads, its charts hold the numbers the API gives, the picker changes them,
and another merchant's data never shows."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from werkzeug.serving import make_server

from commerce import money
from commerce.db import utcnow
from commerce.ids import new_id
from commerce.reconciliation.models import ReconciliationException
from tests.helpers import bearer, create_merchant
from tests.reports.helpers import add_sale, add_touchpoint

CHROMIUM = Path(os.environ.get("CHATLEDGER_CHROMIUM", "/usr/bin/chromium"))
STAGES = ["delivered", "viewed", "clicked", "accepted", "paid"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's (`apt-get install -y chromium`, as "
            ".ci/run does) or point CHATLEDGER_CHROMIUM at one"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_server(app: Flask, committed) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def shops(app: Flask, committed) -> dict[str, Any]:
    """Merchant A with sales over the last weeks, and merchant B whose data must never show."""
    client = app.test_client()
    a, key_a = create_merchant(client, name="Shop A", timezone="America/New_York")
    b, _ = create_merchant(client, name="Shop B", timezone="America/New_York")
    now = utcnow().replace(microsecond=0)
    with committed() as session:
        sales_a = []
        for days, hours, amount, currency in [
            (1, 3, 1250, "USD"),
            (2, 5, 4000, "USD"),
            (2, 6, 150_000, "JPY"),
            (9, 1, 990, "USD"),
            (20, 2, 7300, "EUR"),
        ]:
            sale = add_sale(
                session,
                a["id"],
                now - timedelta(days=days, hours=hours),
                amount=amount,
                currency=currency,
            )
            sales_a.append(sale)
            for kind in ("delivered", "viewed", "clicked", "accepted"):
                add_touchpoint(session, sale, kind, now - timedelta(days=days, hours=hours + 1))
        # A sale at 03:30 UTC yesterday: the previous day in New York, the same day in Tokyo.
        late = (now - timedelta(days=1)).replace(hour=3, minute=30, second=0)
        sales_a.append(add_sale(session, a["id"], late, amount=777))
        secret = add_sale(session, b["id"], now - timedelta(days=1), amount=31337)
        session.execute(
            text("UPDATE offers SET title = :t WHERE id = :o"),
            {"t": "Shop B secret offer", "o": secret.offer_id},
        )
        for merchant_id, subject in ((a["id"], "sale:shop-a-gap"), (b["id"], "sale:shop-b-gap")):
            session.add(
                ReconciliationException(
                    id=new_id("reconciliation_exception"),
                    merchant_id=merchant_id,
                    type="amount_mismatch",
                    subject_key=subject,
                    fields={"amount": {"sale": 1250, "card": 1300}},
                    status="open",
                )
            )
        session.commit()
    return {"client": client, "key": key_a, "a": a, "b": b, "secret": secret, "sales": sales_a}


def _major(amount: int, currency: str) -> float:
    return amount / 10 ** money.currency(currency).exponent


def _wait_ready(page: Any, generation: int) -> None:
    page.wait_for_function(
        "g => document.body.dataset.state === 'ready'"
        " && Number(document.body.dataset.generation) > g",
        arg=generation,
        timeout=30_000,
    )


def _api(shops: dict[str, Any], kind: str, page: Any, **extra: str) -> dict[str, Any]:
    query = {
        "timezone": page.input_value("#timezone"),
        "from": page.input_value("#from"),
        "to": page.input_value("#to"),
        **extra,
    }
    response = shops["client"].get(
        f"/v1/reports/{kind}", query_string=query, headers=bearer(shops["key"])
    )
    assert response.status_code == 200, response.json
    return response.json


def _expected_revenue(report: dict[str, Any], currency: str | None = None) -> dict[str, Any]:
    """The revenue chart for `report`: gross and net of one currency (by default the one
    with the most sales), per period, in major units."""
    if currency is None:
        ranked = sorted(report["totals"], key=lambda t: (-t["count"], t["currency"]))
        currency = ranked[0]["currency"]
    cells = {r["period"]: r for r in report["rows"] if r["currency"] == currency}
    periods = sorted(cells)
    return {
        "labels": periods,
        "datasets": {
            f"{figure.capitalize()} {currency}": [
                _major(cells[p][figure], currency) for p in periods
            ]
            for figure in ("gross", "net")
        },
    }


def _chart(page: Any, name: str) -> dict[str, Any]:
    return page.evaluate(
        """name => { const c = Chart.getChart(name);
            return {labels: c.data.labels, datasets: Object.fromEntries(
                c.data.datasets.map(d => [d.label, d.data]))}; }""",
        name,
    )


def test_the_dashboard_draws_the_api_numbers_and_follows_the_picker(browser, live_server, shops):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on(
        "request", lambda r: r.url.startswith(live_server) or errors.append("off-site " + r.url)
    )
    page.goto(live_server + "/dashboard")
    page.fill("#api_key", shops["key"])
    page.click("button[type=submit]")
    _wait_ready(page, 0)
    assert page.title() == "chatledger · Shop A"

    sales = _api(shops, "sales", page, group_by="day")
    assert sales["rows"], "the default period holds A's sales"
    assert _chart(page, "revenue") == _expected_revenue(sales)
    funnel = _api(shops, "funnel", page)
    assert _chart(page, "funnel")["datasets"]["Offers"] == [funnel["funnel"][s] for s in STAGES]
    assert funnel["funnel"]["paid"] == len(shops["sales"])
    attribution = _api(shops, "attribution", page, limit="100")
    chart = _chart(page, "attribution")
    in_usd = [r for r in attribution["in_chat"]["rows"] if r["currency"] == "USD"][:10]
    assert chart["datasets"]["In chat"] == [_major(r["revenue"], "USD") for r in in_usd]
    assert len(in_usd) == 4
    totals = {
        row.get_attribute("data-currency"): row.inner_text()
        for row in page.query_selector_all("#totals tbody tr")
    }
    assert sorted(totals) == sorted(t["currency"] for t in sales["totals"])
    assert "sale:shop-a-gap" in page.inner_text("#exceptions")
    # Another currency from the chart's own picker.
    assert page.input_value("#currency") == "USD"
    page.select_option("#currency", "JPY")
    _wait_ready(page, 1)
    assert _chart(page, "revenue") == _expected_revenue(sales, "JPY")
    assert _chart(page, "attribution")["datasets"]["In chat"] == [
        150_000.0
    ]  # JPY has no minor unit
    page.select_option("#currency", "USD")
    _wait_ready(page, 2)
    page.screenshot(
        path=str(Path(os.environ.get("TMPDIR", "/tmp")) / "chatledger-dashboard.png"),
        full_page=True,
    )

    # The picker: another zone and months instead of days.
    page.select_option("#timezone", "Asia/Tokyo")
    _wait_ready(page, 3)
    page.select_option("#group_by", "month")
    _wait_ready(page, 4)
    by_month = _api(shops, "sales", page, group_by="month")
    assert by_month["timezone"] == "Asia/Tokyo"
    assert _chart(page, "revenue") == _expected_revenue(by_month)
    assert _chart(page, "revenue") != _expected_revenue(sales)
    page.select_option("#group_by", "day")
    _wait_ready(page, 5)
    tokyo_days = _api(shops, "sales", page, group_by="day")
    assert _chart(page, "revenue") == _expected_revenue(tokyo_days)
    # The 03:30 UTC sale of 777 is on another day in Tokyo than in New York (whatever the
    # time of day the test runs: no other USD sale or sum of them is 777).
    assert _expected_revenue(tokyo_days, "USD") != _expected_revenue(sales, "USD")
    # A shorter period from the presets.
    page.click("button[data-days='7']")
    _wait_ready(page, 6)
    week = _api(shops, "sales", page, group_by="day")
    assert _chart(page, "revenue") == _expected_revenue(week)
    assert sum(t["count"] for t in week["totals"]) < sum(t["count"] for t in tokyo_days["totals"])

    # Nothing of merchant B anywhere on the page, nor in what the page fetched.
    page.click("button[data-days='365']")
    _wait_ready(page, 7)
    content = page.content()
    for secret in (
        "Shop B",
        shops["b"]["id"],
        shops["secret"].offer_id,
        "31337",
        "313.37",
        "shop-b-gap",
    ):
        assert secret not in content
    fetched = page.evaluate(
        """async () => (await Promise.all(['sales', 'funnel', 'attribution'].map(k =>
              fetch('/dashboard/api/reports/' + k + '?from=2000-01-01&to=2002-12-31')
              .then(r => r.text())))).join('')"""
    )
    assert shops["b"]["id"] not in fetched
    assert "secret" not in page.evaluate(
        "async () => (await fetch('/dashboard/api/reports/attribution')).text()"
    )
    assert not errors

    # Signing out ends the session for the page's own requests too.
    page.click("#sign-out")
    page.wait_for_selector("#api_key")
    status = page.evaluate("async () => (await fetch('/dashboard/api/reports/sales')).status")
    assert status == 401


def test_a_wrong_key_stays_on_the_sign_in_form(browser, live_server, shops):
    page = browser.new_page()
    page.goto(live_server + "/dashboard")
    page.fill("#api_key", "ck_mer_" + "x" * 43)
    page.click("button[type=submit]")
    assert "not a live merchant API key" in page.inner_text(".error")
    assert page.query_selector("#revenue") is None
    assert datetime.now(UTC)  # the form is served again, with a fresh CSRF token
