"""CSV answers: `Accept: text/csv` asks for one; cells a spreadsheet would run as a formula
are quoted."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from flask import Response, request, stream_with_context

from commerce.instants import utc_text

CSV = "text/csv"


def wants_csv() -> bool:
    """`Accept: text/csv` (preferred over JSON) asks for CSV; anything else gets JSON."""
    return request.accept_mimetypes.best_match(["application/json", CSV]) == CSV


def cell(value: Any) -> Any:
    """Spreadsheets run text starting with = + - @ as a formula: such text gets a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, datetime):
        return utc_text(value)
    if hasattr(value, "isoformat"):  # a date
        return value.isoformat()
    return "" if value is None else value


def csv_file(name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A CSV download, written row by row as `rows` yields them."""

    def lines() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(value) for value in row])
            if out.tell() > 65536:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    return Response(
        stream_with_context(lines()),
        mimetype=CSV,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
