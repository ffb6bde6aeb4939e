"""The reconciliation engine: set-based SQL over a scope, the same for both ways of running.

docs/RECONCILIATION.md states the rules; this module is their one implementation.

A *scope* names sales and card groups (a merchant's sales and card purchases that share the
card's last four digits). `reconcile` gathers the scope into temporary tables, computes the
matches and exceptions the rules call for, and makes the stored rows of the scope equal to
them: new ones inserted, changed ones updated, vanished matches deleted and vanished
exceptions resolved. Rows already right are not touched, so a second run changes nothing.

- The continuous path (`Scope.items`) is the sales and card groups that processed events
  queued (`enqueue`), reconciled together by the worker's `drain` a moment later.
- A batch (`Scope.period`) is every sale created in the period and every card group with a
  sale or a purchase in it.

Matching never looks outside a card group and a group is always taken whole, so both give
the same rows on the same data.

Concurrency: the continuous path takes a transaction-scoped advisory lock for each card
group's stripe (after a shared lock on the merchant); a batch takes the merchant's lock
exclusively. The last writer of a group therefore always reads what the one before it
committed. Groups share GROUP_LOCK_STRIPES locks per merchant, so a scope of any size holds
a bounded number of locks: PostgreSQL's lock table is shared by every session
(max_locks_per_transaction x max_connections entries), and a drain of thousands of groups
with a lock each could fill it for everyone.

The merchant's lock is `partnerdata.lock_merchants`: a deletion of card data at the
merchant (a consent ended) takes it exclusively too, so it waits for the runs in progress
and then removes what they wrote, and a run never writes about a card transaction deleted
after it read it.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from commerce import partnerdata
from commerce.cards.scrub import mask
from commerce.db import advisory_lock_key, after_commit, utcnow
from commerce.instants import utc_text
from commerce.outbound import services as outbound
from commerce.reconciliation.models import (
    DEFAULT_AMOUNT_TOLERANCE,
    DEFAULT_CLEARING_DAYS,
    DEFAULT_TIME_WINDOW_SECONDS,
)

log = logging.getLogger(__name__)

#: A batch's memory for each join and sort (set for its transaction only).
BATCH_WORK_MEM = "256MB"

#: Card data is linked to a merchant's sales under this purpose, and no other.
PURPOSE = "sales_attribution"
ACTOR = "system:reconciliation"


@dataclass(frozen=True)
class Scope:
    """What to reconcile. Build with `Scope.items` or `Scope.period`."""

    merchant_id: str | None = None
    sale_ids: tuple[str, ...] = ()
    #: Card groups of `merchant_id`, by last four digits (continuous path).
    last4s: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    #: A batch's merchants (None: every merchant).
    merchant_ids: tuple[str, ...] | None = None
    #: "Now" for rules that depend on time (missing_clearing); default: the current time.
    as_of: datetime | None = None
    #: Extra (merchant_id, last4) groups to include (a sale that moved between groups).
    groups: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def items(
        cls,
        merchant_id: str,
        *,
        sale_ids: Iterable[str] = (),
        last4s: Iterable[str | None] = (),
        as_of: datetime | None = None,
    ) -> Scope:
        return cls(
            merchant_id=merchant_id,
            sale_ids=tuple(sorted(set(sale_ids))),
            last4s=tuple(sorted({x for x in last4s if x})),
            as_of=as_of,
        )

    @classmethod
    def period(
        cls,
        start: datetime,
        end: datetime,
        *,
        merchant_id: str | None = None,
        merchant_ids: Iterable[str] | None = None,
        as_of: datetime | None = None,
    ) -> Scope:
        """Every sale created in [start, end) and every card group with a sale or a purchase
        in it, of one merchant, of the merchants named, or of every merchant."""
        if merchant_id is not None:
            merchant_ids = [*(merchant_ids or ()), merchant_id]
        chosen = None if merchant_ids is None else tuple(sorted(set(merchant_ids)))
        return cls(merchant_ids=chosen, start=start, end=end, as_of=as_of)

    @property
    def is_period(self) -> bool:
        return self.start is not None


#: Advisory locks a merchant's card groups share. Two scopes whose groups share a stripe wait
#: for each other even when their groups differ: a little less concurrency, never a wrong
#: result, and a scope holds at most this many group locks.
GROUP_LOCK_STRIPES = 64


def _group_lock_key(merchant_id: str, last4: str) -> int:
    stripe = zlib.crc32(last4.encode()) % GROUP_LOCK_STRIPES
    return advisory_lock_key("reconciliation", merchant_id, "stripe", str(stripe))


def _lock(session: Session, scope: Scope) -> None:
    if scope.is_period:
        merchants: Sequence[str]
        if scope.merchant_ids is not None:
            merchants = scope.merchant_ids
        else:
            merchants = list(session.scalars(text("SELECT id FROM merchants")))
        partnerdata.lock_merchants(session, merchants, shared=False)
        return
    assert scope.merchant_id is not None
    partnerdata.lock_merchants(session, [scope.merchant_id], shared=True)
    # All the groups in one statement, in key order: two scopes never wait in a cycle.
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"
        ),
        {"keys": sorted({_group_lock_key(scope.merchant_id, last4) for last4 in scope.last4s})},
    )


# --------------------------------------------------------------------------------------------
# 1. The scope, gathered into temporary tables (dropped at commit).
# --------------------------------------------------------------------------------------------

#: Tables made by CREATE ... AS during a reconciliation.
_DERIVED = (
    "rc_matched",
    "rc_want_match",
    "rc_want_exc",
    "rc_refund_pairs",
    "rc_unmatched",
    "rc_duplicate_of",
    "rc_charges",
    "rc_new_groups",
    "rc_card_more",
)
_TEMP = (
    "rc_groups",
    "rc_scope_sales",
    "rc_sales",
    "rc_card",
    "rc_purch",
    "rc_match",
    "rc_srefund",
    "rc_cand",
)

#: The columns of a card transaction reconciliation uses (staged, nothing more).
CARD_COLUMNS = (
    "id",
    "partner_id",
    "kind",
    "transaction_id",
    "original_transaction_id",
    "customer_ref",
    "card_ref_id",
    "card_brand",
    "card_last4",
    "mid",
    "merchant_id",
    "amount",
    "currency",
    "occurred_at",
)

_GROUPS_OF_ITEMS = """
INSERT INTO rc_groups (merchant_id, last4)
SELECT :merchant_id, x FROM unnest(CAST(:last4s AS text[])) AS x
UNION
SELECT merchant_id, card_last4 FROM sales
 WHERE id = ANY(CAST(:sale_ids AS text[])) AND card_last4 IS NOT NULL
"""

_SCOPE_SALES_OF_ITEMS = """
INSERT INTO rc_scope_sales (id)
SELECT id FROM sales WHERE id = ANY(CAST(:sale_ids AS text[]))
"""

#: The card groups of the sales created in the period (of the merchant, if the batch is one
#: merchant's).
_GROUPS_OF_PERIOD_SALES = """
INSERT INTO rc_groups (merchant_id, last4)
SELECT DISTINCT s.merchant_id, s.card_last4 FROM sales s
 WHERE s.card_last4 IS NOT NULL
   AND s.created_at >= :start AND s.created_at < :end
   AND (CAST(:merchant_ids AS text[]) IS NULL
        OR s.merchant_id = ANY(CAST(:merchant_ids AS text[])))
