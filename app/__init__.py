"""The Flask application factory.

Order matters and is kept here in one place:
1. settings (validated once; a bad value stops start-up naming the variable),
2. logging, the database and the payment provider,
3. Flask config and the OpenAPI document,
4. blueprints,
5. error handlers (last, so they cover everything registered before).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask
from flask_smorest import Api

from app import auth, dashboard, errors, logs, web
from app.api import (
    attribution,
    conversations,
    health,
    merchants,
    offers,
    partners,
    privacy,
    reconciliation,
    reports,
    sales,
    webhook_endpoints,
)
from app.config import ConfigError, Settings
from commerce import payments, runtime
from commerce.attribution import reports as attribution_reports
from commerce.errors import NotFound
from commerce.ids import ID_PATTERN
from commerce.payments.stripe import StripeProvider
from webhooks import receive

API_TITLE = "chatledger"
API_VERSION = "v1"


def create_app(settings: Settings | None = None) -> Flask:
    # 1. Settings.
    settings = settings or Settings.from_env()
    if settings.database_url is None or settings.redis_url is None:
        raise ConfigError(
            "CHATLEDGER_DATABASE_URL" if settings.database_url is None else "CHATLEDGER_REDIS_URL",
            "is not set; start the service with `chatledger run`, which starts the embedded "
            "servers, or point both variables at your own PostgreSQL and Redis",
        )

    # 2. Logging, database, payment provider.
    logs.configure(settings.log_level)
    runtime.configure_database(settings.database_url)
    if settings.stripe_api_key:
        payments.configure(
            StripeProvider(settings.stripe_api_key, api_base=settings.stripe_api_base)
        )

    # 3. Flask and OpenAPI configuration.
    app = Flask(__name__)
    app.config.update(
        CHATLEDGER=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE=API_TITLE,
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        # Browsable docs at /docs, with Swagger UI's files served by the app itself
        # (app/api/health.py): no third-party CDN on an operator's network.
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/docs/static/",
        API_SPEC_OPTIONS={
            "info": {
                "description": (
                    "Keeps the books of sales made in chat. Errors are "
                    "application/problem+json (RFC 9457)."
                )
            },
        },
    )
    app.extensions["chatledger.redis"] = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=2
    )
    api = Api(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "An API key."}
    )

    # 4. Blueprints. Reports show off-platform revenue from the attributions.
    attribution_reports.register()
    web.register(app)
    health.register(app)
    dashboard.register(app)
    for module in (
        merchants,
        partners,
        conversations,
        offers,
        sales,
        privacy,
        webhook_endpoints,
        reports,
        reconciliation,
        attribution,
    ):
        api.register_blueprint(module.blp)
    # The webhook doors: outside /v1 and the OpenAPI document, signed rather than keyed.
    app.register_blueprint(receive.blp)

    # Tasks sent from requests go to the same broker the worker reads.
    from app.worker import create_celery

    create_celery(settings).set_default()

    # Ids in the path are checked for shape before any view runs: a malformed one (a NUL, a
    # 10 kB string) answers the same 404 as an id that does not exist, and never reaches SQL.
    @app.url_value_preprocessor
    def check_path_ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
        for name, value in (values or {}).items():
            if name.endswith("_id") and not ID_PATTERN.match(str(value)):
                raise NotFound(name.removesuffix("_id"))

    # 5. Error handlers, after flask-smorest's own so that ours win.
    errors.register(app)
    auth.register(app)
    return app
