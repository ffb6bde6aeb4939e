"""The `chatledger` command.

chatledger run               start the service (embedded servers unless URLs are set)
chatledger db upgrade        apply the migrations
chatledger db check          fail when the models and the migrations disagree
chatledger keys create-operator   print a new operator key, once
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator

import click

from app.config import PREFIX, ConfigError, Settings
from app.privacy_cli import privacy


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@contextlib.contextmanager
def _servers(settings: Settings) -> Iterator[tuple[str, str]]:
    """The database and Redis URLs: the configured ones, or embedded servers for the duration."""
    if settings.database_url and settings.redis_url:
        yield settings.database_url, settings.redis_url
        return
    from app.embedded import EmbeddedServers

    with EmbeddedServers(settings.data_dir) as servers:
        # A configured URL always wins; the embedded server stands in for the missing one.
        yield (
            settings.database_url or servers.database_url,
            settings.redis_url or servers.redis_url,
        )


def _operator_key(settings: Settings) -> tuple[str, bool]:
    """The configured operator key, or the one kept in the data folder (made on first run)."""
    if settings.operator_key:
        return settings.operator_key, False
    from commerce.access.services import OPERATOR, generate_key

    path = settings.data_dir / "operator_key"
    if path.exists():
        return path.read_text().strip(), False
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key(OPERATOR)
    # Created 0600 before the key is written: no moment where others can read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True


@click.group()
def main() -> None:
    """chatledger: the books of sales made in chat."""


@main.command()
def run() -> None:
    """Start the web server, a Celery worker and its beat schedule."""
    import migrations as migrate
    from app.runner import run_service
    from commerce import runtime
    from commerce.access.services import ensure_operator_key
    from commerce.db import transaction

    settings = _settings()
    with _servers(settings) as (database_url, redis_url):
        click.echo("applying migrations ...")
        migrate.upgrade(database_url)
        key, generated = _operator_key(settings)
        with transaction(runtime.configure_database(database_url)) as session:
            ensure_operator_key(session, key)
        runtime.engine().dispose()

        url = f"http://{settings.host}:{settings.port}"
        click.echo(f"chatledger on {url}  (API docs: {url}/docs)")
        where = f" (kept in {settings.data_dir / 'operator_key'})" if generated else ""
        click.echo(f"operator key: {key}{where}")
        # Each gunicorn worker writes its metrics here; /metrics adds them up.
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = {
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            PREFIX + "DATABASE_URL": database_url,
            PREFIX + "REDIS_URL": redis_url,
            PREFIX + "OPERATOR_KEY": key,
            PREFIX + "DATA_DIR": str(settings.data_dir),
        }
        code = run_service(host=settings.host, port=settings.port, env=env)
    sys.exit(code)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations up to REVISION."""
    import migrations as migrate

    with _servers(_settings()) as (database_url, _):
        migrate.upgrade(database_url, revision)
    click.echo("database is up to date")


