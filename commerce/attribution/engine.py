"""Off-platform attribution: set-based SQL over a set of cardholders, the same for every way
of running it.

Rules (docs/ATTRIBUTION.md):

- The input is a cardholder's purchases at a merchant's MIDs that reconciliation left as
  `orphan_transaction` (a purchase that reconciles to an in-chat sale *is* that sale, and
  is never counted twice), read through the partner-data path for `sales_attribution`,
  so a purchase counts only while the cardholder's consent and the partner's agreement
  allow that purpose.
- The cardholder's consent names their chat identity; their touchpoints with the same
  merchant's offers count when they happened within the window before the purchase: the
  offer's own click or view window, else the merchant's (defaults 7 days after a click or
  an acceptance, 1 day after a view).
- `last_touch` credits the latest touchpoint, `first_touch` the earliest (ties by id);
  `linear` splits the purchase over all of them, in whole minor units that add up exactly.
  One row is stored per purchase and touchpoint, with the touchpoint's place among the
  purchase's (`touch_rank` of `touches`); the view `attribution_credits` gives each model's
  credits from it.
- A reversal, or card refunds adding up to the purchase, within the offer's return period
  take the credit back (`taken_back`); a partial refund in the period is kept as `refunded`.

A scope is a set of cardholders, taken whole: every purchase of theirs at any merchant.
Processing a card transaction attributes the cardholders of the card groups it reconciled;
recording a touchpoint, the cardholders behind that chat user; a batch, every cardholder
with a purchase in the period. The same data gives the same rows, and a second run changes
nothing.

An attribution is deleted with its card transaction or touchpoint by a trigger (migration
0014) rather than checked against them row by row: before writing, a run holds the card
transactions and touchpoints its rows name (the lock a foreign key check takes, one
statement for each table) and leaves out the rows whose card transaction or touchpoint has
gone. A deletion meanwhile waits for the run's commit, then takes what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from commerce import partnerdata
from commerce.attribution.models import (
    CLICK_KINDS,
    DEFAULT_CLICK_WINDOW_SECONDS,
    DEFAULT_RETURN_PERIOD_DAYS,
    DEFAULT_VIEW_WINDOW_SECONDS,
    VIEW_KINDS,
)
from commerce.instants import utc_text
from commerce.outbound import services as outbound

PURPOSE = "sales_attribution"
ACTOR = "system:attribution"

_DERIVED = ("at_purch", "at_want", "at_held_card", "at_held_touch")

_CREATE = """
CREATE TEMPORARY TABLE at_holders (
    partner_id text NOT NULL, customer_ref text NOT NULL, PRIMARY KEY (partner_id, customer_ref)
) ON COMMIT DROP
"""

#: A cardholder's purchases: authorization and clearing of one transaction id together (at
#: most one of each, by the unique partner, kind and transaction id), at one of a merchant's
#: MIDs, left unmatched by reconciliation (`orphan_transaction`).
_PURCHASES = """
CREATE TEMPORARY TABLE at_purch ON COMMIT DROP AS
SELECT k.partner_id || ':' || k.transaction_id AS pkey, k.partner_id, k.transaction_id,
       k.row_id, k.merchant_id, k.customer_ref, k.amount, k.currency, k.at,
       md5(k.partner_id || ':' || k.customer_ref) AS cardholder
  FROM (SELECT partner_id, transaction_id,
               coalesce(min(id) FILTER (WHERE kind = 'authorized'),
                        min(id) FILTER (WHERE kind = 'cleared')) AS row_id,
               coalesce(min(merchant_id) FILTER (WHERE kind = 'authorized'),
                        min(merchant_id) FILTER (WHERE kind = 'cleared')) AS merchant_id,
               coalesce(min(customer_ref) FILTER (WHERE kind = 'authorized'),
                        min(customer_ref) FILTER (WHERE kind = 'cleared')) AS customer_ref,
               coalesce(min(amount) FILTER (WHERE kind = 'cleared'),
                        min(amount) FILTER (WHERE kind = 'authorized')) AS amount,
               coalesce(min(currency) FILTER (WHERE kind = 'authorized'),
                        min(currency) FILTER (WHERE kind = 'cleared')) AS currency,
               coalesce(min(occurred_at) FILTER (WHERE kind = 'authorized'),
                        min(occurred_at) FILTER (WHERE kind = 'cleared')) AS at
          FROM at_card
         WHERE kind IN ('authorized', 'cleared')
         GROUP BY partner_id, transaction_id) k
 WHERE k.row_id IN (
        SELECT card_transaction_id FROM reconciliation_exceptions
         WHERE type = 'orphan_transaction' AND status <> 'resolved'
           AND card_transaction_id IS NOT NULL)
