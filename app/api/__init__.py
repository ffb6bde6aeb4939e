"""The HTTP API under /v1: thin routes, schema in -> one domain call -> schema out."""

from __future__ import annotations

import flask_smorest

from app.jsonbody import StrictParser


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint with the strict body parser (400, 413, 415; never a 422)."""

    ARGUMENTS_PARSER = StrictParser()
