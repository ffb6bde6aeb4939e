"""Logging setup: every handler masks card numbers before a record is written.

Filters are attached to handlers, not loggers: a logger's filters do not see records
from its child loggers, a handler's see every record it writes. Gunicorn's own loggers
(its access log holds request paths) get the same filter.
"""

from __future__ import annotations

import logging

from commerce.cards.scrub import PanLogFilter

_LOGGERS = ("", "gunicorn.error", "gunicorn.access", "celery", "celery.task")


def install_pan_filter() -> None:
    """Add the card-number filter to every handler of the known loggers (idempotent)."""
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, PanLogFilter) for f in handler.filters):
                handler.addFilter(PanLogFilter())


def configure(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Stripe SDK logs request bodies at DEBUG; chatledger's own log says what it sent.
    logging.getLogger("stripe").setLevel(max(logging.INFO, logging.getLevelName(level)))
    install_pan_filter()