"""

#: A batch stages, in one read, the card transactions of the groups of its sales and every
#: card transaction of the period; the groups of the latter that no sale brought are added,
#: and their transactions outside the period read next (`_CARD_OF_NEW_GROUPS`).
#: (The groups are the batch's merchants' groups: the merchants bound every row read.)
_CARD_OF_PERIOD = """
card_transactions.merchant_id IS NOT NULL AND card_transactions.card_last4 IS NOT NULL
AND (CAST(:merchant_ids AS text[]) IS NULL
     OR card_transactions.merchant_id = ANY(CAST(:merchant_ids AS text[])))
AND ((card_transactions.merchant_id, card_transactions.card_last4)
         IN (SELECT merchant_id, last4 FROM rc_groups)
     OR (card_transactions.occurred_at >= :start AND card_transactions.occurred_at < :end))
"""

_NEW_GROUPS = """
CREATE TEMPORARY TABLE rc_new_groups ON COMMIT DROP AS
SELECT merchant_id, card_last4 AS last4 FROM rc_card
 WHERE (merchant_id, card_last4) NOT IN (SELECT merchant_id, last4 FROM rc_groups)
 GROUP BY merchant_id, card_last4
"""

_CARD_OF_NEW_GROUPS = """
(card_transactions.merchant_id, card_transactions.card_last4)
    IN (SELECT merchant_id, last4 FROM rc_new_groups)
AND NOT (card_transactions.occurred_at >= :start AND card_transactions.occurred_at < :end)
"""

_CARD_OF_GROUPS = """
(card_transactions.merchant_id, card_transactions.card_last4)
    IN (SELECT merchant_id, last4 FROM rc_groups)
"""

#: Every sale of the scope: those named, and every sale of every card group, whole.
_SALES = """
INSERT INTO rc_sales
SELECT s.id, s.merchant_id, s.amount, s.currency, s.created_at, s.card_last4,
       lower(s.card_brand), s.card_ref_id, s.amount_captured, s.state, s.payment_intent_id,
       coalesce(st.amount_tolerance, :default_tolerance),
       make_interval(secs => coalesce(st.time_window_seconds, :default_window)),
       coalesce(st.clearing_days, :default_clearing_days)
  FROM sales s
  LEFT JOIN reconciliation_settings st ON st.merchant_id = s.merchant_id
 WHERE {scope}
"""

_SALES_OF_ITEMS = """
s.id IN (SELECT id FROM rc_scope_sales
          UNION
         SELECT g.id FROM sales g
           JOIN rc_groups r ON g.merchant_id = r.merchant_id AND g.card_last4 = r.last4)
"""

#: A batch reads the sales table once: the period's sales, and those of its card groups.
_SALES_OF_PERIOD = """
(CAST(:merchant_ids AS text[]) IS NULL OR s.merchant_id = ANY(CAST(:merchant_ids AS text[])))
AND ((s.created_at >= :start AND s.created_at < :end)
     OR (s.merchant_id, s.card_last4) IN (SELECT merchant_id, last4 FROM rc_groups))
"""

#: Stripe's charges of each sale: its distinct charge ids of `payment_succeeded` events
#: (one event per sale, kind and id); a PaymentIntent-level fact without a charge id counts
#: as one charge only when no charge id is known. Sales without a charge have no row.
_CHARGES = """
CREATE TEMPORARY TABLE rc_charges ON COMMIT DROP AS
SELECT s.id AS sale_id,
       CASE WHEN count(*) FILTER (WHERE e.source_ref <> coalesce(s.payment_intent_id, '')) > 0
            THEN count(*) FILTER (WHERE e.source_ref <> coalesce(s.payment_intent_id, ''))
            ELSE count(*) END AS n_charges
  FROM rc_sales s JOIN sale_events e ON e.sale_id = s.id
 WHERE e.kind = 'payment_succeeded' AND e.source = 'stripe'
 GROUP BY s.id
"""

#: Card purchases: authorization and clearing of one (partner, transaction id), together.
_PURCHASES = """
INSERT INTO rc_purch
SELECT coalesce(a.partner_id, c.partner_id) || ':' || coalesce(a.transaction_id, c.transaction_id),
       coalesce(a.partner_id, c.partner_id), coalesce(a.transaction_id, c.transaction_id),
       coalesce(a.id, c.id), coalesce(a.merchant_id, c.merchant_id),
       coalesce(a.card_last4, c.card_last4), lower(coalesce(a.card_brand, c.card_brand)),
       coalesce(a.card_ref_id, c.card_ref_id), coalesce(a.mid, c.mid),
       coalesce(a.amount, c.amount), coalesce(a.currency, c.currency),
       coalesce(a.occurred_at, c.occurred_at),
       a.id IS NOT NULL, c.id IS NOT NULL, c.amount, coalesce(c.amount, a.amount),
       r.partner_id IS NOT NULL,
       coalesce(st.clearing_days, :default_clearing_days)
  FROM (SELECT * FROM rc_card WHERE kind = 'authorized') a
  FULL JOIN (SELECT * FROM rc_card WHERE kind = 'cleared') c
         ON c.partner_id = a.partner_id AND c.transaction_id = a.transaction_id
  LEFT JOIN (SELECT DISTINCT partner_id,
                    coalesce(original_transaction_id, transaction_id) AS transaction_id
               FROM rc_card WHERE kind = 'reversed') r
         ON r.partner_id = coalesce(a.partner_id, c.partner_id)
        AND r.transaction_id = coalesce(a.transaction_id, c.transaction_id)
  LEFT JOIN reconciliation_settings st
         ON st.merchant_id = coalesce(a.merchant_id, c.merchant_id)
"""

#: Stripe's counted refunds of the sales in scope: succeeded, and not later reported failed.
_STRIPE_REFUNDS = """
INSERT INTO rc_srefund
SELECT e.sale_id, e.source_ref, e.amount, e.occurred_at
  FROM sale_events e JOIN rc_sales s ON s.id = e.sale_id
 WHERE e.kind = 'refund_succeeded' AND e.amount IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM sale_events f
                    WHERE f.sale_id = e.sale_id AND f.kind = 'refund_failed'
                      AND f.source_ref = e.source_ref)