@db.command("check")
def db_check() -> None:
    """Exit non-zero when the models and the migrated database disagree."""
    import migrations as migrate
    from commerce.db import make_engine

    with _servers(_settings()) as (database_url, _):
        migrate.upgrade(database_url)
        engine = make_engine(database_url)
        try:
            differences = migrate.drift(engine)
        finally:
            engine.dispose()
    if differences:
        for difference in differences:
            click.echo(f"  {difference}", err=True)
        raise click.ClickException("models and migrations disagree; write a migration")
    click.echo("models and migrations agree")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-key every stored card hash to the newest CHATLEDGER_CARD_KEYS key (put the new key
    first, keep the old ones listed until this has run)."""
    from commerce import runtime
    from commerce.cards.keys import rotate
    from commerce.cards.scrub import CardHasher
    from commerce.db import transaction

    settings = _settings()
    if not settings.card_keys:
        raise click.ClickException("configuration: CHATLEDGER_CARD_KEYS is not set")
    hasher = CardHasher(settings.card_keys)
    with (
        _servers(settings) as (database_url, _),
        transaction(runtime.configure_database(database_url)) as session,
    ):
        count = rotate(session, hasher)
    click.echo(f"{count} card hashes re-keyed to {hasher.newest_version}")


@keys.command("create-operator")
def keys_create_operator() -> None:
    """Create an operator key and print it; only its hash is kept."""
    from commerce import runtime
    from commerce.access.services import OPERATOR, issue_key
    from commerce.db import transaction

    with _servers(_settings()) as (database_url, _):
        with transaction(runtime.configure_database(database_url)) as session:
            key, secret = issue_key(session, role=OPERATOR)
        runtime.engine().dispose()
    click.echo(f"{key.id} {secret}")


@main.group()
def webhooks() -> None:
    """Inbound events."""


@webhooks.command("replay")
@click.argument("inbox_ids", nargs=-1)
@click.option("--status", type=click.Choice(["failed", "waiting", "ignored"]), default=None)
@click.option("--source", default=None, help="stripe, partner:<id> or chat:<channel>")
@click.option("--type", "event_type", default=None, help="an event type, e.g. refund.updated")
@click.option("--since", type=click.DateTime(), default=None, help="received at or after")
def webhooks_replay(
    inbox_ids: tuple[str, ...],
    status: str | None,
    source: str | None,
    event_type: str | None,
    since: object,
) -> None:
    """Process stored events again: by id, or every event matching the filters."""
    from sqlalchemy import select

    from app.worker import create_celery
    from commerce import runtime
    from commerce.db import transaction
    from webhooks import inbox
    from webhooks.models import InboxEvent

    settings = _settings()
    if not inbox_ids and not (status or source or event_type or since):
        raise click.UsageError("name inbox ids, or filter with --status/--source/--type/--since")
    with _servers(settings) as (database_url, redis_url):
        import dataclasses

        create_celery(
            dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)
        ).set_default()
        with transaction(runtime.configure_database(database_url)) as session:
            query = select(InboxEvent.id)
            if inbox_ids:
                query = query.where(InboxEvent.id.in_(inbox_ids))
            if status:
                query = query.where(InboxEvent.status == status)
            if source:
                query = query.where(InboxEvent.source == source)
            if event_type:
                query = query.where(InboxEvent.event_type == event_type)
            if since:
                query = query.where(InboxEvent.received_at >= since)
            count = inbox.reset_for_replay(session, list(session.scalars(query)))
    click.echo(f"{count} events sent for processing")


@main.group()
def stripe() -> None:
    """Stripe."""


@stripe.command("backfill")
@click.option("--since", type=click.DateTime(), required=True, help="events created since (UTC)")
def stripe_backfill(since: object) -> None:
    """Fetch Stripe's events since a time and store those the inbox lacks, as if delivered."""
    import dataclasses
    from datetime import UTC, datetime

    from app.worker import create_celery
    from commerce import runtime
    from commerce.payments.stripe import StripeProvider
    from webhooks import inbox
    from webhooks.receive import accept_stripe_event

    settings = _settings()
    if not settings.stripe_api_key:
        raise click.ClickException("configuration: CHATLEDGER_STRIPE_API_KEY is not set")
    assert isinstance(since, datetime)
    start = int(since.replace(tzinfo=since.tzinfo or UTC).timestamp())
    provider = StripeProvider(settings.stripe_api_key, api_base=settings.stripe_api_base)
    added = seen = 0
    with _servers(settings) as (database_url, redis_url):
        create_celery(
            dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)
        ).set_default()
        runtime.configure_database(database_url)
        for event in provider.list_events(since=start):
            seen += 1
            with runtime.connection() as connection:
                stored = accept_stripe_event(
                    connection, event, str(event.get("type", "")), headers={"backfill": True}
                )
            if stored.created and stored.status == "pending":
                inbox.send(stored.id)
            added += stored.created
    click.echo(f"{seen} events listed by Stripe, {added} were missing and are now stored")


@main.command("reconcile")
@click.option("--from", "start", type=click.DateTime(), required=True, help="start (UTC)")
@click.option("--to", "end", type=click.DateTime(), required=True, help="end, excluded (UTC)")
@click.option("--merchant", "merchant_id", default=None, help="one merchant only")
def reconcile(start: object, end: object, merchant_id: str | None) -> None:
    """Reconcile every sale and card purchase of a period as a batch, and print the summary.

    Running it again over the same period changes nothing (docs/RECONCILIATION.md).
    """
    import json
    from datetime import UTC, datetime

    from commerce import runtime
    from commerce.db import transaction
    from commerce.errors import InvalidInput
    from commerce.merchants.models import Merchant
    from commerce.reconciliation import engine, services

    assert isinstance(start, datetime)
    assert isinstance(end, datetime)
    settings = _settings()
    engine.configure(batch_sessions=settings.reconciliation_batch_sessions)
    with _servers(settings) as (database_url, _):
        runtime.configure_database(database_url)
        try:
            with transaction(runtime.sessions()) as session:
                if merchant_id is not None and session.get(Merchant, merchant_id) is None:
                    raise click.ClickException(f"no merchant {merchant_id}")
                run = services.create_run(
                    session,
                    merchant_id=merchant_id,
                    start=start.replace(tzinfo=start.tzinfo or UTC),
                    end=end.replace(tzinfo=end.tzinfo or UTC),
                )
                services.execute_run(session, run.id, sessions=runtime.sessions())
                summary = run.summary
        except InvalidInput as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items())
            raise click.ClickException(problems) from None
    click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@main.group()
def reports() -> None:
    """Report rollups."""


@reports.command("rebuild")
@click.option("--merchant", "merchant_id", default=None, help="one merchant's rollups only")
def reports_rebuild(merchant_id: str | None) -> None:
    """Recompute the report rollups from the sales and touchpoints, from scratch.

    Safe while the service runs: changes committed meanwhile are folded in afterwards.
    """
    from commerce.db import make_engine
    from commerce.reports import rollups

    with _servers(_settings()) as (database_url, _):
        engine = make_engine(database_url, connect_args={})
        try:
            rows = rollups.rebuild(engine, merchant_id=merchant_id)
            folded = rollups.fold(engine).folded
        finally:
            engine.dispose()
    click.echo(f"{rows} rollup rows rebuilt; {folded} later changes folded in")


main.add_command(privacy)


if __name__ == "__main__":
    main()
