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
- A reversal, or card refunds adding up to the purchase, within the offer's return period
  take the credit back (`taken_back`); a partial refund in the period is kept as `refunded`.

A scope is a set of cardholders, taken whole: every purchase of theirs at any merchant.
Processing a card transaction attributes the cardholders of the card groups it reconciled;
recording a touchpoint, the cardholders behind that chat user; a batch, every cardholder
with a purchase in the period. The same data gives the same rows, and a second run changes
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
from commerce.outbound import services as outbound

PURPOSE = "sales_attribution"
ACTOR = "system:attribution"

_DERIVED = ("at_purch", "at_touch", "at_want", "at_period_holders")

_CREATE = """
CREATE TEMPORARY TABLE at_holders (
    partner_id text NOT NULL, customer_ref text NOT NULL, PRIMARY KEY (partner_id, customer_ref)
) ON COMMIT DROP
"""

#: A cardholder's purchases: authorization and clearing of one transaction id together, at
#: one of a merchant's MIDs, left unmatched by reconciliation (`orphan_transaction`).
_PURCHASES = """
CREATE TEMPORARY TABLE at_purch ON COMMIT DROP AS
SELECT k.partner_id || ':' || k.transaction_id AS pkey, k.partner_id, k.transaction_id,
       coalesce(a.id, c.id) AS row_id, coalesce(a.merchant_id, c.merchant_id) AS merchant_id,
       coalesce(a.customer_ref, c.customer_ref) AS customer_ref,
       coalesce(c.amount, a.amount) AS amount, coalesce(a.currency, c.currency) AS currency,
       coalesce(a.occurred_at, c.occurred_at) AS at,
       md5(k.partner_id || ':' || coalesce(a.customer_ref, c.customer_ref)) AS cardholder
  FROM (SELECT DISTINCT partner_id, transaction_id FROM at_card
         WHERE kind IN ('authorized', 'cleared')) k
  LEFT JOIN at_card a ON a.partner_id = k.partner_id AND a.transaction_id = k.transaction_id
                     AND a.kind = 'authorized'
  LEFT JOIN at_card c ON c.partner_id = k.partner_id AND c.transaction_id = k.transaction_id
                     AND c.kind = 'cleared'
 WHERE coalesce(a.id, c.id) IN (
        SELECT card_transaction_id FROM reconciliation_exceptions
         WHERE type = 'orphan_transaction' AND status <> 'resolved'
           AND card_transaction_id IS NOT NULL)
"""

#: Touchpoints of the cardholder (through their consent's chat identity) with the same
#: merchant's offers, within the offer's (else the merchant's) window before the purchase.
_TOUCHES = """
CREATE TEMPORARY TABLE at_touch ON COMMIT DROP AS
SELECT p.pkey, p.row_id, p.merchant_id, p.amount, p.currency, p.at, p.cardholder,
       t.id AS touchpoint_id, t.offer_id, t.conversation_id, t.kind AS touch_kind,
       t.occurred_at AS touched_at, w.seconds,
       CASE WHEN t.kind = ANY(CAST(:click_kinds AS text[])) THEN 'click' ELSE 'view' END || '_' ||
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
"""

#: The credits each model calls for, with refunds and reversals in the return period.
_WANT = """
CREATE TEMPORARY TABLE at_want ON COMMIT DROP AS
WITH ranked AS (
    SELECT t.*,
           row_number() OVER (PARTITION BY pkey ORDER BY touched_at DESC, touchpoint_id DESC)
             AS latest,
           row_number() OVER (PARTITION BY pkey ORDER BY touched_at, touchpoint_id) AS n,
           count(*) OVER (PARTITION BY pkey) AS touches
      FROM at_touch t
), credits AS (
    SELECT 'last_touch'::text AS model, r.*, 1::numeric AS weight, amount AS share_num,
           1 AS share_den, 0 AS share_prev
      FROM ranked r WHERE latest = 1
    UNION ALL
    SELECT 'first_touch', r.*, 1, amount, 1, 0 FROM ranked r WHERE n = 1
    UNION ALL
    SELECT 'linear', r.*, round(1.0 / touches, 6), amount, touches, n - 1 FROM ranked r
), spans AS (
    SELECT DISTINCT pkey, at, return_days FROM at_touch
), refunds AS (
    SELECT s.pkey, s.return_days, sum(f.amount) AS refunds
      FROM spans s
      JOIN at_card f ON f.kind = 'refunded'
                    AND f.partner_id || ':' || f.original_transaction_id = s.pkey
                    AND f.occurred_at <= s.at + make_interval(days => s.return_days)
     GROUP BY 1, 2
), reversals AS (
    SELECT DISTINCT s.pkey, s.return_days
      FROM spans s
      JOIN at_card f ON f.kind = 'reversed'
                    AND f.partner_id || ':' || coalesce(f.original_transaction_id,
                                                        f.transaction_id) = s.pkey
                    AND f.occurred_at <= s.at + make_interval(days => s.return_days)
), back AS (
    SELECT c.*, coalesce(r.refunds, 0) AS refunds, v.pkey IS NOT NULL AS reversed
      FROM credits c
      LEFT JOIN refunds r ON r.pkey = c.pkey AND r.return_days = c.return_days
      LEFT JOIN reversals v ON v.pkey = c.pkey AND v.return_days = c.return_days
)
SELECT model, merchant_id, pkey, row_id, offer_id, conversation_id, touchpoint_id, touch_kind,
       win, weight, currency, at AS purchased_at, touched_at, cardholder,
       -- Whole minor units: the n-th of k touches gets floor(a*n/k) - floor(a*(n-1)/k).
       (amount * (share_prev + 1) / share_den) - (amount * share_prev / share_den) AS amount,
       (least(refunds, amount) * (share_prev + 1) / share_den)
         - (least(refunds, amount) * share_prev / share_den) AS refunded,
       CASE WHEN reversed OR refunds >= amount THEN 'taken_back' ELSE 'active' END AS status
  FROM back
"""

