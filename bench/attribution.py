"""Benchmark: the off-platform attribution batch beside a hand-written set-based query.

    .venv/bin/python bench/attribution.py [--purchases 1000000] [--touchpoints N]

What it does, in order:

1. creates a database of its own (`chatledger_bench_<random>`) on the PostgreSQL named by
   CHATLEDGER_DATABASE_URL and migrates it (`migrations.upgrade`), or reuses one that an
   earlier `--keep` run left (`--database NAME`, data already there), migrated to the
   latest revision;
2. generates the data with set-based SQL (INSERT ... SELECT over generate_series,
   deterministic hashes of the row numbers):
   - 2 partners with an active agreement for `transactions` and `sales_attribution`;
     100 merchants with one MID each; every tenth merchant has its own windows (click 3 d,
     view 12 h, return 14 d);
   - one cardholder per four purchases: a consent (96 % granted with `sales_attribution`,
     of which 2 points without a chat identity; 2 % revoked; 2 % for `fraud_alerts` only)
     naming the chat identity of a customer; two conversations of that customer with two
     merchants, two offers in each (one offer in twenty has its own windows: click 2 d,
     view 6 h, return 10 d);
   - the purchases: 40 % at either conversation's merchant, 20 % at a third merchant the
     cardholder never talked to; authorization and clearing (88 %), authorization only
     (8 %), clearing only (4 %); 3 % stored for `fraud_alerts` only; refunds (4 % full,
     4 % half, 2 % in two halves, 3 to 45 days later) and reversals (2 %); 85 % left as an
     open `orphan_transaction`, 3 % resolved, 2 % acknowledged, 10 % reconciled to a sale
     (no exception);
   - the touchpoints, each one near one purchase of the cardholder (in that purchase's
     conversation, or either conversation for the third merchant's): delivered 30 %,
     viewed 30 %, clicked 25 %, accepted 10 %, declined 5 %; 8 % in the day before the
     purchase, 14 % 1 to 7 days before, 43 % 7 to 90 days before, 35 % after it.
   Triggers are off while it loads (`session_replication_role = replica`: bulk data, not
   traffic; the touchpoint report rollups are not read by attribution), secondary indexes of
   the big tables are dropped and built again after it, then VACUUM ANALYZE; every foreign
   key and check constraint is then verified by queries;
3. in the same run, each in one transaction, committed, on the same settings (jit off):
   - the engine: `attribution.engine.attribute_period` over the whole period into an empty
     `attributions` table;
   - the reference: one INSERT ... SELECT written by hand from the rules (usable partner data
     -> purchases left as orphans -> consent -> customer -> conversation -> touchpoints in
     their windows; last-touch, first-touch and linear; refunds and reversals in the return
     period) into a scratch table;
   and compares the two sets of (purchase, model, touchpoint, amount), and refunded and
   status beside them;
4. prints a Markdown report and writes it to bench/results/.

The database is dropped at the end unless --keep. Nothing here asserts a speed.
"""

# ruff: noqa: S608 - the SQL text is built from constants and numbers, never from input
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from common import (
    DEFAULT_DATABASE_URL,
    RESULTS,
    bench_database,
    build_indexes,
    drop_secondary_indexes,
    machine_info,
)

MERCHANTS = 100
PERIOD_START = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD_DAYS = 120
PERIOD_END = PERIOD_START + timedelta(days=PERIOD_DAYS)
PARTNERS = ("prt_" + "0" * 21 + "1", "prt_" + "0" * 21 + "2")
BATCH = 2_000_000


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _h(expr: str, salt: int) -> str:
    """SQL: a deterministic non-negative hash of the bigint `expr`."""
    return f"(hashint8(({expr}) * 7 + {salt})::bigint & 2147483647)"


def _id(prefix: str, expr: str) -> str:
    return f"'{prefix}' || lpad(({expr})::text, 22, '0')"


# Merchants of cardholder h: two with a conversation, a third without (all distinct).
M0 = f"(h % {MERCHANTS})"
M1 = f"(({M0} + 1 + (h / {MERCHANTS}) % 49) % {MERCHANTS})"
M2 = f"(({M0} + 50 + (h / {MERCHANTS}) % 50) % {MERCHANTS})"
MERCHANT = "'mer_' || lpad(({m})::text, 22, '0')"

