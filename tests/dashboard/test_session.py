"""Dashboard sign-in: API key for a session cookie, CSRF on every POST, the merchant's own
figures only."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from commerce.ids import new_id
from commerce.reconciliation.models import ReconciliationException
from tests.helpers import bearer, create_merchant
from tests.reports.helpers import add_sale

SESSION = "chatledger_dashboard"
CSRF = "chatledger_dashboard_csrf"


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def sign_in(client, key: str):
    page = client.get("/dashboard")
    assert page.status_code == 200
    token = _csrf(page.get_data(as_text=True))
    return client.post("/dashboard/sign-in", data={"csrf": token, "api_key": key})


def test_the_sign_in_page_sets_a_strict_csrf_cookie(client):
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert 'name="api_key"' in page.get_data(as_text=True)
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith(CSRF + "=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_signing_in_gives_an_httponly_session_cookie_and_the_dashboard(client, db):
    _, key = create_merchant(client, name="Blue Bottle")
    response = sign_in(client, key)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/dashboard")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(SESSION))
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    # Only the token's hash is stored.
    stored = db.execute(text("SELECT token_hash FROM dashboard_sessions")).scalars().all()
    assert token not in stored
    assert len(stored) == 1
    page = client.get("/dashboard")
    assert "Blue Bottle" in page.get_data(as_text=True)
    assert 'src="/dashboard/static/vendor/chart.umd.min.js"' in page.get_data(as_text=True)
    library = client.get("/dashboard/static/vendor/chart.umd.min.js")
    assert library.status_code == 200
    assert library.get_data().startswith(b"/*!\n * Chart.js v4.6.1")
    library.close()


@pytest.mark.parametrize(
    "tamper",
    ["no-token", "wrong-token", "no-cookie", "other-origin"],
)
def test_sign_in_without_a_matching_csrf_token_is_refused(client, tamper):
    _, key = create_merchant(client)
    token = _csrf(client.get("/dashboard").get_data(as_text=True))
    data = {"api_key": key, "csrf": token}
    headers = {}
    if tamper == "no-token":
        del data["csrf"]
    elif tamper == "wrong-token":
        data["csrf"] = "x" + token[1:]
    elif tamper == "no-cookie":
        client.delete_cookie(CSRF, path="/dashboard")
    else:
        headers["Origin"] = "https://evil.example"
    response = client.post("/dashboard/sign-in", data=data, headers=headers)
    assert response.status_code == 403
    assert client.get("/dashboard/api/reports/sales").status_code == 401


@pytest.mark.parametrize("key", ["ck_mer_not_a_key", "operator"])
def test_only_a_live_merchant_key_signs_in(client, key):
    from tests.conftest import OPERATOR_KEY

    response = sign_in(client, OPERATOR_KEY if key == "operator" else key)
    assert response.status_code == 401
    assert "not a live merchant API key" in response.get_data(as_text=True)


def test_sign_out_needs_the_session_csrf_token(client):
    _, key = create_merchant(client)
    sign_in(client, key)
    assert client.post("/dashboard/sign-out", data={"csrf": "nope"}).status_code == 403
    assert client.get("/dashboard/api/reports/funnel").status_code == 200
    token = _csrf(client.get("/dashboard").get_data(as_text=True))
    assert client.post("/dashboard/sign-out", data={"csrf": token}).status_code == 303
    assert client.get("/dashboard/api/reports/funnel").status_code == 401


def test_a_revoked_key_ends_its_sessions(client, db):
    _, key = create_merchant(client)
    sign_in(client, key)
    assert client.get("/dashboard/api/reports/sales").status_code == 200
    db.execute(text("UPDATE api_keys SET revoked_at = now() WHERE role = 'merchant'"))
    assert client.get("/dashboard/api/reports/sales").status_code == 401


def test_the_dashboard_api_answers_what_the_v1_api_answers_for_the_same_merchant(client, db):
    mine, key = create_merchant(client, timezone="Europe/Paris")
    other, _ = create_merchant(client)
    add_sale(db, mine["id"], datetime(2026, 6, 1, 22, 30, tzinfo=UTC), amount=4200)
    add_sale(db, other["id"], datetime(2026, 6, 1, 12, tzinfo=UTC), amount=999_999)
    sign_in(client, key)
    for kind, extra in (("sales", {"group_by": "week"}), ("funnel", {}), ("attribution", {})):
        query = {"from": "2026-05-01", "to": "2026-06-30", **extra}
        api = client.get(f"/v1/reports/{kind}", query_string=query, headers=bearer(key))
        page = client.get(f"/dashboard/api/reports/{kind}", query_string=query)
        assert page.status_code == api.status_code == 200
        assert page.json == api.json
    body = client.get("/dashboard/api/reports/sales", query_string={"from": "2026-06-01"}).json
    assert [(r["period"], r["gross"]) for r in body["rows"]] == [("2026-06-02", 4200)]
    bad = client.get("/dashboard/api/reports/sales", query_string={"timezone": "Nowhere/Land"})
    assert bad.status_code == 400
    assert client.get("/dashboard/api/reports/secrets").status_code == 404
    assert client.get("/dashboard/api/reconciliation/exceptions").json["data"] == []


def test_the_exceptions_panel_lists_the_merchants_open_exceptions_as_the_api_does(client, db):
    mine, key = create_merchant(client)
    other, _ = create_merchant(client)
    for merchant_id, status, subject in (
        (mine["id"], "open", "sale:a"),
        (mine["id"], "resolved", "sale:b"),
        (other["id"], "open", "sale:c"),
    ):
        db.add(
            ReconciliationException(
                id=new_id("reconciliation_exception"),
                merchant_id=merchant_id,
                type="amount_mismatch",
                subject_key=subject,
                fields={"amount": {"sale": 1250, "card": 1300}},
                status=status,
            )
        )
    db.flush()
    sign_in(client, key)
    page = client.get("/dashboard/api/reconciliation/exceptions").json
    api = client.get(
        "/v1/reconciliation/exceptions", query_string={"status": "open"}, headers=bearer(key)
    ).json
    assert [e["subject_key"] for e in page["data"]] == ["sale:a"]
    assert page["data"] == api["data"]
