"""Both ways of reconciling reproduce the ground truth of a generated data set exactly.

bench/reconcile_data.py writes 100,000 sales, their Stripe events and about 105,000 card
transactions into a database of this module's own, with what docs/RECONCILIATION.md says
must come out of them (schema `truth`). Then:

- the batch over the whole period leaves exactly the true matches and exceptions, and a
  second run changes nothing;
- the continuous path, fed the same facts in their (shuffled) arrival order chunk by chunk,
  each chunk in one transaction with the reconciliation of what it touched, and a sweep
  for authorizations passing their clearing days, ends with the same matches and open
  exceptions (and only exceptions that were once true and are now resolved besides);
  a batch run after it changes nothing, not even `updated_at`.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

import migrations
from commerce.reconciliation.models import DEFAULT_CLEARING_DAYS

engine_module = pytest.importorskip("commerce.reconciliation.engine")
Scope = engine_module.Scope

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import reconcile_data as data  # noqa: E402

SALES = int(os.environ.get("CHATLEDGER_GROUND_TRUTH_SALES", "100000"))
#: Chunks the continuous path delivers the facts in (each a transaction; ~20,000 facts each
#: for 100,000 sales).
CHUNKS = int(os.environ.get("CHATLEDGER_GROUND_TRUTH_CHUNKS", "20"))
SHOWN = 15


@pytest.fixture(scope="module")
def truth_db(servers) -> Iterator[Engine]:
    """A database of this module's own, migrated, with the generated data set."""
    name = f"chatledger_truth_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(servers.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url)
        data.generate(url, sales=SALES, seed=7)
        engine = create_engine(url)
        yield engine
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _params(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return data.params(connection)


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _batch(engine: Engine, *, chunked: bool = True) -> None:
    """The batch over the whole period: as a run executes it, its merchants in chunks
    reconciled two at a time in sessions of their own; or, `chunked=False`, every merchant
    in one scope and one transaction."""
    p = _params(engine)
    start, end, as_of = _when(p["period_start"]), _when(p["period_end"]), _when(p["as_of"])
    if chunked:
        engine_module.reconcile_period(sessionmaker(engine), start, end, as_of=as_of, concurrency=2)
        return
    with Session(engine) as session:
        engine_module.reconcile(session, Scope.period(start, end, as_of=as_of))
        session.commit()


def _clear_derived(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE reconciliation_matches, reconciliation_exceptions"))


def _differences(connection: Connection, got: str, want: str, what: str) -> list[str]:
    """Rows in one query and not the other (as multisets), the first of each shown."""
    problems = []
    for label, first, second in (("missing", want, got), ("unexpected", got, want)):
        rows = connection.execute(
            text(f"SELECT * FROM (({first}) EXCEPT ALL ({second})) AS d ORDER BY 1, 2, 3")  # noqa: S608
        ).all()
        if rows:
            problems.append(f"{len(rows)} {label} {what}, first:")
            problems.extend(f"  {tuple(row)}" for row in rows[:SHOWN])
    return problems


def _template_of(connection: Connection, lines: list[str]) -> list[str]:
    """Name the template of each shown row's case, to point at the rule in question."""
    named = []
    for line in lines:
        tpl = None
        for token in re.split(r"[\s':,()]+", line) if line.startswith("  ") else ():
            if token.startswith("sale_") and len(token) == 27:
                tpl = _tpl(connection, "digits = :d", token[5:25])
            elif token.startswith("T") and len(token) == 13 and token[1:].isdigit():
                tpl = _tpl(connection, "right(digits, 10) = :d", token[1:11])
            if tpl:
                break
        named.append(f"{line}  [{tpl}]" if tpl else line)
    return named


def _tpl(connection: Connection, condition: str, digits: str) -> str | None:
    return connection.execute(
        text(f"SELECT tpl FROM truth.cases WHERE {condition} LIMIT 1"),  # noqa: S608
        {"d": digits},
    ).scalar()


#: Every match: the stored card matches and the Stripe matches read from the sales' events.
MATCHES_GOT = (
    "SELECT sale_id, kind, source_key, rule, confidence"  # noqa: S608
    f" FROM ({engine_module.MATCHES}) m"
)
MATCHES_WANT = "SELECT sale_id, kind, source_key, rule, confidence FROM truth.matches"
EXCEPTIONS_WANT = "SELECT merchant_id, type, subject_key, status FROM truth.exceptions"


def _compare(engine: Engine, exceptions_got: str) -> list[str]:
    with engine.connect() as connection:
        problems = _differences(connection, MATCHES_GOT, MATCHES_WANT, "matches")
        problems += _differences(connection, exceptions_got, EXCEPTIONS_WANT, "exceptions")
        return _template_of(connection, problems)


def _snapshot(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in ("reconciliation_matches", "reconciliation_exceptions"):
            connection.execute(text(f"DROP TABLE IF EXISTS truth.snap_{table}"))
            copy = f"CREATE TABLE truth.snap_{table} AS SELECT * FROM {table}"  # noqa: S608
            connection.execute(text(copy))


def _changed_since_snapshot(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        problems = []
        for table in ("reconciliation_matches", "reconciliation_exceptions"):
            problems += _differences(
                connection,
                f"SELECT * FROM {table}",  # noqa: S608
                f"SELECT * FROM truth.snap_{table}",  # noqa: S608
                table,
            )
        return problems


def test_the_batch_reproduces_the_ground_truth_and_a_second_run_changes_nothing(truth_db):
    _clear_derived(truth_db)
    _batch(truth_db)
    problems = _compare(
        truth_db, "SELECT merchant_id, type, subject_key, status FROM reconciliation_exceptions"
    )
    assert not problems, "the batch differs from the ground truth:\n" + "\n".join(problems)

    _snapshot(truth_db)
    _batch(truth_db)
    changed = _changed_since_snapshot(truth_db)
    assert not changed, "a second batch run changed rows:\n" + "\n".join(changed)

    # Every merchant in one scope calls for exactly what the chunks wrote.
    _batch(truth_db, chunked=False)
    changed = _changed_since_snapshot(truth_db)
    assert not changed, "one scope over every merchant changed rows:\n" + "\n".join(changed)


# The sweep that reconciles the card groups whose authorizations passed their clearing
# days between two moments (what the periodic task does for time alone).
DUE_GROUPS = """
SELECT t.merchant_id, array_agg(DISTINCT t.card_last4)
FROM card_transactions t
LEFT JOIN reconciliation_settings s ON s.merchant_id = t.merchant_id
WHERE t.kind = 'authorized' AND t.merchant_id IS NOT NULL
  AND t.occurred_at + make_interval(days => coalesce(s.clearing_days, :default_days)) > :since
  AND t.occurred_at + make_interval(days => coalesce(s.clearing_days, :default_days)) <= :until
GROUP BY t.merchant_id
"""


def _feed_in_arrival_order(engine: Engine) -> list[tuple[int, datetime]]:
    """Deliver the facts chunk by chunk, reconciling what each chunk touched in its
    transaction; returns each chunk's last rank and clock."""
    p = _params(engine)
    as_of = _when(p["as_of"])
    chunk = -(-int(p["facts"]) // CHUNKS)
    with engine.connect() as connection:
        ranks = connection.execute(
            text(
                "SELECT rank, at FROM truth.arrival WHERE rank % :n = 0 OR rank = "
                "(SELECT max(rank) FROM truth.arrival) ORDER BY rank"
            ),
            {"n": chunk},
        ).all()
    chunks: list[tuple[int, datetime]] = []
    lo, since = 0, None
    for hi, clock in [*ranks, (None, as_of)]:
        with Session(engine) as session:
            connection = session.connection()
            scopes: dict[str, tuple[set[str], set[str]]] = {}
            if hi is not None:
                for merchant_id, sale_ids, last4s in data.deliver(connection, lo, hi):
                    sales, cards = scopes.setdefault(merchant_id, (set(), set()))
                    sales.update(sale_ids)
                    cards.update(last4s)
            if since is not None:
                for merchant_id, last4s in connection.execute(
                    text(DUE_GROUPS),
                    {
                        "since": since,
                        "until": clock,
                        "default_days": DEFAULT_CLEARING_DAYS,
                    },
                ):
                    scopes.setdefault(merchant_id, (set(), set()))[1].update(last4s)
            for merchant_id, (sale_ids, last4s) in sorted(scopes.items()):
                engine_module.reconcile(
                    session,
                    Scope.items(merchant_id, sale_ids=sale_ids, last4s=last4s, as_of=clock),
                )
            session.commit()
        if hi is not None:
            chunks.append((hi, clock))
            lo = hi
        since = clock
    return chunks


def test_the_continuous_path_fed_in_arrival_order_reproduces_the_ground_truth(truth_db):
    with truth_db.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS truth.sales_generated"))
        connection.execute(
            text(
                "CREATE TABLE truth.sales_generated AS SELECT id, state, amount_captured,"
                " amount_refunded, amount_disputed, card_ref_id, card_brand, card_last4"
                " FROM sales"
            )
        )
        data.clear_facts(connection)

    chunks = _feed_in_arrival_order(truth_db)

    with truth_db.connect() as connection:
        sales_differ = _differences(
            connection,
            "SELECT id, state, amount_captured, amount_refunded, amount_disputed, card_ref_id,"
            " card_brand, card_last4 FROM sales",
            "SELECT * FROM truth.sales_generated",
            "sales",
        )
    assert not sales_differ, "delivery in arrival order left other sales:\n" + "\n".join(
        sales_differ
    )
    problems = _compare(
        truth_db,
        "SELECT merchant_id, type, subject_key, status FROM reconciliation_exceptions"
        " WHERE status <> 'resolved'",
    )
    assert not problems, (
        f"the continuous path ({len(chunks)} chunks) differs from the ground"
        " truth:\n" + "\n".join(problems)
    )

    # Resolved exceptions are ones the facts so far called for; an authorization that passed
    # its clearing days before its late clearing arrived left a resolved missing_clearing.
    with truth_db.connect() as connection:
        resolved = connection.execute(
            text(
                "SELECT type, count(*) FROM reconciliation_exceptions"
                " WHERE status = 'resolved' GROUP BY type ORDER BY type"
            )
        ).all()
        late = _late_clearings_seen_missing(connection, chunks)
        late_resolved = connection.execute(
            text(
                "SELECT count(*) FROM reconciliation_exceptions"
                " WHERE type = 'missing_clearing' AND status = 'resolved'"
                " AND subject_key = ANY(CAST(:keys AS text[]))"
            ),
            {"keys": late},
        ).scalar_one()
    assert late, "no late clearing arrived after its authorization passed its clearing days"
    assert late_resolved == len(late), (late_resolved, len(late), resolved)

    _snapshot(truth_db)
    _batch(truth_db)
    changed = _changed_since_snapshot(truth_db)
    assert not changed, "a batch after the continuous path changed rows:\n" + "\n".join(changed)


def _late_clearings_seen_missing(
    connection: Connection, chunks: list[tuple[int, datetime]]
) -> list[str]:
    """Subjects of the late clearings whose authorization passed its clearing days in an
    earlier chunk than the one that brought the clearing."""
    bounds = [(0, None)] + [(hi, clock) for hi, clock in chunks]
    ranks = [hi for hi, _ in bounds[1:]]
    clocks = [clock for _, clock in bounds[1:]]
    rows = connection.execute(
        text(
            """
            SELECT 'txn:' || a.partner_id || ':' || a.transaction_id AS subject,
                   a.occurred_at + make_interval(days => coalesce(s.clearing_days, :d)) AS due,
                   (SELECT rank FROM truth.arrival WHERE fact = 2 AND id = a.id) AS auth_rank,
                   (SELECT rank FROM truth.arrival WHERE fact = 2 AND id = c.id) AS clear_rank
            FROM truth.cases k
            JOIN truth.f_card a ON a.id LIKE 'ctx_' || k.digits || '%' AND a.kind = 'authorized'
            JOIN truth.f_card c ON c.transaction_id = a.transaction_id AND c.kind = 'cleared'
                 AND c.partner_id = a.partner_id
            LEFT JOIN reconciliation_settings s ON s.merchant_id = k.merchant_id
            WHERE k.tpl = 'late_clearing'
            """
        ),
        {"d": DEFAULT_CLEARING_DAYS},
    ).all()

    def chunk_of_rank(rank: int) -> int:
        return next(i for i, hi in enumerate(ranks) if rank <= hi)

    def chunk_of_time(at: datetime) -> int:
        return next((i for i, clock in enumerate(clocks) if at <= clock), len(clocks))

    return [
        row.subject
        for row in rows
        if max(chunk_of_rank(row.auth_rank), chunk_of_time(row.due)) < chunk_of_rank(row.clear_rank)
    ]
