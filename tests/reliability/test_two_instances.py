"""Part 5 of issue 8, past one machine: the same stream, under the same faults, against two
gunicorn instances (a load balancer's round robin: each delivery goes to the next one) and
two Celery workers, sharing one PostgreSQL and one Redis, with the same guarantees.

The worker that is SIGKILLed is whichever of the two is found blocked mid-task; the other
one goes on working through the kill and the PostgreSQL restart. A worker that the Redis
outage ends (kombu's transport can exit when the broker goes away with a task unacked) is
started again once Redis is back, as a deployment's process supervisor would, and the
timeline says so; the guarantees hold either way.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import Prepared, Suite
from tests.reliability.run import check_exactly_once, report, run_under_faults
from tests.support.stream import Books

pytestmark = pytest.mark.reliability


def test_two_instances_and_two_workers_keep_the_same_guarantees(
    suite: Suite, prepared: Prepared, clean_books: Books
):
    service = suite.service("two", web=2, workers=2).start()
    engine = suite.cluster.engine(service.settings.database_url)
    try:
        run = run_under_faults(suite.cluster, service, prepared.stream, engine)
        print("\n" + report("two gunicorns, two workers", prepared.stream, run, engine))
        # Both instances answered their share of the stream.
        assert {answer.url for answer in run.answers} == set(service.urls)
        check_exactly_once(prepared.stream, run, engine, clean_books)
    except BaseException:
        print(service.logs())
        raise
    finally:
        service.stop()
        engine.dispose()