# Purchase g: cardholder h = g % H (four purchases each), slot (0, 1: the conversations'
# merchants; 2: the third), time, amount and the shape of its card data.
PURCHASE = f"""
    SELECT g, h, slot, merchant, at, amount, currency, form, refund, reversed, exc, purposes,
           CASE h % 2 WHEN 0 THEN '{PARTNERS[0]}' ELSE '{PARTNERS[1]}' END AS partner_id,
           'cref-' || h AS customer_ref, 'tx-' || g AS tx
    FROM (
        SELECT g, h, slot,
               CASE slot WHEN 0 THEN {M0} WHEN 1 THEN {M1} ELSE {M2} END AS merchant,
               :start + make_interval(secs => {_h("g", 2)} % ({PERIOD_DAYS} * 86400)) AS at,
               500 + {_h("g", 3)} % 20000 AS amount,
               CASE WHEN {_h("g", 4)} % 100 < 70 THEN 'USD'
                    WHEN {_h("g", 4)} % 100 < 95 THEN 'EUR' ELSE 'JPY' END AS currency,
               {_h("g", 5)} % 100 AS form, {_h("g", 6)} % 100 AS refund,
               {_h("g", 7)} % 100 < 2 AS reversed, {_h("g", 8)} % 100 AS exc,
               CASE WHEN {_h("g", 9)} % 100 < 3 THEN ARRAY['fraud_alerts']
                    ELSE ARRAY['sales_attribution', 'fraud_alerts'] END AS purposes
        FROM (SELECT g, g % :holders AS h,
                     CASE WHEN {_h("g", 1)} % 10 < 4 THEN 0
                          WHEN {_h("g", 1)} % 10 < 8 THEN 1 ELSE 2 END AS slot
              FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g) AS s
    ) AS p"""

CARD_COLUMNS = """(id, partner_id, kind, transaction_id, original_transaction_id, customer_ref,
    card_brand, card_last4, mid, merchant_id, merchant_name, amount, currency, occurred_at,
    purposes, created_at)"""


def _card(kind: str, id_prefix: str, tx: str, original: str, amount: str, at: str, where: str):
    return f"""
    INSERT INTO card_transactions {CARD_COLUMNS}
    SELECT {_id(id_prefix, "g")}, partner_id, '{kind}', {tx}, {original}, customer_ref, 'visa',
           lpad((h % 10000)::text, 4, '0'), 'MID' || lpad(merchant::text, 6, '0'),
           {MERCHANT.format(m="merchant")}, 'Merchant ' || merchant, {amount}, currency, {at},
           purposes, {at}
    FROM ({PURCHASE}) AS q WHERE {where}"""