_DELETE = """
DELETE FROM attributions a
 WHERE a.cardholder IN (SELECT md5(partner_id || ':' || customer_ref) FROM at_holders)
   AND NOT EXISTS (SELECT 1 FROM at_want w
                    WHERE w.pkey = a.purchase_key AND w.model = a.model
                      AND w.touchpoint_id = a.touchpoint_id)
"""

_UPSERT = """
INSERT INTO attributions AS a
       (id, merchant_id, model, purchase_key, card_transaction_id, offer_id, conversation_id,
        touchpoint_id, touch_kind, "window", weight, amount, refunded, currency, purchased_at,
        touched_at, status, cardholder, created_at, updated_at)
SELECT 'atr_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 22),
       merchant_id, model, pkey, row_id, offer_id, conversation_id, touchpoint_id, touch_kind,
       win, weight, amount, refunded, currency, purchased_at, touched_at, status,
       cardholder, now(), now()
  FROM at_want
ON CONFLICT (purchase_key, model, touchpoint_id) DO UPDATE
   SET merchant_id = excluded.merchant_id, card_transaction_id = excluded.card_transaction_id,
       offer_id = excluded.offer_id, conversation_id = excluded.conversation_id,
       touch_kind = excluded.touch_kind, "window" = excluded."window", weight = excluded.weight,
       amount = excluded.amount, refunded = excluded.refunded, currency = excluded.currency,
       purchased_at = excluded.purchased_at, touched_at = excluded.touched_at,
       status = excluded.status, cardholder = excluded.cardholder, updated_at = now()
 WHERE (a.card_transaction_id, a."window", a.weight, a.amount, a.refunded, a.currency,
        a.purchased_at, a.touched_at, a.status)
       IS DISTINCT FROM (excluded.card_transaction_id, excluded."window", excluded.weight,
                         excluded.amount, excluded.refunded, excluded.currency,
                         excluded.purchased_at, excluded.touched_at, excluded.status)
RETURNING a.id, a.merchant_id, a.model, a.status, a.offer_id, a.conversation_id, a."window",
          a.amount, a.refunded, a.currency, a.purchased_at, (a.xmax = 0) AS inserted
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    cardholders: int
    purchases: int
    credits: int
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
    session.execute(text(_CREATE))


def attribute(session: Session, cardholders: Iterable[tuple[str, str]]) -> Outcome:
    """Attribute every purchase of these (partner id, customer ref) cardholders."""
    holders = sorted(set(cardholders))
    _start(session)
    if holders:
        session.execute(
            text(
                "INSERT INTO at_holders SELECT * FROM unnest(CAST(:p AS text[]),"
                " CAST(:c AS text[])) ON CONFLICT DO NOTHING"
            ),
            {"p": [h[0] for h in holders], "c": [h[1] for h in holders]},
        )
    return _run(session)


def attribute_period(
    session: Session, start: datetime, end: datetime, *, merchant_id: str | None = None
) -> Outcome:
    """The batch: every cardholder with a purchase at a merchant's MID in the period."""
    _start(session)
    session.execute(text("SET LOCAL statement_timeout = 0"))
    partnerdata.stage_transactions(
        session,
        into="at_period_holders",
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
    session.execute(
        text("INSERT INTO at_holders SELECT partner_id, customer_ref FROM at_period_holders")
    )
    return _run(session)


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


def _run(session: Session) -> Outcome:
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
    run(text(_PURCHASES))
    run(text("ANALYZE at_purch"))
    params = _params()
    run(text(_TOUCHES), params)
    run(text(_WANT))
    deleted = run(text(_DELETE)).rowcount
    written = run(text(_UPSERT)).all()
    announce(session, [row for row in written if row.inserted])
    counts = run(
        text(
            "SELECT (SELECT count(*) FROM at_holders), (SELECT count(*) FROM at_purch),"
            " (SELECT count(*) FROM at_want)"
        )
    ).one()
    return Outcome(
        cardholders=counts[0],
        purchases=counts[1],
        credits=counts[2],
        changed={"deleted": deleted, "written": len(written)},
    )


def announce(session: Session, rows: Sequence[Any]) -> None:
    """`attribution.created` for each new credit under the default model (last touch)."""
    rows = [r for r in rows if r.model == "last_touch" and r.status == "active"]
    if not rows:
        return
    listening = outbound.subscribed_merchants(
        session, (row.merchant_id for row in rows), "attribution.created"
    )
    for row in rows:
        if row.merchant_id not in listening:
            continue
        outbound.emit(
            session,
            merchant_id=row.merchant_id,
            event_type="attribution.created",
            data={
                "object": "attribution",
                "id": row.id,
                "model": row.model,
                "offer_id": row.offer_id,
                "conversation_id": row.conversation_id,
                "window": row.window,
                "amount": row.amount,
                "currency": row.currency,
                "purchased_at": row.purchased_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
            dedupe_key=f"attribution.created:{row.id}",
        )