"""

#: The attributions wanted: each purchase with each touchpoint in its window, and the
#: touchpoint's place among them, from which every model's credit follows. The touchpoints
#: are the cardholder's (through their consent's chat identity) with the same merchant's
#: offers, within the offer's (else the merchant's) window before the purchase; refunds and
#: reversals count within the return period of each touchpoint's offer (else the
#: merchant's).
_WANT = """
CREATE TEMPORARY TABLE at_want ON COMMIT DROP AS
WITH touch AS (
    SELECT p.pkey, p.partner_id, p.transaction_id, p.row_id, p.merchant_id, p.amount,
           p.currency, p.at, p.cardholder,
           t.id AS touchpoint_id, t.offer_id, t.conversation_id, t.kind AS touch_kind,
           t.occurred_at AS touched_at,
           CASE WHEN t.kind = ANY(CAST(:click_kinds AS text[])) THEN 'click' ELSE 'view' END
             || '_' ||
           CASE WHEN w.seconds % 86400 = 0 THEN (w.seconds / 86400) || 'd'
                WHEN w.seconds % 3600 = 0 THEN (w.seconds / 3600) || 'h'
                ELSE (w.seconds / 60) || 'm' END AS win,
           coalesce(o.return_period_days, st.return_period_days, :default_return_days)
             AS return_days
      FROM at_purch p
      JOIN consents cn ON cn.partner_id = p.partner_id AND cn.customer_ref = p.customer_ref
                      AND cn.status = 'granted' AND cn.chat_user_id IS NOT NULL
      JOIN customers cu ON cu.channel = cn.chat_channel AND cu.channel_user_id = cn.chat_user_id
      JOIN conversations cv ON cv.customer_id = cu.id AND cv.merchant_id = p.merchant_id
      JOIN touchpoints t ON t.conversation_id = cv.id
                        AND t.kind = ANY(CAST(:touch_kinds AS text[]))
                        AND t.occurred_at <= p.at
      JOIN offers o ON o.id = t.offer_id
      LEFT JOIN attribution_settings st ON st.merchant_id = p.merchant_id
      CROSS JOIN LATERAL (
            SELECT CASE WHEN t.kind = ANY(CAST(:click_kinds AS text[]))
                        THEN coalesce(o.click_window_seconds, st.click_window_seconds,
                                      :default_click)
                        ELSE coalesce(o.view_window_seconds, st.view_window_seconds,
                                      :default_view) END AS seconds
      ) w
     WHERE t.occurred_at > p.at - make_interval(secs => w.seconds)
), ranked AS (
    -- The n-th of `touches` in time (ties by id): the last touch is n = touches.
    SELECT t.*,
           row_number() OVER (PARTITION BY pkey ORDER BY touched_at, touchpoint_id) AS n,
           count(*) OVER (PARTITION BY pkey) AS touches
      FROM touch t
), refunds AS (
    SELECT partner_id, original_transaction_id AS transaction_id,
           array_agg(occurred_at) AS ats, array_agg(amount) AS amounts
      FROM at_card WHERE kind = 'refunded'
     GROUP BY 1, 2
), reversals AS (
    SELECT partner_id, coalesce(original_transaction_id, transaction_id) AS transaction_id,
           min(occurred_at) AS first_at
      FROM at_card WHERE kind = 'reversed'
     GROUP BY 1, 2
), back AS (
    SELECT r.*,
           coalesce((SELECT sum(x.amount) FROM unnest(f.ats, f.amounts) AS x(at, amount)
                      WHERE x.at <= r.at + make_interval(days => r.return_days)), 0)
             AS refunds,
           coalesce(v.first_at <= r.at + make_interval(days => r.return_days), false)
             AS reversed
      FROM ranked r
      LEFT JOIN refunds f ON f.partner_id = r.partner_id
                         AND f.transaction_id = r.transaction_id
      LEFT JOIN reversals v ON v.partner_id = r.partner_id
                           AND v.transaction_id = r.transaction_id
), want AS (
    SELECT b.merchant_id, b.pkey, b.row_id, b.offer_id, b.conversation_id, b.touchpoint_id,
           b.touch_kind, b.win, b.n AS touch_rank, b.touches, b.amount,
           CAST(least(b.refunds, b.amount) AS bigint) AS refunded,
           b.currency, b.at AS purchased_at, b.touched_at, b.cardholder,
           CASE WHEN b.reversed OR b.refunds >= b.amount THEN 'taken_back' ELSE 'active' END
             AS status
      FROM back b
)
-- Whether the stored attribution differs (or is missing), found before anything is
-- written; and whether it becomes the purchase's active last touch, which is announced.
SELECT w.*,
       s.id IS NULL
       OR (s.card_transaction_id, s."window", s.touch_rank, s.touches, s.amount, s.refunded,
           s.currency, s.purchased_at, s.touched_at, s.status)
          IS DISTINCT FROM (w.row_id, w.win, w.touch_rank, w.touches, w.amount, w.refunded,
                            w.currency, w.purchased_at, w.touched_at, w.status) AS changed,
       w.touch_rank = w.touches AND w.status = 'active'
       AND (s.id IS NULL OR s.touch_rank <> s.touches OR s.status <> 'active') AS announce
  FROM want w
  LEFT JOIN attributions s ON s.purchase_key = w.pkey AND s.touchpoint_id = w.touchpoint_id
