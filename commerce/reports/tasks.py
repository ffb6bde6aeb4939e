"""The periodic fold of the report change log into the rollups (Celery beat, every 10 s)."""

from __future__ import annotations

from celery import shared_task

from commerce import runtime
from commerce.reports import rollups


@shared_task(name="reports.fold")
def fold() -> int:
    """Fold what the triggers logged; a fold already running elsewhere makes this one a no-op.
    Reports add the unfolded rows themselves, so the fold's pace bounds the log's size, not
    how current a report is."""
    return rollups.fold(runtime.engine()).folded
