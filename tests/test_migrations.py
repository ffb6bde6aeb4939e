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