STEPS: list[tuple[str, str, str]] = [
    # (name, unit: "once" | "holders" | "purchases" | "touchpoints", SQL)
    (
        "reference data",
        "once",
        f"""
INSERT INTO partners (id, name, created_at, pan_reports)
SELECT p, 'Bank ' || i, '2020-01-01T00:00:00Z', 0
FROM unnest(ARRAY['{PARTNERS[0]}', '{PARTNERS[1]}']) WITH ORDINALITY AS u(p, i);
INSERT INTO agreements (id, partner_id, scopes, purposes, starts_at, ends_at, retention_days,
                        status, created_at)
SELECT 'agr_' || lpad(i::text, 22, '0'), p, ARRAY['transactions'],
       ARRAY['sales_attribution', 'fraud_alerts'], '2020-01-01T00:00:00Z', NULL, 3650,
       'active', '2020-01-01T00:00:00Z'
FROM unnest(ARRAY['{PARTNERS[0]}', '{PARTNERS[1]}']) WITH ORDINALITY AS u(p, i);
INSERT INTO merchants (id, name, timezone, created_at)
SELECT {MERCHANT.format(m="m")}, 'Merchant ' || m, 'UTC', '2020-01-01T00:00:00Z'
FROM generate_series(0, {MERCHANTS - 1}) AS m;
INSERT INTO merchant_mids (merchant_id, mid)
SELECT {MERCHANT.format(m="m")}, 'MID' || lpad(m::text, 6, '0')
FROM generate_series(0, {MERCHANTS - 1}) AS m;
INSERT INTO attribution_settings (merchant_id, click_window_seconds, view_window_seconds,
                                  return_period_days, updated_at)
SELECT {MERCHANT.format(m="m")}, 3 * 86400, 12 * 3600, 14, '2020-01-01T00:00:00Z'
FROM generate_series(0, {MERCHANTS - 1}) AS m WHERE m % 10 = 3;
""",
    ),
    (
        "consents",
        "holders",
        f"""
INSERT INTO consents (id, partner_id, customer_ref, chat_channel, chat_user_id, scopes,
                      purposes, expires_at, status, cards, as_of, created_at, updated_at)
SELECT {_id("cns_", "h")}, CASE h % 2 WHEN 0 THEN '{PARTNERS[0]}' ELSE '{PARTNERS[1]}' END,
       'cref-' || h, 'messenger', CASE WHEN u >= 2 AND u < 4 THEN NULL ELSE 'psid-' || h END,
       ARRAY['transactions'],
       CASE WHEN u >= 4 AND u < 6 THEN ARRAY['fraud_alerts']
            ELSE ARRAY['sales_attribution', 'fraud_alerts'] END,
       NULL, CASE WHEN u < 2 THEN 'revoked' ELSE 'granted' END,
       jsonb_build_array(jsonb_build_object('brand', 'visa',
                                            'last4', lpad((h % 10000)::text, 4, '0'))),
       '2025-12-01T00:00:00Z', '2025-12-01T00:00:00Z', '2025-12-01T00:00:00Z'
FROM (SELECT h, {_h("h", 11)} % 100 AS u
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS h) AS x
""",
    ),
    (
        "customers",
        "holders",
        f"""
INSERT INTO customers (id, channel, channel_user_id, created_at)
SELECT {_id("cus_", "h")}, 'messenger', 'psid-' || h, '2025-09-01T00:00:00Z'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS h
""",
    ),
    (
        "conversations",
        "holders",
        f"""
INSERT INTO conversations (id, merchant_id, customer_id, channel, thread_id, created_at)
SELECT {_id("cnv_", "h * 2 + s")},
       {MERCHANT.format(m=f"CASE s WHEN 0 THEN {M0} ELSE {M1} END")}, {_id("cus_", "h")},
       'messenger', 't-' || h || '-' || s, '2025-09-01T00:00:00Z'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS h, (VALUES (0), (1)) AS v(s)
""",
    ),
    (
        "offers",
        "holders",
        f"""
INSERT INTO offers (id, merchant_id, conversation_id, title, amount, currency, quantity,
                    click_window_seconds, view_window_seconds, return_period_days, created_at)
SELECT {_id("ofr_", "(h * 2 + s) * 2 + k")},
       {MERCHANT.format(m=f"CASE s WHEN 0 THEN {M0} ELSE {M1} END")}, {_id("cnv_", "h * 2 + s")},
       'Offer ' || k, 1000 + h % 5000, 'USD', 1,
       CASE WHEN own THEN 2 * 86400 END, CASE WHEN own THEN 6 * 3600 END,
       CASE WHEN own THEN 10 END, '2025-09-01T00:00:00Z'
FROM (SELECT h, s, k, {_h("(h * 2 + s) * 2 + k", 12)} % 20 = 0 AS own
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS h,
           (VALUES (0), (1)) AS v(s), (VALUES (0), (1)) AS w(k)) AS x
""",
    ),
    (
        "authorizations",
        "purchases",
        _card("authorized", "cta_", "tx", "NULL", "amount", "at", "form < 96"),
    ),
    (
        "clearings",
        "purchases",
        _card(
            "cleared",
            "ctc_",
            "tx",
            "NULL",
            "amount + CASE WHEN g % 20 = 0 THEN 150 ELSE 0 END",
            "at + interval '1 day'",
            "form < 88 OR form >= 96",
        ),
    ),
    (
        "refunds",
        "purchases",
        _card(
            "refunded",
            "ctr_",
            "'rf-' || g",
            "tx",
            "CASE WHEN refund < 4 THEN amount ELSE amount / 2 END",
            f"at + make_interval(days => (3 + {_h('g', 13)} % 43)::int)",
            "refund < 10",
        )
        + ";"
        + _card(
            "refunded",
            "cts_",
            "'rf2-' || g",
            "tx",
            "amount - amount / 2",
            f"at + make_interval(days => (3 + {_h('g', 14)} % 43)::int)",
            "refund >= 8 AND refund < 10",
        ),
    ),
    (
        "reversals",
        "purchases",
        _card(
            "reversed", "ctv_", "'rv-' || g", "tx", "amount", "at + interval '2 hours'", "reversed"
        ),
    ),
    (
        "orphan exceptions",
        "purchases",
        f"""
INSERT INTO reconciliation_exceptions (id, merchant_id, type, subject_key, card_transaction_id,
                                       fields, status, opened_at, resolved_at, updated_at)
SELECT {_id("rex_", "g")}, {MERCHANT.format(m="merchant")}, 'orphan_transaction',
       'txn:' || partner_id || ':' || tx,
       CASE WHEN form < 96 THEN {_id("cta_", "g")} ELSE {_id("ctc_", "g")} END,
       jsonb_build_object('sale', jsonb_build_object('expected', true, 'found', false),
                          'mid', 'MID' || lpad(merchant::text, 6, '0'), 'amount', amount,
                          'currency', currency),
       CASE WHEN exc < 85 THEN 'open' WHEN exc < 88 THEN 'resolved' ELSE 'acknowledged' END,
       at + interval '3 days', CASE WHEN exc >= 85 AND exc < 88 THEN at + interval '4 days' END,
       at + interval '3 days'
FROM ({PURCHASE}) AS q WHERE exc < 90
""",
    ),
    (
        "touchpoints",
        "touchpoints",
        f"""
INSERT INTO touchpoints (id, merchant_id, offer_id, conversation_id, kind, occurred_at, source,
                         recorded_at)
SELECT {_id("tch_", "t")}, {MERCHANT.format(m="CASE cs WHEN 0 THEN m0 ELSE m1 END")},
       {_id("ofr_", "(h * 2 + cs) * 2 + t % 2")}, {_id("cnv_", "h * 2 + cs")},
       kind, occurred_at, 'api', occurred_at
FROM (
    SELECT t, h, {M0.replace("h", "h")} AS m0, {M1} AS m1,
           CASE WHEN slot < 2 THEN slot ELSE t % 2 END AS cs,
           CASE WHEN k < 30 THEN 'delivered' WHEN k < 60 THEN 'viewed'
                WHEN k < 85 THEN 'clicked' WHEN k < 95 THEN 'accepted' ELSE 'declined' END
             AS kind,
           at + CASE WHEN o < 80 THEN -make_interval(secs => 1 + {_h("t", 23)} % 86399)
                     WHEN o < 220 THEN -make_interval(secs => 86400 + {_h("t", 23)} % (6 * 86400))
                     WHEN o < 650 THEN -make_interval(secs => 7 * 86400
                                                      + {_h("t", 23)} % (83 * 86400))
                     ELSE make_interval(secs => {_h("t", 23)} % (60 * 86400)) END
             AS occurred_at
    FROM (
        SELECT t, p.g % :holders AS h,
               CASE WHEN {_h("p.g", 1)} % 10 < 4 THEN 0
                    WHEN {_h("p.g", 1)} % 10 < 8 THEN 1 ELSE 2 END AS slot,
               :start + make_interval(secs => {_h("p.g", 2)} % ({PERIOD_DAYS} * 86400)) AS at,
               {_h("t", 21)} % 100 AS k, {_h("t", 22)} % 1000 AS o
        FROM (SELECT t, {_h("t", 20)} % :purchases AS g
              FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS t) AS p
    ) AS x
) AS y
""",
    ),
]