"""

_DELETE = """
DELETE FROM attributions a
 WHERE a.cardholder IN (SELECT md5(partner_id || ':' || customer_ref) FROM at_holders)
   AND NOT EXISTS (SELECT 1 FROM at_want w
                    WHERE w.pkey = a.purchase_key AND w.touchpoint_id = a.touchpoint_id)
"""

#: The touchpoints the attributions to write name, held until the commit as the card
#: transactions are (`partnerdata.hold_transactions`): a deletion of either waits, then
#: removes what was written about them (the triggers of migration 0014). An attribution
#: whose card transaction or touchpoint went meanwhile is not written.
_HOLD_TOUCHPOINTS = """
CREATE TEMPORARY TABLE at_held_touch ON COMMIT DROP AS
SELECT id FROM touchpoints WHERE id IN (SELECT touchpoint_id FROM at_want WHERE changed)
   FOR KEY SHARE
"""

#: Two statements, so that each is one hash anti-join (an OR of the two would test every
#: row against the held ones one by one).
_DROP_UNHELD = (
    """
DELETE FROM at_want w
 WHERE w.changed AND NOT EXISTS (SELECT 1 FROM at_held_card h WHERE h.id = w.row_id)
""",
    """
DELETE FROM at_want w
 WHERE w.changed AND NOT EXISTS (SELECT 1 FROM at_held_touch h WHERE h.id = w.touchpoint_id)
