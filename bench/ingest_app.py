"""The product's WSGI app with one extra route, for bench/run_ingest.py only: `gunicorn
bench.ingest_app:app`.

The app is the real one, built by `app.create_app()` from the environment like `wsgi:app`,
with every route, hook and setting it has. The benchmark adds one route beside the Stripe
door, so that the baseline is served by the same gunicorn processes with the same settings:

    POST /bench/raw-insert

stores the request body as it came, with one raw psycopg INSERT into `bench_raw` (a table
the benchmark creates; it is not part of the product's schema) and a COMMIT, on a psycopg
connection of the serving thread's own, and answers 200 with the new row's id. No
signature check, no parsing, no ORM, no queue: the least a door can do and still have the
event durable before it answers.

Never deploy this module: the route takes anything from anyone.

Experiments (bench/run_ingest.py --experiment, for estimating a change to the door without
changing the product; the report says so): BENCH_INGEST_EXPERIMENT is a comma-separated list of

- `no-pre-ping`: the engine is rebuilt with `pool_pre_ping=False`.

(`no-task-send`, which made `webhooks.inbox.send` do nothing, is gone: the door has sent no
task since the inbox relay, webhooks/relay.py, took the sends over.)
"""

from __future__ import annotations

import json
import os
import threading

import psycopg
from flask import Response, request
from sqlalchemy.engine import make_url

from app import create_app

RAW_INSERT = "INSERT INTO bench_raw (body) VALUES (%s) RETURNING id"

app = create_app()

EXPERIMENTS = {x for x in os.environ.get("BENCH_INGEST_EXPERIMENT", "").split(",") if x}
if "no-pre-ping" in EXPERIMENTS:
    from commerce import runtime

    runtime.configure_database(app.config["CHATLEDGER"].database_url, pool_pre_ping=False)

_conninfo = (
    make_url(app.config["CHATLEDGER"].database_url)
    .set(drivername="postgresql")
    .render_as_string(hide_password=False)
)
_local = threading.local()


def _connection() -> psycopg.Connection:
    connection = getattr(_local, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(_conninfo)
        _local.connection = connection
    return connection


def raw_insert() -> Response:
    body = request.get_data(cache=False)
    connection = _connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(RAW_INSERT, (body,))
            row = cursor.fetchone()
        connection.commit()
    except psycopg.Error:
        # A broken connection is dropped; the next request opens a new one.
        connection.close()
        return Response('{"received": false}', status=503, mimetype="application/json")
    assert row is not None
    return Response(
        json.dumps({"received": True, "id": row[0]}), status=200, mimetype="application/json"
    )


app.add_url_rule("/bench/raw-insert", "bench_raw_insert", raw_insert, methods=["POST"])
