"""The `chatledger` command.

chatledger run               start the service (embedded servers unless URLs are set)
chatledger db upgrade        apply the migrations
chatledger db check          fail when the models and the migrations disagree
chatledger keys create-operator   print a new operator key, once
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import click

from app.config import PREFIX, ConfigError, Settings


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
    from app.runner import run_service
    from commerce import migrate, runtime
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
        env = {
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
    from commerce import migrate

    with _servers(_settings()) as (database_url, _):
        migrate.upgrade(database_url, revision)
    click.echo("database is up to date")


@db.command("check")
def db_check() -> None:
    """Exit non-zero when the models and the migrated database disagree."""
    from commerce import migrate
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


if __name__ == "__main__":
    main()
