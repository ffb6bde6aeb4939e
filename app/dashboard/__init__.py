"""The merchant's dashboard: sign in with an API key, then charts of the same reports.

- `GET /dashboard` shows the sign-in form, or the dashboard once signed in.
- `POST /dashboard/sign-in` exchanges a merchant API key for a session cookie (HttpOnly,
  SameSite=Strict, Secure over HTTPS; the server keeps only the token's hash).
- `POST /dashboard/sign-out` ends it.
- `GET /dashboard/api/reports/<sales|funnel|attribution>` answers the same JSON as
  `/v1/reports/...` (the same `build`), for the session's merchant, with the same parameters.
- `GET /dashboard/api/reconciliation/exceptions` the merchant's open exceptions.

Both POSTs are protected from cross-site requests three ways: SameSite=Strict cookies, an
`Origin` that must be this site when the browser sends one, and a CSRF token in the form
(a double-submit cookie before sign-in, the session's own token after). The page runs no
inline script (Content-Security-Policy: script-src 'self') and its charts are drawn by
Chart.js, vendored under static/vendor/ (see README.txt there).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import Blueprint, Flask, Response, g, redirect, render_template, request
from marshmallow import ValidationError

from app.api import reports as report_api
from app.errors import problem
from app.web import db
from commerce.merchants.models import Merchant
from commerce.pagination import paginate
from commerce.reports import dashboard_sessions
from commerce.reports.models import DashboardSession

blp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

SESSION_COOKIE = "chatledger_dashboard"
#: Open reconciliation exceptions listed on the page.
EXCEPTIONS_SHOWN = 50
CSRF_COOKIE = "chatledger_dashboard_csrf"
#: kind -> query schema: the same as the /v1/reports routes'.
_SCHEMAS = {
    "sales": report_api.SalesQuerySchema,
    "funnel": report_api.FunnelQuerySchema,
    "attribution": report_api.AttributionQuerySchema,
}
_ZONES = sorted(z for z in available_timezones() if "/" in z or z == "UTC")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@blp.after_request
def _secure(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint == "dashboard.static":
        response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/dashboard",
        httponly=True,
        secure=request.is_secure,
        samesite="Strict",
    )


def _signed_in() -> DashboardSession | None:
    if "dashboard_session" not in g:
        g.dashboard_session = dashboard_sessions.current(db(), request.cookies.get(SESSION_COOKIE))
    return g.dashboard_session


def _same_origin() -> bool:
    """A browser's POST says where it comes from; another site's form is refused. (Some
    browsers send `Origin: null` under a strict referrer policy: then `Sec-Fetch-Site` says.)"""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == request.host
    return request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"


def _sign_in_page(error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = Response(render_template("signin.html", csrf=token, error=error), status=status)
    _set_cookie(response, CSRF_COOKIE, token, max_age=3600)
    return response


@blp.get("")
def index() -> Any:
    current = _signed_in()
    if current is None:
        return _sign_in_page()
    merchant = db().get(Merchant, current.merchant_id)
    return render_template(
        "dashboard.html",
        merchant=merchant,
        csrf=current.csrf_token,
        zones=_ZONES,
    )


@blp.post("/sign-in")
def sign_in() -> Any:
    form_token = request.form.get("csrf", "")
    cookie_token = request.cookies.get(CSRF_COOKIE, "")
    if not (
        _same_origin()
        and cookie_token
        and hmac.compare_digest(form_token.encode(), cookie_token.encode())
    ):
        return _sign_in_page("The form expired; please sign in again.", status=403)
    opened = dashboard_sessions.sign_in(db(), request.form.get("api_key", ""))
    if opened is None:
        return _sign_in_page("That is not a live merchant API key.", status=401)
    response = redirect("/dashboard", code=303)
    _set_cookie(
        response,
        SESSION_COOKIE,
        opened.token,
        max_age=int(dashboard_sessions.LIFETIME.total_seconds()),
    )
    response.delete_cookie(CSRF_COOKIE, path="/dashboard")
    return response


@blp.post("/sign-out")
def sign_out() -> Any:
    current = _signed_in()
    if current is None:
        return redirect("/dashboard", code=303)
    if not (
        _same_origin()
        and hmac.compare_digest(request.form.get("csrf", "").encode(), current.csrf_token.encode())
    ):
        return problem(403, "forbidden", "The sign-out form is not from this page.")
    dashboard_sessions.sign_out(db(), current)
    response = redirect("/dashboard", code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


def _require_session() -> DashboardSession | Response:
    current = _signed_in()
    if current is None:
        return problem(401, "unauthorized", "Sign in to the dashboard first.")
    return current


@blp.get("/api/reports/<kind>")
def report(kind: str) -> Any:
    current = _require_session()
    if isinstance(current, Response):
        return current
    if kind not in _SCHEMAS:
        return problem(404, "not-found", "No such report.")
    try:
        args = _SCHEMAS[kind]().load(request.args)
    except ValidationError as exc:
        return problem(
            400, "validation-error", "The request has invalid fields.", errors=exc.messages
        )
    return report_api.json_response(report_api.build(kind, args, current.merchant_id))


@blp.get("/api/reconciliation/exceptions")
def reconciliation_exceptions() -> Any:
    """The merchant's open reconciliation exceptions, newest first: the first page of
    `GET /v1/reconciliation/exceptions?status=open`, from the same query and schema."""
    current = _require_session()
    if isinstance(current, Response):
        return current
    from app.api.reconciliation import ExceptionSchema
    from commerce.reconciliation.models import ReconciliationException
    from commerce.reconciliation.services import exceptions_query

    page = paginate(
        db(),
        exceptions_query(current.merchant_id, statuses=("open",)),
        created_at=ReconciliationException.opened_at,
        id_=ReconciliationException.id,
        limit=EXCEPTIONS_SHOWN,
        cursor=None,
    )
    return {
        "data": ExceptionSchema(many=True).dump(page.items),
        "next_cursor": page.next_cursor,
    }


def register(app: Flask) -> None:
    app.register_blueprint(blp)
