"""The one read path for partner data (card transactions and balances).

Every read states its purpose. A row comes back only if
- it was stored for that purpose (its `purposes` came from the agreement and the consent
  in force when it arrived),
- the cardholder's consent is still in force for that purpose and the row's scope, and
- an agreement with the partner is still in force for that purpose and scope;
and every read is written to the audit log, with who asked, why and how many rows.

Nothing else in the code selects these tables for reading: tests/test_partner_data_reads.py
walks the source and fails on any other read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    String,
    Table,
    and_,
    any_,
    exists,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from commerce.audit.services import record
from commerce.cards.models import CardTransaction
from commerce.consent.models import BalanceSnapshot, Consent
from commerce.db import advisory_lock_key, utcnow
from commerce.errors import InvalidInput
from commerce.partners.models import PURPOSES, Agreement

T = TypeVar("T", CardTransaction, BalanceSnapshot)

#: The scope of the agreement and consent each kind of partner data needs.
SCOPE = {CardTransaction: "transactions", BalanceSnapshot: "balances"}
#: A cardholder reading their own data (export) or the operator erasing it: audited, and
#: not limited by the purposes of sharing, which exist to limit use by others.
DATA_RIGHTS = "data_rights"


def consent_covers(
    partner_id: Any, customer_ref: Any, *, scope: str, purpose: str | None, at: datetime
) -> ColumnElement[bool]:
    conditions = [
        Consent.partner_id == partner_id,
        Consent.customer_ref == customer_ref,
        Consent.status == "granted",
        or_(Consent.expires_at.is_(None), Consent.expires_at > at),
        literal(scope) == any_(Consent.scopes),
    ]
    if purpose is not None:
        conditions.append(literal(purpose) == any_(Consent.purposes))
    return exists(select(Consent.id).where(*conditions))


def agreement_covers(
    partner_id: Any, *, scope: str, purpose: str | None, at: datetime
) -> ColumnElement[bool]:
    conditions = [
        Agreement.partner_id == partner_id,
        Agreement.status == "active",
        Agreement.starts_at <= at,
        or_(Agreement.ends_at.is_(None), Agreement.ends_at > at),
        literal(scope) == any_(Agreement.scopes),
    ]
    if purpose is not None:
        conditions.append(literal(purpose) == any_(Agreement.purposes))
    return exists(select(Agreement.id).where(*conditions))


def usable(model: type[T], purpose: str, *, at: datetime | None = None) -> ColumnElement[bool]:
    """The condition a row of `model` must meet to be used for `purpose` now."""
    if purpose not in PURPOSES:
        raise InvalidInput({"purpose": [f"Must be one of {', '.join(PURPOSES)}."]})
    at = at or utcnow()
    scope = SCOPE[model]
    return and_(
        literal(purpose) == any_(model.purposes),
        consent_covers(model.partner_id, model.customer_ref, scope=scope, purpose=purpose, at=at),
        agreement_covers(model.partner_id, scope=scope, purpose=purpose, at=at),
    )


def read(
    session: Session,
    model: type[T],
    *,
    purpose: str,
    actor: str,
    where: Sequence[ColumnElement[bool]] = (),
    order_by: Sequence[Any] = (),
    limit: int | None = None,
) -> list[T]:
    """Rows of partner data usable for `purpose`, matching `where`; the read is audited."""
    if purpose == DATA_RIGHTS:
        condition: ColumnElement[bool] = literal(True)
    else:
        condition = usable(model, purpose)
    query = select(model).where(condition, *where).order_by(*order_by)
    if limit is not None:
        query = query.limit(limit)
    rows = list(session.scalars(query))
    record(
        session,
        actor=actor,
        action="partner_data.read",
        subject_type=model.__tablename__,
        purpose=purpose,
        detail={"rows": len(rows)},
    )
    return rows


def stage_transactions(
    session: Session,
    *,
    into: str,
    purpose: str,
    actor: str,
    where: Sequence[ColumnElement[bool]] = (),
    columns: Sequence[str] | None = None,
    distinct: bool | None = None,
) -> int:
    """Copy the card transactions usable for `purpose` and matching `where` into a temporary
    table `into` (dropped at commit), for set-based work such as reconciliation; `columns`
    keeps only those columns, distinct unless `distinct` is False. The read is audited with
    its row count."""
    table = CardTransaction.__table__
    chosen = [table.c[name] for name in columns] if columns else list(table.c)
    query = select(*chosen).where(usable(CardTransaction, purpose), *where)
    if distinct if distinct is not None else bool(columns):
        query = query.distinct()
    temporary = Table(
        into,
        MetaData(),
        # A foreign key's type is the referenced column's, known once every model is
        # imported; a temporary copy only needs text for those.
        *(
            Column(column.name, String() if isinstance(column.type, NullType) else column.type)
            for column in chosen
        ),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    connection = session.connection()
    temporary.create(connection)
    # An INSERT construct's row count is kept only when asked for (SQLAlchemy 2 reports -1).
    rows = connection.execute(
        temporary.insert().from_select([c.name for c in chosen], query),
        execution_options={"preserve_rowcount": True},
    ).rowcount
    record(
        session,
        actor=actor,
        action="partner_data.read",
        subject_type=CardTransaction.__tablename__,
        purpose=purpose,
        detail={"rows": rows, "into": into},
    )
    return rows


def hold_transactions(session: Session, *, into: str, ids: str) -> int:
    """Keep the card transactions whose ids the query `ids` selects from being deleted until
    the caller's transaction ends (the lock a foreign key check takes, for many rows in one
    statement), and list those still there in a temporary table `into` (column `id`,
    dropped at commit). A deletion of them (a consent ended) waits for the caller to commit
    and then removes what it wrote about them. Nothing but the ids is read."""
    return session.execute(
        text(
            f"CREATE TEMPORARY TABLE {into} ON COMMIT DROP AS"  # noqa: S608 - names from code
            f" SELECT id FROM card_transactions WHERE id IN ({ids}) FOR KEY SHARE"
        )
    ).rowcount


def _merchant_lock_key(merchant_id: str) -> int:
    """The advisory-lock key of the work on a merchant's card data (see `lock_merchants`)."""
    return advisory_lock_key("reconciliation", merchant_id)


def lock_merchants(session: Session, merchant_ids: Iterable[str], *, shared: bool) -> None:
    """Take the locks of the work on these merchants' card data until the caller's
    transaction ends.

    Reconciliation holds a merchant's lock while it reads the merchant's card transactions
    and writes about them: shared on the continuous path, exclusively for a batch. A
    deletion of card data (`commerce.consent.cascade`) takes the lock of every merchant
    whose transactions it deletes, exclusively, before it deletes: it waits for the runs
    in progress and its triggers then remove what they wrote, and a run that starts after
    it reads what it left. A run therefore never writes about a transaction deleted
    meanwhile, and holds no lock on the transactions themselves.

    Locks are taken in the order of the merchant ids (the code point order of `sorted`),
    one at a time, which every holder keeps: two holders never wait on each other in a
    cycle."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    keys = [_merchant_lock_key(m) for m in sorted(set(merchant_ids))]
    if not keys:
        return
    session.execute(
        text(
            f"SELECT {function}(x.k)"  # noqa: S608 - one of two names from code
            " FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS x(k, n) ORDER BY x.n"
        ),
        {"keys": keys},
    )
