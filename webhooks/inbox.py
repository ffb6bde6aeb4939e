"""Storing events in the inbox, and processing one of them exactly once.

Storing: INSERT .. ON CONFLICT DO NOTHING on (source, event id), so twenty copies
of one event arriving at once make one row, and every copy gets a 2xx. No task is sent
from the request: the committed `pending` row is the hand-off. The relay
(webhooks/relay.py) in each worker polls for due rows (and listens on the `inbox`
channel for explicit wake-ups), claims them with FOR UPDATE SKIP LOCKED and sends their
processing tasks with the row's id only.

Processing: the row is locked, the source's handler runs, and the row is marked
processed, all in one transaction. A worker that dies half-way leaves nothing
behind (the transaction rolls back and the late-acknowledged task is delivered
again); a second delivery of the task finds the row processed and does nothing.
A handler that fails leaves the row `failed` with its error, written in a
transaction of its own so the rollback does not take the error with it.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.errors import LockNotAvailable
from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from commerce import runtime
from commerce.cards.scrub import mask
from commerce.db import transaction, utcnow
from commerce.errors import InvalidInput
from commerce.ids import new_id
from webhooks.models import InboxEvent

log = logging.getLogger(__name__)

#: The channel the relay listens on: a notification means "a row may be due now".
CHANNEL = "inbox"
#: After this many failed attempts an event stays `failed` until replayed by hand.
MAX_ATTEMPTS = 12
#: A waiting event gives up (becomes `ignored`) when what it waits for has not appeared by then.
MAX_WAIT = timedelta(days=3)


class Waiting(Exception):
    # An outcome rather than an error: the event is fine, its subject is not there yet.
    """The event refers to something not known yet; `key` names it (`payment_intent:pi_1`)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class Busy(Exception):
    """The event's row stayed locked by another transaction (a relay sending it, or another
    delivery of its task processing it): nothing was attempted, nothing is counted."""


class Ignored(Exception):
    """The event is about nothing chatledger keeps; processed with nothing to do."""


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    created: bool
    status: str


Handler = Callable[[Session, InboxEvent], None]
_HANDLERS: dict[str, Handler] = {}


def handles(source_prefix: str) -> Callable[[Handler], Handler]:
    """Register the handler for events whose source is `source_prefix` or starts with it + ':'."""

    def register(handler: Handler) -> Handler:
        _HANDLERS[source_prefix] = handler
        return handler

    return register


def _handler_for(source: str) -> Handler:
    prefix = source.split(":", 1)[0]
    if prefix not in _HANDLERS:
        # Import the handlers on first use: the worker and the replay command need them.
        import webhooks.handlers  # noqa: F401
    return _HANDLERS[prefix]


#: Built once: this insert runs for every event at every door, and a statement made anew
#: each time costs more in SQLAlchemy's compilation and cache lookup than it does in SQL.
_TABLE = InboxEvent.__table__
#: A relay's wake-up, for the rare writers that make rows due (wake, replay). Not the doors':
#: PostgreSQL serializes the commits of transactions that NOTIFY (a database-wide lock held
#: through the commit's WAL flush), which measured 6x fewer commits per second with 16
#: committers; a door's row is found by the relays' frequent poll instead.
_NOTIFY = select(func.pg_notify(CHANNEL, ""))
_EXISTING = select(InboxEvent.__table__.c.id, InboxEvent.__table__.c.status).where(
    InboxEvent.__table__.c.source == bindparam("source"),
    InboxEvent.__table__.c.event_id == bindparam("event_id"),
)


#: The same insert in the driver's own terms, run on the caller's connection and transaction:
#: every door runs it, and SQLAlchemy's statement execution (cache lookup, bind processing,
#: result wrapping) cost as much CPU as psycopg's own work. The payload goes as JSON text.
_INSERT_SQL = (
    "INSERT INTO inbox_events (id, source, event_id, event_type, payload, headers,"
    " occurred_at, received_at, next_attempt_at, status, attempts, last_error)"
    " VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, 0, %s)"
    " ON CONFLICT (source, event_id) DO NOTHING RETURNING id"
)


