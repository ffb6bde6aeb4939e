"""Liveness, readiness and Prometheus metrics: for load balancers and monitoring."""

from __future__ import annotations

import os
import time

import swagger_ui_bundle
from flask import Blueprint, Flask, Response, g, request, send_from_directory
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import text

from app.errors import problem
from app.web import redis_client
from commerce import runtime

blp = Blueprint("health", __name__)

REQUESTS = Counter(
    "chatledger_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "chatledger_http_request_duration_seconds", "Time to answer a request", ["endpoint"]
)


@blp.get("/healthz")
def healthz() -> Response:
    """The process is alive; says nothing of its dependencies."""
    return Response('{"status":"ok"}', mimetype="application/json")


@blp.get("/readyz")
def readyz() -> Response:
    """Ready when PostgreSQL and Redis both answer."""
    failures = []
    try:
        with runtime.engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure to reach the database means not ready
        failures.append("database")
    try:
        redis_client().ping()
    except Exception:  # any failure to reach Redis means not ready
        failures.append("redis")
    if failures:
        return problem(
            503,
            "unavailable",
            f"Not ready: cannot reach {' and '.join(failures)}.",
            headers={"Retry-After": "5"},
        )
    return Response('{"status":"ready"}', mimetype="application/json")


@blp.get("/metrics")
def metrics() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # Under gunicorn every worker writes its own samples; add them up at read time.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, mimetype=CONTENT_TYPE_LATEST)


@blp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    """Swagger UI's own files, from the swagger-ui-bundle package."""
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=86_400)


def register(app: Flask) -> None:
    app.register_blueprint(blp)

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        started = g.get("request_started")
        # The URL rule, not the path, so ids do not explode the label set.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        if started is not None:
            LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return response