"""

_CREATE_TEMP = """
CREATE TEMPORARY TABLE rc_groups (
    merchant_id text NOT NULL, last4 text NOT NULL
) ON COMMIT DROP;
CREATE TEMPORARY TABLE rc_scope_sales (id text NOT NULL) ON COMMIT DROP;
CREATE TEMPORARY TABLE rc_sales (
    id text NOT NULL, merchant_id text, amount bigint, currency text,
    created_at timestamptz, last4 text, brand text, card_ref_id text,
    amount_captured bigint, state text, payment_intent_id text,
    tol bigint, win interval, clearing_days int
) ON COMMIT DROP;
CREATE TEMPORARY TABLE rc_purch (
    pkey text NOT NULL, partner_id text, transaction_id text, row_id text,
    merchant_id text, last4 text, brand text, card_ref_id text, mid text,
    amount bigint, currency text, at timestamptz,
    authorized bool, cleared bool, cleared_amount bigint, final_amount bigint,
    reversed bool, clearing_days int
) ON COMMIT DROP;
CREATE TEMPORARY TABLE rc_match (
    sale_id text NOT NULL, pkey text NOT NULL, rule text, confidence numeric(3,2)
) ON COMMIT DROP;
CREATE TEMPORARY TABLE rc_srefund (
    sale_id text, refund_id text, amount bigint, occurred_at timestamptz
) ON COMMIT DROP;
"""

# --------------------------------------------------------------------------------------------
# 2. Card purchases to sales: three passes, each a greedy one-to-one assignment.
# --------------------------------------------------------------------------------------------

#: Every candidate pair, once, with the first pass whose condition it meets (the conditions
#: widen from pass to pass: exact, then within the tolerance, then any amount or currency).
_CANDIDATES = """
CREATE TEMPORARY TABLE rc_cand ON COMMIT DROP AS
SELECT s.id AS sale_id, p.pkey,
       abs(extract(epoch FROM p.at - s.created_at)) AS dt,
       abs(p.amount - s.amount) AS da,
       CASE WHEN p.currency = s.currency AND p.amount = s.amount THEN 1
            WHEN p.currency = s.currency AND abs(p.amount - s.amount) <= s.tol THEN 2
            ELSE 3 END AS pass,
       s.card_ref_id IS NOT NULL AND s.card_ref_id = p.card_ref_id AS same_card
  FROM rc_purch p
  JOIN rc_sales s
    ON s.merchant_id = p.merchant_id AND s.last4 = p.last4
   AND p.at BETWEEN s.created_at - s.win AND s.created_at + s.win
   AND (s.brand IS NULL OR p.brand IS NULL OR s.brand = p.brand)
 WHERE NOT p.reversed
"""

#: The order (time apart, amount apart, sale id, purchase key; ids compared byte by byte,
#: whatever the database's collation) is total, so taking every
#: pair of the pass that is the best for both of its sides, again and again until none is
#: left, gives the greedy one-to-one assignment in that order. The pairs whose sale or
#: purchase a round took leave with it, whatever their pass; the count taken is returned.
_TAKE_BEST = """
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY sale_id COLLATE "C"
                                 ORDER BY dt, da, pkey COLLATE "C") AS by_sale,
              row_number() OVER (PARTITION BY pkey COLLATE "C"
                                 ORDER BY dt, da, sale_id COLLATE "C") AS by_purchase
      FROM rc_cand WHERE pass <= :pass
), taken AS (
    INSERT INTO rc_match (sale_id, pkey, rule, confidence)
    SELECT sale_id, pkey, :rule, {confidence}
      FROM ranked WHERE by_sale = 1 AND by_purchase = 1
    RETURNING sale_id, pkey
), sales_taken AS (
    DELETE FROM rc_cand c USING taken t WHERE c.sale_id = t.sale_id
), purchases_taken AS (
    DELETE FROM rc_cand c USING taken t WHERE c.pkey = t.pkey
)
SELECT count(*) FROM taken
"""

#: The passes in order: rule and confidence.
PASSES: tuple[tuple[str, str], ...] = (
    # Exact: same currency and amount; surer when the card reference is the same card.
    ("card_exact", "CASE WHEN same_card THEN 1.00 ELSE 0.95 END"),
    # Same currency, amounts within the merchant's tolerance.
    ("card_tolerance", "0.80"),
    # Any amount or currency (it explains amount and currency mismatches).
    ("card_time", "0.50"),
)

# --------------------------------------------------------------------------------------------
# 3. What the rules call for: matches and exceptions.
# --------------------------------------------------------------------------------------------

#: Each matched purchase beside its sale: what the stored match and the exceptions about it
#: are made of.
_MATCHED = """
CREATE TEMPORARY TABLE rc_matched ON COMMIT DROP AS
SELECT m.sale_id, m.pkey, m.rule, m.confidence,
       s.merchant_id, s.amount AS sale_amount, s.currency AS sale_currency,
       s.created_at AS sale_at, s.card_ref_id AS sale_card_ref_id, s.amount_captured,
       s.state, s.tol, s.win, s.brand AS sale_brand,
       p.row_id, p.mid, p.last4, p.brand, p.card_ref_id, p.amount, p.currency, p.at,
       p.cleared, p.cleared_amount, p.final_amount
  FROM rc_match m JOIN rc_sales s ON s.id = m.sale_id JOIN rc_purch p ON p.pkey = m.pkey
"""

#: The matches stored: card purchases and card refunds. Stripe's charges and refunds are
#: matched by their own ids and follow from the sale's events alone, so they are read from
#: the events (`MATCHES`), not stored.
_WANT_MATCHES = """
CREATE TEMPORARY TABLE rc_want_match ON COMMIT DROP AS
SELECT w.*, t.sale_id IS NOT NULL AS stored,
       -- not stored yet, or stored with another rule, fields or amounts
       t.sale_id IS NULL
       OR (t.card_transaction_id, t.rule, t.fields, t.confidence, t.amount, t.currency)
          IS DISTINCT FROM (w.card_transaction_id, w.rule, w.fields, w.confidence, w.amount,
                            w.currency) AS write
  FROM (
-- Card purchases, by the pass that matched them.
SELECT m.merchant_id, m.sale_id, 'card_purchase'::text AS kind, m.pkey AS source_key,
       m.row_id AS card_transaction_id, m.rule,
       jsonb_build_object(
           'mid', m.mid, 'last4', m.last4, 'brand', m.brand,
           'card_ref', CASE WHEN m.sale_card_ref_id = m.card_ref_id THEN 'same' END,
           'amount', jsonb_build_object('sale', m.sale_amount, 'card', m.amount),
           'currency', jsonb_build_object('sale', m.sale_currency, 'card', m.currency),
           'seconds_apart', round(extract(epoch FROM m.at - m.sale_at))::bigint) AS fields,
       m.confidence, m.amount, m.currency
  FROM rc_matched m
UNION ALL
-- Card refunds of a matched purchase, paired with Stripe refunds of the same amount.
SELECT merchant_id, sale_id, 'card_refund', pkey, row_id, 'refund_amount',
       jsonb_build_object('refund_id', refund_id, 'amount', amount), 0.90, amount, currency
  FROM rc_refund_pairs WHERE refund_id IS NOT NULL
  ) w
  LEFT JOIN reconciliation_matches t
    ON t.sale_id = w.sale_id AND t.kind = w.kind AND t.source_key = w.source_key
"""

#: Every match, as the API and reports read them: the stored card matches, and the Stripe
#: matches the sales' own events imply (rules `payment_intent` and `refund_id`, confidence
#: 1.00): each charge of the sale (distinct charge ids of its `payment_succeeded` events; a
#: PaymentIntent-level fact counts only when no charge id is known), and each succeeded
#: refund not later reported failed. A match from events is as old as its event's arrival.
#: Filter it from outside (`SELECT ... FROM (MATCHES) m WHERE m.sale_id = ...`).
MATCHES = """
SELECT t.merchant_id, t.sale_id, t.kind, t.source_key, t.card_transaction_id, t.rule,
       t.fields, t.confidence, t.amount, t.currency, t.created_at
  FROM reconciliation_matches t