def insert_event(
    connection: Connection,
    *,
    source: str,
    event_id: str,
    event_type: str,
    payload: Any,
    headers: Mapping[str, Any] | None = None,
    occurred_at: datetime | None = None,
    status: str = "pending",
    error: str | None = None,
    payload_json: str | None = None,
) -> Stored:
    """Insert the event unless (source, event id) is already there. Sends nothing: once the
    caller's transaction commits, a relay finds the new pending row and sends it.

    `payload_json`, when given, is `payload` as JSON text already (a door's body that the
    scrubber left as it was), so it is not serialized again."""
    new = new_id("inbox_event")
    now = utcnow()
    with connection.connection.driver_connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            (
                new,
                source,
                event_id,
                event_type[:64],
                json.dumps(payload) if payload_json is None else payload_json,
                json.dumps(dict(headers or {})),
                occurred_at,
                now,
                now,
                status,
                error,
            ),
        )
        inserted = cursor.fetchone()
    if inserted is None:
        existing = connection.execute(_EXISTING, {"source": source, "event_id": event_id}).one()
        return Stored(existing.id, created=False, status=existing.status)
    return Stored(inserted[0], created=True, status=status)


def store(session: Session, **event: Any) -> Stored:
    """`insert_event` in an ORM session; a relay sends a new pending event after the commit."""
    return insert_event(session.connection(), **event)


def send(inbox_id: str) -> None:
    """Send the processing task now, if the event is due and no relay holds or has sent it
    (the caller has committed). Claimed and leased like a relay does, so it is sent once. If
    the broker is down the event stays due and a relay or the sweep sends it: accepted events
    are never lost."""
    from webhooks import relay

    try:
        relay.send_due(runtime.engine(), ids=[inbox_id])
    except Exception:  # the broker's errors vary by transport; the relays cover all of them
        log.warning("inbox event %s not queued; a relay will send it", inbox_id)


