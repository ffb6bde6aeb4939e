"""Alembic environment: targets the metadata of every model (migrations.metadata)."""

from __future__ import annotations

from alembic import context

from commerce.db import make_engine
from migrations import metadata

config = context.config


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=None)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata(),
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        # One migrator at a time: several processes may start together in production.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7253916114)")
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against the database")
run_migrations_online()