UNION ALL
SELECT s.merchant_id, s.id, 'stripe_charge', e.source_ref, NULL, 'payment_intent',
       jsonb_build_object('payment_intent_id', s.payment_intent_id, 'charge_id', e.source_ref),
       1.00, s.amount_captured, s.currency, e.recorded_at
  FROM sales s
  JOIN sale_events e
    ON e.sale_id = s.id AND e.kind = 'payment_succeeded' AND e.source = 'stripe'
 WHERE e.source_ref <> coalesce(s.payment_intent_id, '')
    OR NOT EXISTS (SELECT 1 FROM sale_events f
                    WHERE f.sale_id = s.id AND f.kind = 'payment_succeeded'
                      AND f.source = 'stripe'
                      AND f.source_ref <> coalesce(s.payment_intent_id, ''))
UNION ALL
SELECT s.merchant_id, s.id, 'stripe_refund', e.source_ref, NULL, 'refund_id',
       jsonb_build_object('refund_id', e.source_ref), 1.00, e.amount, s.currency,
       e.recorded_at
  FROM sales s
  JOIN sale_events e ON e.sale_id = s.id AND e.kind = 'refund_succeeded'
 WHERE e.amount IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM sale_events f
                    WHERE f.sale_id = e.sale_id AND f.kind = 'refund_failed'
                      AND f.source_ref = e.source_ref)
"""

#: Card refunds of matched purchases, each paired (or not) with a Stripe refund of the sale:
#: the n-th card refund of an amount with the n-th Stripe refund of that amount.
_REFUND_PAIRS = """
CREATE TEMPORARY TABLE rc_refund_pairs ON COMMIT DROP AS
WITH card AS (
    SELECT m.merchant_id, m.sale_id, r.partner_id || ':' || r.transaction_id AS pkey,
           r.id AS row_id, r.amount, r.currency, r.occurred_at,
           row_number() OVER (PARTITION BY m.sale_id, r.amount
                              ORDER BY r.occurred_at, r.transaction_id) AS n
      FROM rc_card r
      JOIN rc_matched m ON m.pkey = r.partner_id || ':' || r.original_transaction_id
     WHERE r.kind = 'refunded'
), stripe AS (
    SELECT sale_id, refund_id, amount,
           row_number() OVER (PARTITION BY sale_id, amount ORDER BY occurred_at, refund_id) AS n
      FROM rc_srefund
)
SELECT card.*, stripe.refund_id
  FROM card LEFT JOIN stripe
    ON stripe.sale_id = card.sale_id AND stripe.amount = card.amount AND stripe.n = card.n
"""

#: Purchases no pass matched (reversed ones moved no money and are left out).
_UNMATCHED = """
CREATE TEMPORARY TABLE rc_unmatched ON COMMIT DROP AS
SELECT p.* FROM rc_purch p
 WHERE NOT p.reversed AND p.merchant_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM rc_match m WHERE m.pkey = p.pkey)
"""

#: An unmatched purchase that would have matched a sale exactly, had that sale not been
#: matched already, duplicates that sale's purchase: the closest such sale, by time then id.
#: (A matched purchase has the last four digits of its sale: the candidates joined on them.)
_DUPLICATE_OF = """
CREATE TEMPORARY TABLE rc_duplicate_of ON COMMIT DROP AS
SELECT DISTINCT ON (p.pkey) p.pkey, m.sale_id, m.pkey AS matched
  FROM rc_unmatched p
  JOIN rc_matched m
    ON m.merchant_id = p.merchant_id AND m.last4 = p.last4
   AND m.sale_currency = p.currency AND m.sale_amount = p.amount
   AND p.at BETWEEN m.sale_at - m.win AND m.sale_at + m.win
   AND (m.sale_brand IS NULL OR p.brand IS NULL OR m.sale_brand = p.brand)
 ORDER BY p.pkey, abs(extract(epoch FROM p.at - m.sale_at)), m.sale_id