""",
)

#: The attributions that are new or differ from the stored ones, and only those, are
#: written: a run over data that did not change writes nothing. ON CONFLICT covers a
#: concurrent run that wrote the same attribution first.
_UPSERT = """
WITH written AS (
    INSERT INTO attributions AS a
           (id, merchant_id, purchase_key, card_transaction_id, offer_id, conversation_id,
            touchpoint_id, touch_kind, "window", touch_rank, touches, amount, refunded,
            currency, purchased_at, touched_at, status, cardholder, created_at, updated_at)
    SELECT 'atr_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 22),
           w.merchant_id, w.pkey, w.row_id, w.offer_id, w.conversation_id, w.touchpoint_id,
           w.touch_kind, w.win, w.touch_rank, w.touches, w.amount, w.refunded, w.currency,
           w.purchased_at, w.touched_at, w.status, w.cardholder, now(), now()
      FROM at_want w
     WHERE w.changed
    ON CONFLICT (purchase_key, touchpoint_id) DO UPDATE
       SET merchant_id = excluded.merchant_id,
           card_transaction_id = excluded.card_transaction_id,
           offer_id = excluded.offer_id, conversation_id = excluded.conversation_id,
           touch_kind = excluded.touch_kind, "window" = excluded."window",
           touch_rank = excluded.touch_rank, touches = excluded.touches,
           amount = excluded.amount, refunded = excluded.refunded,
           currency = excluded.currency, purchased_at = excluded.purchased_at,
           touched_at = excluded.touched_at, status = excluded.status,
           cardholder = excluded.cardholder, updated_at = now()
     WHERE (a.card_transaction_id, a."window", a.touch_rank, a.touches, a.amount, a.refunded,
            a.currency, a.purchased_at, a.touched_at, a.status)
           IS DISTINCT FROM (excluded.card_transaction_id, excluded."window",
                             excluded.touch_rank, excluded.touches, excluded.amount,
                             excluded.refunded, excluded.currency, excluded.purchased_at,
                             excluded.touched_at, excluded.status)
    RETURNING a.id, a.merchant_id, a.purchase_key, a.touchpoint_id, a.offer_id,
              a.conversation_id, a."window", a.amount, a.currency, a.purchased_at
), announced AS (
    -- `attribution.created`: a purchase's new active last touch, at merchants listening.
    SELECT written.* FROM written
      JOIN at_want w ON w.pkey = written.purchase_key
                    AND w.touchpoint_id = written.touchpoint_id
     WHERE w.announce AND written.merchant_id = ANY(CAST(:listening AS text[]))
)
SELECT (SELECT count(*) FROM written) AS written, announced.*
  FROM (SELECT 1) AS one LEFT JOIN announced ON true
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    cardholders: int
    purchases: int
    #: Purchase and touchpoint pairs (rows of `attributions`) wanted.
    attributions: int
    changed: dict[str, int]


def _params() -> dict[str, Any]:
    return {
        "click_kinds": list(CLICK_KINDS),
        "touch_kinds": list(CLICK_KINDS + VIEW_KINDS),
        "default_click": DEFAULT_CLICK_WINDOW_SECONDS,
        "default_view": DEFAULT_VIEW_WINDOW_SECONDS,
        "default_return_days": DEFAULT_RETURN_PERIOD_DAYS,
    }


def _start(session: Session) -> None:
    session.execute(text("SET LOCAL jit = off"))
    for table in ("at_holders", "at_card", *_DERIVED):
        session.execute(text(f"DROP TABLE IF EXISTS pg_temp.{table}"))


def attribute(session: Session, cardholders: Iterable[tuple[str, str]]) -> Outcome:
    """Attribute every purchase of these (partner id, customer ref) cardholders."""
    holders = sorted(set(cardholders))
    _start(session)
    session.execute(text(_CREATE))
    if holders:
        session.execute(
            text(
                "INSERT INTO at_holders SELECT * FROM unnest(CAST(:p AS text[]),"
                " CAST(:c AS text[]))"
            ),
            {"p": [h[0] for h in holders], "c": [h[1] for h in holders]},
        )
    return _run(session, len(holders))