BIG_TABLES = (
    "card_transactions",
    "touchpoints",
    "reconciliation_exceptions",
    "offers",
    "conversations",
    "customers",
    "consents",
)

#: Every foreign key and check constraint the load bypassed, verified by a query that counts
#: the rows breaking it (all must be 0).
CHECKS = {
    "card_transactions.merchant_id": "SELECT count(*) FROM card_transactions c WHERE NOT EXISTS"
    " (SELECT 1 FROM merchants m WHERE m.id = c.merchant_id)",
    "card_transactions.mid is the merchant's": "SELECT count(*) FROM card_transactions c"
    " WHERE NOT EXISTS (SELECT 1 FROM merchant_mids m WHERE m.mid = c.mid"
    " AND m.merchant_id = c.merchant_id)",
    "card_transactions.partner_id": "SELECT count(*) FROM card_transactions c WHERE NOT EXISTS"
    " (SELECT 1 FROM partners p WHERE p.id = c.partner_id)",
    "card_transactions.amount >= 0": "SELECT count(*) FROM card_transactions WHERE amount < 0",
    "consents.partner_id": "SELECT count(*) FROM consents c WHERE NOT EXISTS"
    " (SELECT 1 FROM partners p WHERE p.id = c.partner_id)",
    "every card customer_ref has a consent": "SELECT count(*) FROM card_transactions c"
    " WHERE NOT EXISTS (SELECT 1 FROM consents s WHERE s.partner_id = c.partner_id"
    " AND s.customer_ref = c.customer_ref)",
    "consents' chat identities are customers": "SELECT count(*) FROM consents c"
    " WHERE c.chat_user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM customers u"
    " WHERE u.channel = c.chat_channel AND u.channel_user_id = c.chat_user_id)",
    "conversations.customer_id": "SELECT count(*) FROM conversations c WHERE NOT EXISTS"
    " (SELECT 1 FROM customers u WHERE u.id = c.customer_id)",
    "conversations.merchant_id": "SELECT count(*) FROM conversations c WHERE NOT EXISTS"
    " (SELECT 1 FROM merchants m WHERE m.id = c.merchant_id)",
    "offers.conversation_id (same merchant)": "SELECT count(*) FROM offers o WHERE NOT EXISTS"
    " (SELECT 1 FROM conversations c WHERE c.id = o.conversation_id"
    " AND c.merchant_id = o.merchant_id)",
    "touchpoints.offer_id (same conversation and merchant)": "SELECT count(*) FROM touchpoints t"
    " WHERE NOT EXISTS (SELECT 1 FROM offers o WHERE o.id = t.offer_id"
    " AND o.conversation_id = t.conversation_id AND o.merchant_id = t.merchant_id)",
    "touchpoints.conversation_id": "SELECT count(*) FROM touchpoints t WHERE NOT EXISTS"
    " (SELECT 1 FROM conversations c WHERE c.id = t.conversation_id)",
    "reconciliation_exceptions.card_transaction_id (same merchant)": "SELECT count(*)"
    " FROM reconciliation_exceptions e WHERE NOT EXISTS (SELECT 1 FROM card_transactions c"
    " WHERE c.id = e.card_transaction_id AND c.merchant_id = e.merchant_id)",
    "refunds' and reversals' originals": "SELECT count(*) FROM card_transactions r"
    " WHERE r.original_transaction_id IS NOT NULL AND NOT EXISTS (SELECT 1"
    " FROM card_transactions c WHERE c.partner_id = r.partner_id"
    " AND c.transaction_id = r.original_transaction_id AND c.kind IN ('authorized', 'cleared'))",
}