"""

_WANT_EXCEPTIONS = """
CREATE TEMPORARY TABLE rc_want_exc ON COMMIT DROP AS
SELECT w.*, t.id AS stored_id, t.status AS stored_status,
       -- found for the first time, found again after it was resolved (it opens again), or
       -- found with other values
       t.id IS NULL OR t.status = 'resolved'
       OR (t.sale_id, t.card_transaction_id, t.fields, t.opened_at)
          IS DISTINCT FROM (w.sale_id, w.card_transaction_id, w.fields, w.opened_at) AS write
  FROM (
-- Stripe captured another amount than the sale's.
SELECT s.merchant_id, 'amount_mismatch'::text AS type,
       'sale:' || s.id || '\\:stripe' AS subject_key,
       s.id AS sale_id, NULL::text AS card_transaction_id,
       jsonb_build_object('amount', jsonb_build_object('sale', s.amount,
                                                       'stripe', s.amount_captured)) AS fields,
       s.created_at AS opened_at
  FROM rc_sales s JOIN rc_charges c ON c.sale_id = s.id
 WHERE abs(s.amount_captured - s.amount) > s.tol
UNION ALL
-- Stripe charged the sale more than once (several charge ids: the PaymentIntent-level
-- fact does not count then).
SELECT s.merchant_id, 'duplicate_charge', 'sale:' || s.id || '\\:stripe', s.id, NULL,
       jsonb_build_object('charges', jsonb_build_object('expected', 1, 'stripe', c.n_charges),
                          'charge_ids',
                          (SELECT to_jsonb(array_agg(e.source_ref ORDER BY e.source_ref))
                             FROM sale_events e
                            WHERE e.sale_id = s.id AND e.kind = 'payment_succeeded'
                              AND e.source = 'stripe'
                              AND e.source_ref <> coalesce(s.payment_intent_id, ''))),
       s.created_at
  FROM rc_sales s JOIN rc_charges c ON c.sale_id = s.id WHERE c.n_charges > 1
UNION ALL
-- The sale's dispute is open.
SELECT s.merchant_id, 'disputed', 'sale:' || s.id || '\\:stripe', s.id, NULL,
       jsonb_build_object('state', jsonb_build_object('expected', 'paid', 'stripe', s.state)),
       s.created_at
  FROM rc_sales s WHERE s.state = 'disputed'
UNION ALL
-- A matched purchase in another currency.
SELECT m.merchant_id, 'currency_mismatch', 'sale:' || m.sale_id || '\\:card', m.sale_id,
       m.row_id,
       jsonb_build_object('currency', jsonb_build_object('sale', m.sale_currency,
                                                         'card', m.currency),
                          'amount', jsonb_build_object('sale', m.sale_amount, 'card', m.amount),
                          'transaction', m.pkey),
       m.sale_at
  FROM rc_matched m
 WHERE m.currency <> m.sale_currency
UNION ALL
-- A matched purchase whose final amount is not the sale's final amount.
SELECT m.merchant_id, 'amount_mismatch', 'sale:' || m.sale_id || '\\:card', m.sale_id,
       m.row_id,
       jsonb_build_object('amount', jsonb_build_object(
                              'sale', CASE WHEN m.amount_captured > 0 THEN m.amount_captured
                                           ELSE m.sale_amount END,
                              'card', m.final_amount),
                          'transaction', m.pkey),
       m.sale_at
  FROM rc_matched m
 WHERE m.currency = m.sale_currency
   AND abs(m.final_amount - CASE WHEN m.amount_captured > 0 THEN m.amount_captured
                                 ELSE m.sale_amount END) > m.tol
UNION ALL
-- The bank says the money moved; Stripe reports no capture.
SELECT m.merchant_id, 'missing_payment', 'sale:' || m.sale_id, m.sale_id, m.row_id,
       jsonb_build_object('captured', jsonb_build_object('stripe', m.amount_captured,
                                                         'card', m.cleared_amount),
                          'transaction', m.pkey),
       m.sale_at
  FROM rc_matched m
 WHERE m.cleared AND m.amount_captured = 0
UNION ALL
-- An authorization that never cleared.
SELECT p.merchant_id, 'missing_clearing', 'txn:' || p.pkey, m.sale_id, p.row_id,
       jsonb_build_object('cleared', jsonb_build_object('expected', true, 'card', false),
                          'authorized_at', p.at, 'clearing_days', p.clearing_days,
                          'amount', p.amount, 'currency', p.currency),
       p.at
  FROM rc_purch p LEFT JOIN rc_match m ON m.pkey = p.pkey
 WHERE p.authorized AND NOT p.cleared AND NOT p.reversed
   AND p.at < CAST(:as_of AS timestamptz) - make_interval(days => p.clearing_days)
UNION ALL
-- Unmatched purchases: a duplicate of a matched one, or a purchase made outside the chat.
SELECT p.merchant_id,
       CASE WHEN d.sale_id IS NOT NULL THEN 'duplicate_charge' ELSE 'orphan_transaction' END,
       'txn:' || p.pkey, d.sale_id, p.row_id,
       CASE WHEN d.sale_id IS NOT NULL
            THEN jsonb_build_object('transaction', jsonb_build_object(
                                        'matched', d.matched, 'duplicate', p.pkey),
                                    'amount', p.amount, 'currency', p.currency)
            ELSE jsonb_build_object('sale', jsonb_build_object('expected', true, 'found', false),
                                    'mid', p.mid, 'amount', p.amount, 'currency', p.currency)
       END,
       p.at
  FROM rc_unmatched p LEFT JOIN rc_duplicate_of d ON d.pkey = p.pkey
UNION ALL
-- A card refund with no Stripe refund of that amount on the sale.
SELECT merchant_id, 'refund_mismatch', 'txn:' || pkey, sale_id, row_id,
       jsonb_build_object('refund', jsonb_build_object('card', amount, 'stripe', NULL),
                          'currency', currency),
       occurred_at
  FROM rc_refund_pairs WHERE refund_id IS NULL
UNION ALL
-- A chargeback on a matched purchase whose sale has no dispute at Stripe.
SELECT m.merchant_id, 'disputed', 'txn:' || r.partner_id || ':' || r.transaction_id,
       m.sale_id, r.id,
       jsonb_build_object('state', jsonb_build_object('card', 'chargeback', 'stripe', m.state),
                          'amount', r.amount, 'currency', r.currency),
       r.occurred_at
  FROM rc_card r
  JOIN rc_matched m ON m.pkey = r.partner_id || ':' || r.original_transaction_id
 WHERE r.kind = 'chargeback' AND m.state NOT IN ('disputed', 'dispute_won', 'dispute_lost')
  ) w
  LEFT JOIN reconciliation_exceptions t
    ON t.merchant_id = w.merchant_id AND t.type = w.type AND t.subject_key = w.subject_key
"""

# --------------------------------------------------------------------------------------------
# 4. Make the stored rows of the scope equal to what the rules call for.
# --------------------------------------------------------------------------------------------

_DELETE_MATCHES = """
DELETE FROM reconciliation_matches t
 WHERE t.sale_id IN (SELECT id FROM rc_sales)
   AND NOT EXISTS (SELECT 1 FROM rc_want_match w
                    WHERE w.sale_id = t.sale_id AND w.kind = t.kind
                      AND w.source_key = t.source_key)
"""

_UPDATE_MATCHES = """
UPDATE reconciliation_matches t
   SET card_transaction_id = w.card_transaction_id, rule = w.rule, fields = w.fields,
       confidence = w.confidence, amount = w.amount, currency = w.currency
  FROM rc_want_match w
 WHERE w.write AND w.stored
   AND t.sale_id = w.sale_id AND t.kind = w.kind AND t.source_key = w.source_key
"""

_INSERT_MATCHES = """
INSERT INTO reconciliation_matches
       (merchant_id, sale_id, kind, source_key, card_transaction_id, rule, fields, confidence,
        amount, currency, created_at)
SELECT merchant_id, sale_id, kind, source_key, card_transaction_id, rule, fields, confidence,
       amount, currency, now()
  FROM rc_want_match w
 WHERE w.write AND NOT w.stored
"""

#: Exceptions of the scope that the rules no longer call for are resolved.
_RESOLVE_EXCEPTIONS = """
UPDATE reconciliation_exceptions t
   SET status = 'resolved', resolved_at = now(), updated_at = now()
 WHERE t.status IN ('open', 'acknowledged') AND t.type <> 'payout_mismatch'
   AND (t.sale_id IN (SELECT id FROM rc_sales)
        OR t.card_transaction_id IN (SELECT id FROM rc_card))
   AND NOT EXISTS (SELECT 1 FROM rc_want_exc w
                    WHERE w.merchant_id = t.merchant_id AND w.type = t.type
                      AND w.subject_key = t.subject_key)
"""

#: Returns how many were written, and those to announce: the ones that opened (new, or
#: found again after they were resolved) of the merchants listening.
_UPDATE_EXCEPTIONS = """
WITH written AS (
    UPDATE reconciliation_exceptions t
       SET sale_id = w.sale_id, card_transaction_id = w.card_transaction_id,
           fields = w.fields, opened_at = w.opened_at,
           status = CASE WHEN t.status = 'resolved' THEN 'open' ELSE t.status END,
           resolved_at = NULL, updated_at = now()
      FROM rc_want_exc w
     WHERE w.write AND t.id = w.stored_id
    RETURNING t.id, t.merchant_id, w.stored_status = 'resolved' AS opened
)
SELECT count(*),
       coalesce(array_agg(id) FILTER (WHERE opened
                                        AND merchant_id = ANY(CAST(:listening AS text[]))),
                '{}')
  FROM written
"""

_INSERT_EXCEPTIONS = """
WITH written AS (
    INSERT INTO reconciliation_exceptions
           (id, merchant_id, type, subject_key, sale_id, card_transaction_id, fields, status,
            opened_at, updated_at)
    SELECT 'rex_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 22),
           merchant_id, type, subject_key, sale_id, card_transaction_id, fields, 'open',
           opened_at, now()
      FROM rc_want_exc w
     WHERE w.write AND w.stored_id IS NULL
    RETURNING id, merchant_id
)
SELECT count(*),
       coalesce(array_agg(id) FILTER (WHERE merchant_id = ANY(CAST(:listening AS text[]))),
                '{}')
  FROM written
"""

_ANNOUNCED = """
SELECT id, merchant_id, type, status, subject_key, sale_id, fields, opened_at, updated_at
  FROM reconciliation_exceptions WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id