def attribute_period(
    session: Session, start: datetime, end: datetime, *, merchant_id: str | None = None
) -> Outcome:
    """The batch: every cardholder with a purchase at a merchant's MID in the period."""
    _start(session)
    session.execute(text("SET LOCAL statement_timeout = 0"))
    partnerdata.stage_transactions(
        session,
        into="at_holders",
        purpose=PURPOSE,
        actor=ACTOR,
        where=[
            text(
                "card_transactions.merchant_id IS NOT NULL"
                " AND card_transactions.customer_ref IS NOT NULL"
                " AND card_transactions.occurred_at >= :start"
                " AND card_transactions.occurred_at < :end"
                " AND (CAST(:merchant_id AS text) IS NULL"
                "      OR card_transactions.merchant_id = :merchant_id)"
            ).bindparams(start=start, end=end, merchant_id=merchant_id)
        ],
        columns=("partner_id", "customer_ref"),
    )
    holders = session.execute(text("SELECT count(*) FROM at_holders")).scalar_one()
    return _run(session, holders)


def cardholders_of_chat_user(session: Session, channel: str, user_id: str) -> list[tuple[str, str]]:
    """The cardholders whose consent names this chat identity."""
    rows = session.execute(
        text(
            "SELECT partner_id, customer_ref FROM consents"
            " WHERE chat_channel = :channel AND chat_user_id = :user_id"
        ),
        {"channel": channel, "user_id": user_id},
    )
    return [(row[0], row[1]) for row in rows]


def conversation_changed(session: Session, conversation_id: str) -> None:
    """After a touchpoint: queue the cardholders behind the conversation's customer for the
    next drain (commerce/reconciliation/engine.py), which attributes them again."""
    from commerce.reconciliation import engine as reconciliation

    row = session.execute(
        text(
            "SELECT cv.merchant_id, cu.channel, cu.channel_user_id FROM conversations cv"
            " JOIN customers cu ON cu.id = cv.customer_id WHERE cv.id = :id"
        ),
        {"id": conversation_id},
    ).one_or_none()
    if row is None:
        return
    holders = cardholders_of_chat_user(session, row[1], row[2])
    if holders:
        reconciliation.enqueue(session, row[0], cardholders=holders)


def _run(session: Session, holders: int) -> Outcome:
    run = session.execute
    partnerdata.stage_transactions(
        session,
        into="at_card",
        purpose=PURPOSE,
        actor=ACTOR,
        where=[
            text(
                "card_transactions.merchant_id IS NOT NULL"
                " AND (card_transactions.partner_id, card_transactions.customer_ref)"
                "     IN (SELECT partner_id, customer_ref FROM at_holders)"
            )
        ],
    )
    run(text("ANALYZE at_card"))
    purchases = run(text(_PURCHASES)).rowcount
    run(text("ANALYZE at_purch"))
    wanted = run(text(_WANT), _params()).rowcount
    run(text("ANALYZE at_want"))
    deleted = run(text(_DELETE)).rowcount
    partnerdata.hold_transactions(
        session, into="at_held_card", ids="SELECT row_id FROM at_want WHERE changed"
    )
    run(text(_HOLD_TOUCHPOINTS))
    run(text("ANALYZE at_held_card, at_held_touch"))
    for statement in _DROP_UNHELD:
        run(text(statement))
    merchants = run(text("SELECT DISTINCT merchant_id FROM at_purch")).scalars()
    listening = outbound.subscribed_merchants(session, merchants, "attribution.created")
    rows = run(text(_UPSERT), {"listening": sorted(listening)}).all()
    announce(session, [row for row in rows if row.id is not None])
    return Outcome(
        cardholders=holders,
        purchases=purchases,
        attributions=wanted,
        changed={"deleted": deleted, "written": rows[0].written},
    )


def announce(session: Session, rows: Sequence[Any]) -> None:
    """`attribution.created` for each of these new last-touch credits (the upsert returns
    the attributions that became a purchase's active last touch, at merchants with an
    endpoint listening for it)."""
    for row in rows:
        outbound.emit(
            session,
            merchant_id=row.merchant_id,
            event_type="attribution.created",
            data={
                "object": "attribution",
                "id": row.id,
                "model": "last_touch",
                "offer_id": row.offer_id,
                "conversation_id": row.conversation_id,
                "window": row.window,
                "amount": row.amount,
                "currency": row.currency,
                "purchased_at": utc_text(row.purchased_at),
            },
            dedupe_key=f"attribution.created:{row.id}",
        )
