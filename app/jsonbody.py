"""The request parser every blueprint uses: strict JSON (commerce/strictjson.py), a 400
for invalid fields, a 415 for a body that is not JSON, and a 413 for an oversized one
(Werkzeug's MAX_CONTENT_LENGTH).
"""

from __future__ import annotations

from typing import Any

import flask
from webargs import core
from webargs.flaskparser import FlaskParser

from commerce.cards.scrub import paths, scrub
from commerce.strictjson import BodyError, loads_strict

#: Fields of API bodies that hold ids assigned elsewhere (a store's MID, a chat platform's
#: page, thread and user ids, a partner's cardholder reference): kept as sent when they have
#: an identifier's shape, though one numeric id in ten passes the Luhn check.
API_IDENTIFIERS = paths(
    "mids.*",
    "chat_pages.*.page_id",
    "thread_id",
    "customer_user_id",
    "external_id",
    "customer_ref",
    "chat.user_id",
)


class StrictParser(FlaskParser):
    """webargs' parser with strict JSON, 415 for non-JSON bodies and 400 for invalid fields."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: flask.Request) -> Any:
        data = req.get_data(cache=True)
        if not core.is_json(req.mimetype):
            if data:
                raise BodyError("Send the body as application/json.", status=415)
            return core.missing
        if not data:
            return core.missing
        # Card numbers are masked before any field is validated, stored or echoed: a title
        # or a note typed with a card number in it keeps only its last four digits.
        return scrub(loads_strict(data), hasher=None, identifiers=API_IDENTIFIERS).document


__all__ = ["BodyError", "StrictParser", "loads_strict"]