"""


def announce(session: Session, rows: Sequence[Any]) -> None:
    """`reconciliation.exception` to the merchant's webhook endpoints, for each exception that
    opened (new, or found again after it was resolved)."""
    if not rows:
        return
    listening = outbound.subscribed_merchants(
        session, (row.merchant_id for row in rows), "reconciliation.exception"
    )
    for row in rows:
        if row.merchant_id not in listening:
            continue
        cause = "opened" if row.inserted else f"reopened:{row.updated_at.timestamp():.6f}"
        outbound.emit(
            session,
            merchant_id=row.merchant_id,
            event_type="reconciliation.exception",
            data={
                "object": "reconciliation_exception",
                "id": row.id,
                "type": row.type,
                "status": row.status,
                "subject_key": row.subject_key,
                "sale_id": row.sale_id,
                "fields": row.fields,
                "opened_at": utc_text(row.opened_at),
            },
            dedupe_key=f"reconciliation.exception:{row.id}:{cause}",
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconciliation did: sizes of the scope and rows changed."""

    sales: int
    purchases: int
    matches: int
    exceptions: int
    changed: dict[str, int]
    #: (partner id, customer ref) of the card data reconciled, for the continuous path to
    #: attribute next (empty for a batch, which attributes its whole period).
    cardholders: tuple[tuple[str, str], ...] = ()


def _stage_card(session: Session, into: str, condition: Any) -> int:
    return partnerdata.stage_transactions(
        session,
        into=into,
        purpose=PURPOSE,
        actor=ACTOR,
        where=[condition],
        columns=CARD_COLUMNS,
        distinct=False,
    )


@dataclass(frozen=True, slots=True)
class _Written:
    """An exception as announced (see `announce`)."""

    id: str
    merchant_id: str
    type: str
    status: str
    subject_key: str
    sale_id: str | None
    fields: Any
    opened_at: datetime
    updated_at: datetime
    inserted: bool