@contextmanager
def _step(engine: Any, timings: dict[str, float], name: str) -> Iterator[Any]:
    from sqlalchemy import text

    began = time.monotonic()
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text("SET LOCAL synchronous_commit = off"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        yield connection
    timings[name] = timings.get(name, 0.0) + time.monotonic() - began


def generate(engine: Any, purchases: int, touchpoints: int) -> dict[str, float]:
    """Load the data set; the seconds each step took."""
    from sqlalchemy import text

    holders = max(purchases // 4, 1)
    timings: dict[str, float] = {}
    rebuilt: list[str] = []
    with engine.begin() as connection:
        for table in BIG_TABLES:
            rebuilt += drop_secondary_indexes(connection, table)
    sizes = {"once": 1, "holders": holders, "purchases": purchases, "touchpoints": touchpoints}
    for name, unit, sql in STEPS:
        total = sizes[unit]
        for lo in range(0, total, BATCH):
            hi = min(lo + BATCH, total) - 1
            log(f"{name} {lo:,}..{hi:,} of {total:,}" if unit != "once" else name)
            with _step(engine, timings, name) as connection:
                for statement in sql.split(";"):
                    if statement.strip():
                        connection.execute(
                            text(statement),
                            {
                                "lo": lo,
                                "hi": hi,
                                "holders": holders,
                                "purchases": purchases,
                                "start": PERIOD_START,
                            },
                        )
    log(f"building {len(rebuilt)} indexes again")
    began = time.monotonic()
    build_indexes(engine, rebuilt)
    timings["indexes"] = time.monotonic() - began
    log("VACUUM ANALYZE")
    began = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    timings["vacuum analyze"] = time.monotonic() - began
    return timings


def verify(engine: Any) -> dict[str, int]:
    """The rows breaking each constraint the load bypassed (all 0 for a good data set)."""
    from sqlalchemy import text

    with engine.connect() as connection:
        return {name: connection.execute(text(sql)).scalar_one() for name, sql in CHECKS.items()}


# --------------------------------------------------------------------------- the reference

SCRATCH = """
CREATE TABLE IF NOT EXISTS bench_ref_credits (
    purchase_key text NOT NULL, model text NOT NULL, touchpoint_id text NOT NULL,
    amount bigint NOT NULL, refunded bigint NOT NULL, status text NOT NULL
)"""


def _usable(t: str) -> str:
    """SQL: card transaction `t` may be used for sales_attribution (commerce/partnerdata.py
    usable(): stored for the purpose, consent and agreement in force for it), and is at a
    merchant's MID."""
    return f"""'sales_attribution' = ANY({t}.purposes) AND {t}.merchant_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM consents c
                    WHERE c.partner_id = {t}.partner_id AND c.customer_ref = {t}.customer_ref
                      AND c.status = 'granted' AND (c.expires_at IS NULL OR c.expires_at > now())
                      AND 'transactions' = ANY(c.scopes)
                      AND 'sales_attribution' = ANY(c.purposes))
       AND EXISTS (SELECT 1 FROM agreements a
                    WHERE a.partner_id = {t}.partner_id AND a.status = 'active'
                      AND a.starts_at <= now() AND (a.ends_at IS NULL OR a.ends_at > now())
                      AND 'transactions' = ANY(a.scopes)
                      AND 'sales_attribution' = ANY(a.purposes))"""


#: The rules of commerce/attribution/engine.py's docstring, written again by hand as one
#: set-based statement: every CTE is referenced once (inlined, planned from the tables'
#: statistics), refunds and reversals are gathered per purchase and joined by hash.
REFERENCE = f"""
INSERT INTO bench_ref_credits (purchase_key, model, touchpoint_id, amount, refunded, status)
WITH purchase AS (
    -- authorization and clearing of one transaction id, of a cardholder with a usable
    -- transaction in the period, left as an unresolved orphan by reconciliation
    SELECT partner_id, transaction_id, row_id, merchant_id, customer_ref, amount, at
      FROM (SELECT ct.partner_id, ct.transaction_id,
                   coalesce(min(ct.id) FILTER (WHERE ct.kind = 'authorized'),
                            min(ct.id) FILTER (WHERE ct.kind = 'cleared')) AS row_id,
                   coalesce(min(ct.merchant_id) FILTER (WHERE ct.kind = 'authorized'),
                            min(ct.merchant_id) FILTER (WHERE ct.kind = 'cleared'))
                     AS merchant_id,
                   min(ct.customer_ref) AS customer_ref,
                   coalesce(min(ct.amount) FILTER (WHERE ct.kind = 'cleared'),
                            min(ct.amount) FILTER (WHERE ct.kind = 'authorized')) AS amount,
                   coalesce(min(ct.occurred_at) FILTER (WHERE ct.kind = 'authorized'),
                            min(ct.occurred_at) FILTER (WHERE ct.kind = 'cleared')) AS at
              FROM card_transactions ct
             WHERE ct.kind IN ('authorized', 'cleared') AND {_usable("ct")}
               AND EXISTS (SELECT 1 FROM card_transactions h
                            WHERE h.partner_id = ct.partner_id
                              AND h.customer_ref = ct.customer_ref
                              AND h.occurred_at >= :start AND h.occurred_at < :end
                              AND 'sales_attribution' = ANY(h.purposes)
                              AND h.merchant_id IS NOT NULL)
             GROUP BY ct.partner_id, ct.transaction_id) p
     WHERE EXISTS (SELECT 1 FROM reconciliation_exceptions e
                    WHERE e.card_transaction_id = p.row_id AND e.type = 'orphan_transaction'
                      AND e.status <> 'resolved')
), touch AS (
    -- the cardholder's touchpoints (consent -> chat identity -> customer -> conversation with
    -- the purchase's merchant) within the offer's, else the merchant's, else the default window
    SELECT p.*, t.id AS touchpoint_id, t.occurred_at AS touched_at,
           coalesce(o.return_period_days, s.return_period_days, 30) AS return_days
      FROM purchase p
      JOIN consents c ON c.partner_id = p.partner_id AND c.customer_ref = p.customer_ref
                     AND c.status = 'granted'
      JOIN customers cu ON cu.channel = c.chat_channel AND cu.channel_user_id = c.chat_user_id
      JOIN conversations cv ON cv.customer_id = cu.id AND cv.merchant_id = p.merchant_id
      JOIN touchpoints t ON t.conversation_id = cv.id AND t.occurred_at <= p.at
                        AND t.kind IN ('clicked', 'accepted', 'viewed')
      JOIN offers o ON o.id = t.offer_id
      LEFT JOIN attribution_settings s ON s.merchant_id = p.merchant_id
     WHERE t.occurred_at > p.at - make_interval(secs => CASE WHEN t.kind = 'viewed'
               THEN coalesce(o.view_window_seconds, s.view_window_seconds, 86400)
               ELSE coalesce(o.click_window_seconds, s.click_window_seconds, 604800) END)
), refunds AS (
    SELECT f.partner_id, f.original_transaction_id AS transaction_id,
           array_agg(f.occurred_at) AS ats, array_agg(f.amount) AS amounts
      FROM card_transactions f
     WHERE f.kind = 'refunded' AND {_usable("f")}
     GROUP BY 1, 2
), reversals AS (
    SELECT f.partner_id, coalesce(f.original_transaction_id, f.transaction_id) AS transaction_id,
           min(f.occurred_at) AS first_at
      FROM card_transactions f
     WHERE f.kind = 'reversed' AND {_usable("f")}
     GROUP BY 1, 2
), credit AS (
    SELECT t.partner_id || ':' || t.transaction_id AS purchase_key, t.touchpoint_id, t.amount,
           row_number() OVER (PARTITION BY t.partner_id, t.transaction_id
                              ORDER BY t.touched_at, t.touchpoint_id) AS n,
           count(*) OVER (PARTITION BY t.partner_id, t.transaction_id) AS k,
           coalesce((SELECT sum(x.amount) FROM unnest(f.ats, f.amounts) AS x(at, amount)
                      WHERE x.at <= t.at + make_interval(days => t.return_days)), 0)
             AS refunds,
           v.first_at <= t.at + make_interval(days => t.return_days) AS reversed
      FROM touch t
      LEFT JOIN refunds f ON f.partner_id = t.partner_id AND f.transaction_id = t.transaction_id
      LEFT JOIN reversals v ON v.partner_id = t.partner_id
                           AND v.transaction_id = t.transaction_id
), share AS (
    SELECT purchase_key, touchpoint_id, n, k, amount,
           CAST(least(refunds, amount) AS bigint) AS refunded,
           CASE WHEN reversed OR refunds >= amount THEN 'taken_back' ELSE 'active' END
             AS status
      FROM credit
)
SELECT purchase_key, m.model, touchpoint_id,
       CASE m.model WHEN 'linear' THEN amount * n / k - amount * (n - 1) / k ELSE amount END,
       CASE m.model WHEN 'linear' THEN refunded * n / k - refunded * (n - 1) / k
            ELSE refunded END,
       status
  FROM share
 CROSS JOIN (VALUES ('last_touch'), ('first_touch'), ('linear')) AS m(model)
 WHERE m.model = 'linear' OR (m.model = 'first_touch' AND n = 1)
    OR (m.model = 'last_touch' AND n = k)
"""

#: The engine's credits are read through the view `attribution_credits`, which gives each
#: model's credits from its one row per purchase and touchpoint.
COMPARE = """
SELECT
  (SELECT count(*) FROM (SELECT purchase_key, model, touchpoint_id, amount
                           FROM attribution_credits
                         EXCEPT ALL
                         SELECT purchase_key, model, touchpoint_id, amount
                           FROM bench_ref_credits) x),
  (SELECT count(*) FROM (SELECT purchase_key, model, touchpoint_id, amount FROM bench_ref_credits
                         EXCEPT ALL
                         SELECT purchase_key, model, touchpoint_id, amount
                           FROM attribution_credits) x),
  (SELECT count(*) FROM (SELECT purchase_key, model, touchpoint_id, amount, refunded, status
                           FROM attribution_credits
                         EXCEPT ALL
                         SELECT purchase_key, model, touchpoint_id, amount, refunded, status
                           FROM bench_ref_credits) x),
  (SELECT count(*) FROM attributions)
"""

SHAPE = """
SELECT count(*) FILTER (WHERE k = 1), count(*) FILTER (WHERE k BETWEEN 2 AND 3),
       count(*) FILTER (WHERE k >= 4), coalesce(max(k), 0),
       (SELECT count(*) FROM bench_ref_credits),
       (SELECT count(*) FROM bench_ref_credits WHERE status = 'taken_back')
  FROM (SELECT purchase_key, count(*) AS k FROM bench_ref_credits WHERE model = 'linear'
         GROUP BY 1) x
"""


def _engine_module(path: str | None) -> Any:
    """commerce.attribution.engine, or a private copy of it (to measure a proposed fix)."""
    if not path:
        from commerce.attribution import engine

        return engine
    import importlib.util

    spec = importlib.util.spec_from_file_location("attribution_engine_copy", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_engine(
    url: str, module_path: str | None = None, timeout: float | None = None
) -> tuple[float, Any]:
    """Seconds and outcome of the batch; the outcome is None if it was cancelled after
    `timeout` seconds (the engine lifts statement_timeout, so the bench cancels it)."""
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from commerce import runtime
    from commerce.db import transaction

    attribution = _engine_module(module_path)
    factory = runtime.configure_database(url)
    with factory() as probe:
        probe.execute(text("SELECT 1"))
    timer = None
    began = time.monotonic()
    try:
        with transaction(factory) as session:
            if timeout:
                pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()

                def cancel() -> None:
                    with runtime.engine().connect() as connection:
                        connection.execute(text("SELECT pg_cancel_backend(:p)"), {"p": pid})

                timer = threading.Timer(timeout, cancel)
                timer.start()
            outcome = attribution.attribute_period(session, PERIOD_START, PERIOD_END)
    except OperationalError as error:
        if "canceling statement" not in str(error):
            raise
        outcome = None
    finally:
        if timer is not None:
            timer.cancel()
    elapsed = time.monotonic() - began
    runtime.engine().dispose()
    return elapsed, outcome


def run_reference(engine: Any) -> float:
    from sqlalchemy import text

    began = time.monotonic()
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL jit = off"))
        connection.execute(text(REFERENCE), {"start": PERIOD_START, "end": PERIOD_END})
    return time.monotonic() - began


def reset(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as connection:
        connection.execute(text(SCRATCH))
        connection.execute(text("TRUNCATE attributions, bench_ref_credits"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE attributions"))
        connection.execute(text("VACUUM ANALYZE bench_ref_credits"))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--touchpoints", type=int, help="default: 10 per purchase")
    parser.add_argument("--database-url", help="default: CHATLEDGER_DATABASE_URL")
    parser.add_argument("--database", help="reuse this database (kept by --keep), data and all")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--rounds", type=int, default=1, help="engine and reference runs each")
    parser.add_argument(
        "--engine-timeout", type=float, help="cancel the engine's batch after this many seconds"
    )
    parser.add_argument(
        "--engine-module", help="time this private copy of the engine module instead"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy import text

    import migrations
    from commerce.db import make_engine

    args = parse_args(argv)
    touchpoints = args.touchpoints or 10 * args.purchases
    base_url = args.database_url or os.environ.get("CHATLEDGER_DATABASE_URL", DEFAULT_DATABASE_URL)
    command = "bench/attribution.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info(
        base_url, os.environ.get("CHATLEDGER_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    with bench_database(base_url, reuse=args.database, keep=args.keep) as (name, url, fresh):
        log(f"database {name}")
        engine = make_engine(url, connect_args={}, pool_size=2)
        try:
            timings: dict[str, float] = {}
            # A reused database may predate the latest migration; its data is the same.
            migrations.upgrade(url)
            if fresh:
                timings = generate(engine, args.purchases, touchpoints)
            log("verifying constraints")
            broken = verify(engine)
            with engine.connect() as connection:
                counts = {
                    t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in (
                        "touchpoints",
                        "card_transactions",
                        "reconciliation_exceptions",
                        "consents",
                        "conversations",
                        "offers",
                    )
                }
                size = connection.execute(
                    text("SELECT pg_size_pretty(pg_database_size(current_database()))")
                ).scalar_one()
            rounds = []
            for round_no in range(args.rounds):
                reset(engine)
                log(f"round {round_no + 1}: reference")
                ref_s = run_reference(engine)
                log(f"reference {ref_s:.1f} s; engine")
                eng_s, outcome = run_engine(url, args.engine_module, args.engine_timeout)
                log(f"engine {eng_s:.1f} s: {outcome}")
                with engine.connect() as connection:
                    diff = connection.execute(text(COMPARE)).one()
                    shape = connection.execute(text(SHAPE)).one()
                rounds.append((ref_s, eng_s, outcome, tuple(diff), tuple(shape)))
                log(f"differences {tuple(diff)}; shape {tuple(shape)}")
        finally:
            engine.dispose()
        if args.keep:
            log(f"--keep: database {name} kept")
    report = render(args, touchpoints, command, timings, broken, counts, size, rounds, machine)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"attribution-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(report)
    log(f"written to {path}")
    return 0


def render(
    args: argparse.Namespace,
    touchpoints: int,
    command: str,
    timings: dict[str, float],
    broken: dict[str, int],
    counts: dict[str, int],
    size: str,
    rounds: list[tuple[float, float, Any, tuple[int, ...], tuple[int, ...]]],
    machine: Any,
) -> str:
    bad = {k: v for k, v in broken.items() if v}
    out = [
        f"# Attribution batch at scale ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `.venv/bin/python {command.strip()}`",
        "",
        f"- data: {counts['touchpoints']:,} touchpoints, {args.purchases:,} purchases "
        f"({counts['card_transactions']:,} card transactions with refunds and reversals, "
        f"{counts['reconciliation_exceptions']:,} orphan_transaction exceptions), "
        f"{counts['consents']:,} consents, {counts['conversations']:,} conversations, "
        f"{counts['offers']:,} offers over {PERIOD_DAYS} days; database {size}",
        "- engine: "
        + (
            f"a private copy, {args.engine_module}"
            if args.engine_module
            else "commerce/attribution/engine.py"
        ),
        "- load: " + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "reused"),
        f"- constraints checked after the load: {len(broken)}, "
        + ("all hold" if not bad else f"BROKEN: {bad}"),
        "",
        "| round | eligible purchases | credits (engine rows) | purchases with 1 / 2-3 / 4+ "
        "touches (max) | taken back | reference s | engine s | engine / reference "
        "| same credits |",
        "| --: | --: | --: | --- | --: | --: | --: | --: | --- |",
    ]
    for i, (ref_s, eng_s, outcome, diff, shape) in enumerate(rounds, 1):
        one, few, many, most, credits, back = shape
        if outcome is None:
            out.append(
                f"| {i} | ? | {credits:,} (reference) | {one:,} / {few:,} / {many:,} ({most}) | "
                f"{back:,} | {ref_s:.1f} | cancelled after {eng_s:.0f} | > {eng_s / ref_s:.0f}x "
                "| not finished |"
            )
            continue
        same = "yes" if diff[0] == diff[1] == 0 else f"NO (+{diff[0]} / -{diff[1]})"
        if diff[2]:
            same += f" ({diff[2]} differ in refunded or status)"
        out.append(
            f"| {i} | {outcome.purchases:,} | {credits:,} ({diff[3]:,}) | {one:,} / {few:,} / "
            f"{many:,} ({most}) | {back:,} | {ref_s:.1f} | {eng_s:.1f} | {eng_s / ref_s:.2f}x | "
            f"{same} |"
        )
    out += [
        "",
        "Eligible purchases: usable for sales_attribution and left as an unresolved "
        "orphan_transaction (the engine's count); the others have no touch in their windows. "
        "Each side runs in one transaction, committed, jit off, default work_mem; the engine "
        "writes one row per purchase and touchpoint into an empty `attributions` table (its "
        "credits under each model are read through the view `attribution_credits`), the "
        "reference one row per model's credit into an unindexed scratch table. Same credits: "
        "the sets of (purchase, model, touchpoint, amount) are equal.",
        "",
        "Machine:",
        "",
        machine.markdown(),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
