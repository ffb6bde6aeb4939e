"""Part 1 of issue 8: the stream of 2,000 signed events while PostgreSQL restarts, Redis is
down for 30 s and a worker is SIGKILLed mid-task, on one gunicorn and one Celery worker.

See tests/reliability/run.py for the schedule of faults and the guarantees checked.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import Prepared, Suite
from tests.reliability.run import check_exactly_once, report, run_under_faults
from tests.support.stream import Books

pytestmark = pytest.mark.reliability


def test_the_stream_under_faults_is_stored_and_processed_exactly_once(
    suite: Suite, prepared: Prepared, clean_books: Books
):
    service = suite.service("faults").start()
    engine = suite.cluster.engine(service.settings.database_url)
    try:
        run = run_under_faults(suite.cluster, service, prepared.stream, engine)
        print("\n" + report("one gunicorn, one worker", prepared.stream, run, engine))
        check_exactly_once(prepared.stream, run, engine, clean_books)
    except BaseException:
        print(service.logs())
        raise
    finally:
        service.stop()
        engine.dispose()
