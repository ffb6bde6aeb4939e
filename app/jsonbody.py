"""The request parser every blueprint uses: strict JSON (commerce/strictjson.py), a 400
for invalid fields, a 415 for a body that is not JSON, and a 413 for an oversized one
(Werkzeug's MAX_CONTENT_LENGTH).
"""

from __future__ import annotations

from typing import Any

import flask
from webargs import core
from webargs.flaskparser import FlaskParser

from commerce.strictjson import BodyError, loads_strict


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
        return loads_strict(data)


__all__ = ["BodyError", "StrictParser", "loads_strict"]