def reconcile(session: Session, scope: Scope) -> Outcome:
    """Reconcile `scope`: its matches and exceptions become what the rules call for."""
    as_of = scope.as_of or utcnow()
    defaults = {
        "default_tolerance": DEFAULT_AMOUNT_TOLERANCE,
        "default_window": DEFAULT_TIME_WINDOW_SECONDS,
        "default_clearing_days": DEFAULT_CLEARING_DAYS,
    }
    _lock(session, scope)
    run = session.execute
    # Short statements over temporary tables: compiling them costs more than it saves.
    run(text("SET LOCAL jit = off"))
    # The temporary tables are analyzed for their sizes and distinct values, which a small
    # sample tells well enough.
    run(text("SET LOCAL default_statistics_target = 10"))
    if scope.is_period:
        # A batch may run long; its own statements are not held to the request timeout. Its
        # joins and sorts span the whole period: memory keeps them off the disk.
        run(text("SET LOCAL statement_timeout = 0"))
        run(text(f"SET LOCAL work_mem = '{BATCH_WORK_MEM}'"))
    for table in (*_TEMP, *_DERIVED):
        run(text(f"DROP TABLE IF EXISTS pg_temp.{table}"))
    for statement in _CREATE_TEMP.strip().split(";\n"):
        if statement.strip():
            run(text(statement))

    if scope.is_period:
        params = {
            "start": scope.start,
            "end": scope.end,
            "merchant_ids": None if scope.merchant_ids is None else list(scope.merchant_ids),
        }
        run(text(_GROUPS_OF_PERIOD_SALES), params)
        _stage_card(session, "rc_card", text(_CARD_OF_PERIOD).bindparams(**params))
        run(text("ANALYZE rc_groups, rc_card"))
        run(text(_NEW_GROUPS))
        if run(text("INSERT INTO rc_groups SELECT merchant_id, last4 FROM rc_new_groups")).rowcount:
            _stage_card(
                session,
                "rc_card_more",
                text(_CARD_OF_NEW_GROUPS).bindparams(start=scope.start, end=scope.end),
            )
            run(text("INSERT INTO rc_card SELECT * FROM rc_card_more"))
        sales = run(text(_SALES.format(scope=_SALES_OF_PERIOD)), {**defaults, **params}).rowcount
    else:
        params = {
            "merchant_id": scope.merchant_id,
            "sale_ids": list(scope.sale_ids),
            "last4s": list(scope.last4s),
        }
        run(text(_SCOPE_SALES_OF_ITEMS), params)
        run(text(_GROUPS_OF_ITEMS), params)
        extra = session.execute(
            text("SELECT last4 FROM rc_groups WHERE NOT (last4 = ANY(CAST(:l AS text[])))"),
            {"l": list(scope.last4s)},
        ).scalars()
        # A sale's own group, when the event did not name it (a stripe already held is
        # taken again at no cost: advisory locks are re-entrant).
        for key in sorted({_group_lock_key(scope.merchant_id or "", last4) for last4 in extra}):
            run(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        _stage_card(session, "rc_card", text(_CARD_OF_GROUPS))
        sales = run(text(_SALES.format(scope=_SALES_OF_ITEMS)), defaults).rowcount

    run(text("ANALYZE rc_sales"))
    run(text(_CHARGES))
    run(text("ANALYZE rc_charges"))
    purchases = run(text(_PURCHASES), defaults).rowcount
    run(text("ANALYZE rc_purch"))
    run(text(_STRIPE_REFUNDS))

    run(text(_CANDIDATES))
    for number, (rule, confidence) in enumerate(PASSES, start=1):
        take = text(_TAKE_BEST.format(confidence=confidence))
        taken = None
        while taken != 0:  # rounds until one takes nothing
            taken = run(take, {"rule": rule, "pass": number}).scalar_one()

    run(text("ANALYZE rc_match"))
    run(text(_MATCHED))
    run(text("ANALYZE rc_matched"))
    run(text(_UNMATCHED))
    run(text(_DUPLICATE_OF))
    run(text(_REFUND_PAIRS))
    matches = run(text(_WANT_MATCHES)).rowcount
    exceptions = run(text(_WANT_EXCEPTIONS), {"as_of": as_of}).rowcount
    run(text("ANALYZE rc_want_match, rc_want_exc"))

    changed = {"matches_deleted": run(text(_DELETE_MATCHES)).rowcount}
    changed["matches_written"] = (
        run(text(_UPDATE_MATCHES)).rowcount + run(text(_INSERT_MATCHES)).rowcount
    )
    changed["exceptions_resolved"] = run(text(_RESOLVE_EXCEPTIONS)).rowcount
    listening = sorted(
        outbound.subscribed_merchants(
            session,
            run(text("SELECT DISTINCT merchant_id FROM rc_want_exc WHERE write")).scalars(),
            "reconciliation.exception",
        )
    )
    updated, reopened = run(text(_UPDATE_EXCEPTIONS), {"listening": listening}).one()
    inserted, new_ids = run(text(_INSERT_EXCEPTIONS), {"listening": listening}).one()
    changed["exceptions_written"] = updated + inserted
    inserted_ids = set(new_ids)
    opened = inserted_ids | set(reopened)
    if opened:
        announce(
            session,
            [
                _Written(**row._mapping, inserted=row.id in inserted_ids)
                for row in run(text(_ANNOUNCED), {"ids": sorted(opened)})
            ],
        )
    cardholders: tuple[tuple[str, str], ...] = ()
    if not scope.is_period:
        cardholders = tuple(
            (row[0], row[1])
            for row in session.execute(
                text(
                    "SELECT DISTINCT partner_id, customer_ref FROM rc_card"
                    " WHERE customer_ref IS NOT NULL ORDER BY 1, 2"
                )
            )
        )
    return Outcome(
        sales=sales,
        purchases=purchases,
        matches=matches,
        exceptions=exceptions,
        changed=changed,
        cardholders=cardholders,
    )


# --------------------------------------------------------------------------------------------
# 5. A batch over a period, in chunks of whole merchants.
# --------------------------------------------------------------------------------------------

#: A batch is cut into chunks of whole merchants of about this many sales of the period each
#: (a merchant with more is a chunk of its own); each chunk is reconciled and committed in a
#: transaction of its own.
BATCH_CHUNK_SALES = 500_000

#: A chunk holds at most this many merchants: it takes an advisory lock for each, and
#: PostgreSQL's lock table is shared by every session.
BATCH_CHUNK_MERCHANTS = 500

#: Chunks reconciled at the same time, each in a session of its own, unless `configure`
#: says otherwise (CHATLEDGER_RECONCILIATION_BATCH_SESSIONS).
BATCH_SESSIONS = 2
_batch_sessions = BATCH_SESSIONS


def configure(*, batch_sessions: int = BATCH_SESSIONS) -> None:
    """The number of sessions a batch runs its chunks in, in this process."""
    global _batch_sessions
    if batch_sessions < 1:
        raise ValueError("a batch needs at least one session")
    _batch_sessions = batch_sessions


_MERCHANT_SALES = """
SELECT m.id, coalesce(n.sales, 0)
  FROM merchants m
  LEFT JOIN (SELECT merchant_id, count(*) AS sales FROM sales
              WHERE created_at >= :start AND created_at < :end
              GROUP BY merchant_id) n ON n.merchant_id = m.id
 WHERE CAST(:merchant_id AS text) IS NULL OR m.id = :merchant_id
"""


def batch_chunks(
    sizes: Iterable[tuple[str, int]],
    *,
    sessions: int,
    chunk_sales: int = BATCH_CHUNK_SALES,
    chunk_merchants: int = BATCH_CHUNK_MERCHANTS,
) -> list[tuple[str, ...]]:
    """Merchants (id, sales of the period) dealt into chunks: at least one per session,
    more when the period holds more than `chunk_sales` sales or `chunk_merchants` merchants
    per chunk. The largest merchant goes first, each into the chunk with the fewest sales
    (then the fewest merchants) that is not full, so the chunks come out about even and
    none holds more than `chunk_merchants` merchants (and as many locks). Chunks are in the
    order to run them, the largest first."""
    merchants = sorted(sizes, key=lambda m: (-m[1], m[0]))
    if not merchants:
        return []
    total = sum(n for _, n in merchants)
    count = min(
        len(merchants),
        max(sessions, -(-total // chunk_sales), -(-len(merchants) // chunk_merchants)),
    )
    members: list[list[str]] = [[] for _ in range(count)]
    loads = [0] * count
    open_chunks = [(0, 0, i) for i in range(count)]  # (sales, merchants, chunk), a heap
    for merchant_id, sales in merchants:
        load, held, i = heapq.heappop(open_chunks)
        members[i].append(merchant_id)
        loads[i] = load + sales
        if held + 1 < chunk_merchants:
            heapq.heappush(open_chunks, (load + sales, held + 1, i))
    order = sorted(range(count), key=lambda i: (-loads[i], i))
    return [tuple(sorted(members[i])) for i in order]


def reconcile_period(
    sessions: Callable[[], Session],
    start: datetime,
    end: datetime,
    *,
    merchant_id: str | None = None,
    as_of: datetime | None = None,
    concurrency: int | None = None,
) -> Outcome:
    """Reconcile every sale and card group of a period (of one merchant, or of every
    merchant), as `reconcile(Scope.period(...))` does, in chunks of whole merchants
    (`batch_chunks`), `concurrency` at a time (default: as configured), each in a session
    and transaction of its own from `sessions`; returns the chunks' outcomes added up.

    A merchant's matches and exceptions never depend on another merchant's data, so the
    chunks give what one scope over every merchant gives. Each chunk commits when it is
    done and holds its merchants' locks only while it runs. If a chunk fails, the chunks
    not begun are not run and the first error is raised once the others have ended: what
    committed is right for its merchants, and running the batch again completes it."""
    as_of = as_of or utcnow()
    concurrency = concurrency or _batch_sessions
    with sessions() as session:
        sizes = session.execute(
            text(_MERCHANT_SALES), {"start": start, "end": end, "merchant_id": merchant_id}
        ).all()
    chunks = batch_chunks([(row[0], row[1]) for row in sizes], sessions=concurrency)
    stop = threading.Event()

    def run_chunk(merchant_ids: tuple[str, ...]) -> Outcome | None:
        if stop.is_set():
            return None
        began = time.monotonic()
        try:
            with sessions() as session:
                outcome = reconcile(
                    session, Scope.period(start, end, merchant_ids=merchant_ids, as_of=as_of)
                )
                session.commit()
        except BaseException:
            stop.set()
            raise
        log.info(
            "reconciled %d merchants, %d sales and %d card purchases of %s to %s in %.1fs",
            len(merchant_ids),
            outcome.sales,
            outcome.purchases,
            utc_text(start),
            utc_text(end),
            time.monotonic() - began,
        )
        return outcome

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(run_chunk, chunk) for chunk in chunks]
        errors = [e for f in futures if (e := f.exception()) is not None]
        outcomes = [o for f in futures if f.exception() is None and (o := f.result())]
    if errors:
        raise errors[0]
    changed: dict[str, int] = {}
    for outcome in outcomes:
        for key, value in outcome.changed.items():
            changed[key] = changed.get(key, 0) + value
    return Outcome(
        sales=sum(o.sales for o in outcomes),
        purchases=sum(o.purchases for o in outcomes),
        matches=sum(o.matches for o in outcomes),
        exceptions=sum(o.exceptions for o in outcomes),
        changed=changed,
    )


def sales_changed(session: Session, previous_last4: dict[str, str | None]) -> None:
    """Stripe facts of these sales changed (sale id -> the card's last four digits before
    the change): queue them, with the card group they were in, for the drain."""
    if not previous_last4:
        return
    session.flush()
    rows = session.execute(
        text("SELECT id, merchant_id, card_last4 FROM sales WHERE id = ANY(CAST(:ids AS text[]))"),
        {"ids": sorted(previous_last4)},
    )
    for sale_id, merchant_id, last4 in rows:
        enqueue(
            session,
            merchant_id,
            sale_ids=[sale_id],
            last4s=[x for x in {last4, previous_last4[sale_id]} if x],
        )


def enqueue(
    session: Session,
    merchant_id: str,
    *,
    sale_ids: Iterable[str] = (),
    last4s: Iterable[str] = (),
    cardholders: Iterable[tuple[str, str]] = (),
) -> None:
    """Ask for the continuous path: these sales, card groups and cardholders are reconciled
    and attributed by the next drain, which the commit schedules."""
    rows = [
        {"sale_id": sale_id, "last4": None, "partner_id": None, "customer_ref": None}
        for sale_id in sale_ids
    ]
    rows += [
        {"sale_id": None, "last4": last4, "partner_id": None, "customer_ref": None}
        for last4 in last4s
    ]
    rows += [
        {"sale_id": None, "last4": None, "partner_id": p, "customer_ref": c} for p, c in cardholders
    ]
    if not rows:
        return
    session.execute(
        text(
            "INSERT INTO reconciliation_queue"
            " (merchant_id, sale_id, last4, partner_id, customer_ref, enqueued_at)"
            " VALUES (:merchant_id, :sale_id, :last4, :partner_id, :customer_ref, now())"
        ),
        [{"merchant_id": merchant_id, **row} for row in rows],
    )
    after_commit(session, _schedule_drain)


_DRAIN_COALESCE_SECONDS = 1.0
_last_drain_sent = 0.0


def _schedule_drain() -> None:
    """Send one drain a second at most from this process; the beat's drain covers a lost
    send (the broker down) and anything a drain already running did not see."""
    global _last_drain_sent
    now = time.monotonic()
    if now - _last_drain_sent < _DRAIN_COALESCE_SECONDS:
        return
    _last_drain_sent = now
    from commerce.reconciliation import tasks

    try:
        tasks.drain.apply_async(countdown=_DRAIN_COALESCE_SECONDS)
    except Exception:  # the broker's errors vary by transport; the beat's drain covers them
        log.warning("reconciliation drain not sent; the periodic drain will run", exc_info=True)


_TAKE = """
DELETE FROM reconciliation_queue
 WHERE id IN (SELECT id FROM reconciliation_queue
               WHERE retry_at IS NULL OR retry_at <= now()
               ORDER BY id LIMIT :limit
               FOR UPDATE SKIP LOCKED)
RETURNING merchant_id, sale_id, last4, partner_id, customer_ref, enqueued_at, attempts
"""

_PUT_BACK = """
INSERT INTO reconciliation_queue
       (merchant_id, sale_id, last4, partner_id, customer_ref, enqueued_at, attempts,
        retry_at, last_error)
SELECT :merchant_id, x.sale_id, x.last4, x.partner_id, x.customer_ref, x.enqueued_at,
       x.attempts + 1,
       now() + make_interval(secs => least(:first_wait * 2 ^ x.attempts, :longest_wait)),
       :error
  FROM unnest(CAST(:sale_ids AS text[]), CAST(:last4s AS text[]), CAST(:partner_ids AS text[]),
              CAST(:customer_refs AS text[]), CAST(:enqueued_ats AS timestamptz[]),
              CAST(:attempts AS int[]))
       AS x(sale_id, last4, partner_id, customer_ref, enqueued_at, attempts)
"""

#: A merchant whose reconciliation failed is taken again after this long, twice as long
#: after each further failure, up to the longest wait.
RETRY_FIRST_WAIT_SECONDS = 60
RETRY_LONGEST_WAIT_SECONDS = 6 * 3600


@dataclass
class _Queued:
    """One merchant's items of a drain."""

    sale_ids: set[str] = field(default_factory=set)
    last4s: set[str] = field(default_factory=set)
    cardholders: set[tuple[str, str]] = field(default_factory=set)
    rows: list[Any] = field(default_factory=list)


def drain(session: Session, *, limit: int = 2000, as_of: datetime | None = None) -> int:
    """Reconcile and attribute up to `limit` queued items, merchant by merchant, in the
    caller's transaction; returns how many were taken. Items queued twice count once.

    If it fails for a reason other than the database's (`OperationalError`, raised for the
    caller to retry), the merchants are tried again one at a time, each in a savepoint; the
    items of a merchant that fails alone go back to the queue with the attempt counted and
    wait (`RETRY_FIRST_WAIT_SECONDS`, doubling), so one item that cannot be reconciled
    never holds up the others."""
    taken = session.execute(text(_TAKE), {"limit": limit}).all()
    if not taken:
        return 0
    queued: dict[str, _Queued] = {}
    for row in taken:
        items = queued.setdefault(row.merchant_id, _Queued())
        items.rows.append(row)
        if row.sale_id:
            items.sale_ids.add(row.sale_id)
        if row.last4:
            items.last4s.add(row.last4)
        if row.partner_id and row.customer_ref:
            items.cardholders.add((row.partner_id, row.customer_ref))
    try:
        with session.begin_nested():
            _reconcile_queued(session, queued, as_of)
        return len(taken)
    except OperationalError:
        raise
    except Exception:
        log.exception("a drain of %d items failed; its merchants are tried one by one", len(taken))
    for merchant_id in sorted(queued):
        try:
            with session.begin_nested():
                _reconcile_queued(session, {merchant_id: queued[merchant_id]}, as_of)
        except OperationalError:
            raise
        except Exception as exc:
            rows = queued[merchant_id].rows
            log.exception(
                "reconciling merchant %s failed; its %d queued items wait to be tried again",
                merchant_id,
                len(rows),
            )
            _put_back(session, merchant_id, rows, exc)
    return len(taken)


def _reconcile_queued(session: Session, queued: dict[str, _Queued], as_of: datetime | None) -> None:
    from commerce.attribution import engine as attribution

    groups = {merchant_id: set(items.last4s) for merchant_id, items in queued.items()}
    cardholders: set[tuple[str, str]] = set().union(*(i.cardholders for i in queued.values()))
    # Each sale's own card group is locked with the others, in one order.
    for merchant_id, last4 in session.execute(
        text(
            "SELECT merchant_id, card_last4 FROM sales"
            " WHERE id = ANY(CAST(:ids AS text[])) AND card_last4 IS NOT NULL"
        ),
        {"ids": sorted(set().union(*(i.sale_ids for i in queued.values())))},
    ):
        groups.setdefault(merchant_id, set()).add(last4)
    for merchant_id in sorted(groups):
        items = queued.get(merchant_id)
        outcome = reconcile(
            session,
            Scope.items(
                merchant_id,
                sale_ids=items.sale_ids if items else (),
                last4s=groups[merchant_id],
                as_of=as_of,
            ),
        )
        cardholders.update(outcome.cardholders)
    if cardholders:
        attribution.attribute(session, cardholders)


def _put_back(session: Session, merchant_id: str, rows: Sequence[Any], error: Exception) -> None:
    """The merchant's taken items, queued again to wait; the error is kept for operators,
    its first line only and any card number masked."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    session.execute(
        text(_PUT_BACK),
        {
            "merchant_id": merchant_id,
            "sale_ids": [r.sale_id for r in rows],
            "last4s": [r.last4 for r in rows],
            "partner_ids": [r.partner_id for r in rows],
            "customer_refs": [r.customer_ref for r in rows],
            "enqueued_ats": [r.enqueued_at for r in rows],
            "attempts": [r.attempts for r in rows],
            "first_wait": RETRY_FIRST_WAIT_SECONDS,
            "longest_wait": RETRY_LONGEST_WAIT_SECONDS,
            "error": mask(f"{type(error).__name__}: {first_line}")[:500],
        },
    )
