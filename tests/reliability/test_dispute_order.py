"""Stripe does not promise order: a `charge.dispute.closed` delivered before
`charge.dispute.created` must still record the dispute's opening at the dispute's own
creation, as delivery in order does, so the sale's history does not depend on the order
(the fold orders facts after payment by their time). The Stripe handler records the opening
(and a refund) at the object's own `created`, whichever event brings it. The stream found
this when the opening took the first delivered event's time.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.reliability.conftest import Prepared, Suite
from tests.support.stream import deliver

pytestmark = pytest.mark.reliability


def test_a_dispute_closed_before_it_is_created_opens_at_its_creation(
    suite: Suite, prepared: Prepared
):
    stream = prepared.stream
    objects = [
        json.loads(event.body)["data"]["object"] if event.door == "stripe" else {}
        for event in stream.events
    ]
    closed = next(n for n, e in enumerate(stream.events) if e.event_type == "charge.dispute.closed")
    intent = objects[closed]["payment_intent"]
    created = next(
        n
        for n, e in enumerate(stream.events)
        if e.event_type == "charge.dispute.created" and objects[n]["id"] == objects[closed]["id"]
    )
    payment = [
        n
        for n, obj in enumerate(objects)
        if obj.get("id") == intent or obj.get("payment_intent") == intent
        if n not in (created, closed)
    ]
    service = suite.service("disputes", beat=False).start()
    engine = suite.cluster.engine(service.settings.database_url)
    try:
        answers = deliver(service.urls, stream, [*payment, closed, created], duration=0, threads=1)
        assert all(answer.ok for answer in answers)
        query = text(
            "SELECT occurred_at FROM sale_events WHERE kind = 'dispute_opened'"
            " AND source_ref = :dispute"
        )
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as connection:
                opened = connection.execute(query, {"dispute": objects[closed]["id"]}).scalar()
                pending = connection.execute(
                    text(
                        "SELECT count(*) FROM inbox_events WHERE status <> 'processed'"
                        " AND status <> 'ignored'"
                    )
                ).scalar_one()
            if opened is not None and pending == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the dispute's events were not processed within 120 s")
            time.sleep(0.5)
        assert opened == datetime.fromtimestamp(objects[created]["created"], UTC)
    finally:
        service.stop()
        engine.dispose()