def enqueue(session: Session, inbox_id: str | None = None) -> None:
    """Have due events sent once the session's transaction commits: the notification wakes
    the relays at the commit (and is dropped on rollback), and they claim every due row."""
    session.execute(_NOTIFY)


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: 2 s, 4 s, ... capped at 30 minutes."""
    ceiling = min(2 ** max(attempts, 1), 1800)
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


def process(factory: sessionmaker[Session], inbox_id: str) -> str | None:
    """Run the handler for one inbox event, exactly once; returns the status it ends in."""
    try:
        with transaction(factory) as session:
            try:
                event = session.scalars(
                    select(InboxEvent)
                    .where(InboxEvent.id == inbox_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                ).one_or_none()
            except OperationalError as exc:
                if isinstance(exc.orig, LockNotAvailable):
                    # lock_timeout on the row itself: its holder finishes, or the row stays
                    # due and is sent again. The handler never ran, so no attempt is counted.
                    raise Busy(inbox_id) from exc
                raise
            if event is None:
                return None
            if event.status in ("processed", "refused", "ignored"):
                return event.status
            event.attempts += 1
            try:
                # A savepoint, so a Waiting or Ignored outcome undoes the handler's partial work
                # while the row's own bookkeeping below still commits.
                with session.begin_nested():
                    _handler_for(event.source)(session, event)
            except Waiting as waiting:
                _wait(event, waiting.key)
                return event.status
            except Ignored as ignored:
                event.status = "ignored"
                event.last_error = mask(str(ignored))[:2000]
                event.processed_at = utcnow()
                return event.status
            event.status = "processed"
            event.processed_at = utcnow()
            event.waiting_for = None
            event.last_error = None
            return event.status
    except Busy:
        raise
    except Exception as exc:
        _record_failure(factory, inbox_id, exc)
        raise


def _wait(event: InboxEvent, key: str) -> None:
    if utcnow() - event.received_at > MAX_WAIT:
        event.status = "ignored"
        event.last_error = f"gave up waiting for {key}"
        event.processed_at = utcnow()
        return
    event.status = "waiting"
    event.waiting_for = key[:128]
    event.next_attempt_at = utcnow() + backoff(event.attempts)


def _record_failure(factory: sessionmaker[Session], inbox_id: str, exc: Exception) -> None:
    """Keep the error on the row, outside the transaction that rolled back."""
    # The trace is masked: a card number must not reach storage through an error message.
    detail = mask("".join(traceback.format_exception_only(type(exc), exc)).strip())[:2000]
    with transaction(factory) as session:
        event = session.get(InboxEvent, inbox_id, with_for_update=True)
        if event is None or event.status == "processed":
            return
        event.attempts += 1
        event.status = "failed"
        event.last_error = detail
        event.next_attempt_at = utcnow() + backoff(event.attempts)
        if isinstance(exc, InvalidInput):
            # The event itself is wrong: trying again cannot help. It stays for a replay.
            event.attempts = max(event.attempts, MAX_ATTEMPTS)


def wake(session: Session, key: str) -> int:
    """Make events waiting for `key` due now; they are sent after the commit."""
    ids = list(
        session.scalars(
            update(InboxEvent)
            .where(InboxEvent.waiting_for == key, InboxEvent.status == "waiting")
            .values(next_attempt_at=utcnow())
            .returning(InboxEvent.id)
        )
    )
    if ids:
        enqueue(session)
    return len(ids)


#: Unfinished events that may be tried now: new or waiting ones, and failed ones with tries left.
_UNFINISHED = or_(
    _TABLE.c.status.in_(("pending", "waiting")),
    (_TABLE.c.status == "failed") & (_TABLE.c.attempts < MAX_ATTEMPTS),
)


def claim(
    connection: Connection,
    *,
    now: datetime,
    grace: timedelta = timedelta(0),
    limit: int = 500,
    ids: Sequence[str] | None = None,
) -> list[str]:
    """Lock unfinished events due by `now - grace` (of `ids`, if given), oldest due first.

    FOR UPDATE SKIP LOCKED: rows another transaction has claimed are skipped, and a row whose
    claim committed a lease meanwhile is re-checked and left out, so two relays never claim
    one row. Nothing is written: the caller leases the rows it sent (`lease`).
    """
    query = select(_TABLE.c.id).where(_UNFINISHED, _TABLE.c.next_attempt_at <= now - grace)
    if ids is not None:
        query = query.where(_TABLE.c.id.in_(list(ids)))
    query = query.order_by(_TABLE.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    return list(connection.execute(query).scalars())


def outstanding(connection: Connection, *, now: datetime, limit: int) -> int:
    """How many new events were sent and not yet taken up (leased `pending` rows), up to
    `limit`: the relays' measure of what waits in the queue."""
    leased = (
        select(_TABLE.c.id)
        .where(_TABLE.c.status == "pending", _TABLE.c.next_attempt_at > now)
        .limit(limit)
        .subquery()
    )
    return connection.execute(select(func.count()).select_from(leased)).scalar_one()


def lease(connection: Connection, ids: Sequence[str], *, until: datetime) -> None:
    """Keep claimed events from being claimed again before `until` (their task is on its way)."""
    connection.execute(
        update(_TABLE).where(_TABLE.c.id.in_(list(ids))).values(next_attempt_at=until)
    )


def due(
    session: Session,
    *,
    now: datetime,
    grace: timedelta,
    limit: int = 500,
    lease_for: timedelta = timedelta(minutes=5),
) -> list[str]:
    """Claim and lease unfinished due events in the session's transaction; the caller sends
    them after the commit. `grace` leaves just-stored events to the relays."""
    rows = claim(session.connection(), now=now, grace=grace, limit=limit)
    if rows:
        lease(session.connection(), rows, until=now + lease_for)
    return rows


def reset_for_replay(session: Session, inbox_ids: list[str]) -> int:
    """Put failed, waiting or ignored events back to `pending` and send them again."""
    ids = list(
        session.scalars(
            update(InboxEvent)
            .where(
                InboxEvent.id.in_(inbox_ids),
                InboxEvent.status.in_(("failed", "waiting", "ignored", "pending")),
            )
            .values(status="pending", next_attempt_at=utcnow(), attempts=0)
            .returning(InboxEvent.id)
        )
    )
    if ids:
        enqueue(session)
    return len(ids)


def forget_chat_user(session: Session, *, channel: str, user_id: str) -> int:
    """Delete stored chat events sent by this person (their erasure); returns how many."""
    return session.execute(
        delete(InboxEvent).where(
            InboxEvent.source == f"chat:{channel}",
            InboxEvent.payload["sender"]["id"].astext == user_id,
        )
    ).rowcount
