"""The migrations: they build exactly the models' schema, and they encode the rules."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import migrations as migrate
from tests.helpers import open_shop


def test_models_and_migrations_agree(engine):
    differences = migrate.drift(engine)
    assert differences == [], f"write a migration for: {differences}"


def test_constraint_names_follow_the_convention(engine):
    with engine.connect() as connection:
        names = (
            connection.execute(
                text(
                    "SELECT conname FROM pg_constraint c"
                    " JOIN pg_namespace n ON n.oid = c.connamespace"
                    " WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f', 'c')"
                    " AND c.conname <> 'alembic_version_pkc'"
                )
            )
            .scalars()
            .all()
        )
    assert names
    assert all(name.split("_", 1)[0] in {"pk", "uq", "fk", "ck"} for name in names), names


@pytest.mark.parametrize(
    "statement", ["UPDATE sale_events SET amount = 1", "DELETE FROM sale_events"]
)
def test_sale_history_is_append_only(client, db, stripe, statement):
    shop = open_shop(client)
    response = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers)
    assert response.status_code == 201
    assert db.execute(text("SELECT count(*) FROM sale_events")).scalar_one() >= 1
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(text(statement))


def test_reshaping_attributions_queues_their_cardholders_to_be_attributed_again(servers):
    """0013 cannot turn per-model credits into per-touchpoint rows exactly, so it queues
    the cardholders for the drain and empties the table; its downgrade does the same."""
    import secrets

    from sqlalchemy import create_engine

    from tests.support.stack import with_database

    name = f"chatledger_migration_{secrets.token_hex(3)}"
    admin = create_engine(servers.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = with_database(servers.database_url, name)
    engine = create_engine(url)
    try:
        migrate.upgrade(url, "0012")
        with engine.begin() as connection:
            # Only the rows the migration reads; the foreign keys are not its subject.
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            connection.execute(
                text(
                    "INSERT INTO merchants (id, name, timezone, created_at)"
                    " VALUES ('mer_1', 'Shop', 'UTC', now())"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO card_transactions (id, partner_id, kind, transaction_id,"
                    " customer_ref, amount, currency, occurred_at, purposes, created_at)"
                    " VALUES ('ctx_1', 'prt_1', 'authorized', 'tx-1', 'cust-1', 900, 'USD',"
                    " now(), ARRAY['sales_attribution'], now())"
                )
            )
            for model in ("last_touch", "first_touch", "linear"):
                connection.execute(
                    text(
                        "INSERT INTO attributions (id, merchant_id, model, purchase_key,"
                        " card_transaction_id, offer_id, conversation_id, touchpoint_id,"
                        ' touch_kind, "window", weight, amount, refunded, currency,'
                        " purchased_at, touched_at, status, cardholder, created_at,"
                        " updated_at) VALUES (:id, 'mer_1', :model, 'prt_1:tx-1', 'ctx_1',"
                        " 'off_1', 'cnv_1', 'tpt_1', 'clicked', 'click_7d', 1, 900, 0, 'USD',"
                        " now(), now(), 'active', 'h', now(), now())"
                    ),
                    {"id": f"atr_{model}", "model": model},
                )
        migrate.upgrade(url, "0013")
        queued = "SELECT merchant_id, partner_id, customer_ref FROM reconciliation_queue"
        with engine.connect() as connection:
            assert connection.execute(text(queued)).all() == [("mer_1", "prt_1", "cust-1")]
            assert connection.execute(text("SELECT count(*) FROM attributions")).scalar() == 0
            assert (
                connection.execute(text("SELECT count(*) FROM attribution_credits")).scalar() == 0
            )
        migrate.downgrade(url, "0012")
        with engine.connect() as connection:
            columns = connection.execute(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'attributions'"
                )
            ).scalars()
            assert {"model", "weight"} <= set(columns)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
