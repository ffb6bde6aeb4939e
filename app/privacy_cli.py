"""`chatledger privacy scan`: look for card numbers where none may be (SPEC 4.3, issue 4).

    chatledger privacy scan [PATHS...] [--database-url URL] [--redis-url URL]
                            [--test-pan PAN ...] [--test-pans-file FILE]

Scans files and directories (recursively: dumps, logs, anything, gzip/bzip2/xz decompressed),
every table of a PostgreSQL database (streamed with COPY, no pg_dump needed) and every key of
a Redis database, with `commerce.cards.privacy_scan`. Prints one line per finding,
``source:offset: kind (brand, last four)``, never more of a number than its last four
digits, then a summary.

Exit status: 1 when anything was found; otherwise 2 when something could not be read (a
file, a table, a key, a server), 0 when everything was read and is clean. Usage errors
(a missing path, a malformed URL or test number, nothing to scan) exit 2 before scanning.
There is no allowlist: every finding counts.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from commerce.cards.privacy_scan import (
    ErrorSink,
    Finding,
    KnownCards,
    Scanner,
    scan_paths,
    scan_postgres,
    scan_redis,
)

FOUND = 1
INCOMPLETE = 2

_DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


@click.group()
def privacy() -> None:
    """Card privacy checks."""


@privacy.command("scan")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--database-url", metavar="URL", help="PostgreSQL database to read, every table.")
@click.option("--redis-url", metavar="URL", help="Redis database to read, every key.")
@click.option(
    "--test-pan",
    "test_pans",
    multiple=True,
    metavar="PAN",
    help="A test card number: its digits, even glued to others, and its MD5/SHA-1/SHA-256 "
    "digests must appear nowhere (repeatable).",
)
@click.option(
    "--test-pans-file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="FILE",
    help="Test card numbers, one a line (blank lines and # comments ignored).",
)
def scan(
    paths: tuple[Path, ...],
    database_url: str | None,
    redis_url: str | None,
    test_pans: tuple[str, ...],
    test_pans_file: Path | None,
) -> None:
    """Find card numbers, and digests of test card numbers, in PATHS, a database and Redis.

    Exits 1 when anything is found, 2 when something could not be read, 0 when clean.
    """
    scanner = Scanner(_known_cards(test_pans, test_pans_file))
    _check_paths(scanner, paths)
    database = _database_url(database_url) if database_url is not None else None
    redis_client = _redis_client(redis_url) if redis_url is not None else None
    if not paths and database is None and redis_client is None:
        raise click.UsageError("nothing to scan: give PATHS, --database-url or --redis-url")

    errors: list[str] = []

    def on_error(message: str) -> None:
        errors.append(message)
        click.echo(f"error: {message}", err=True)

    kinds: Counter[str] = Counter()
    for finding in _findings(scanner, paths, database, redis_client, on_error):
        kinds[finding.kind] += 1
        click.echo(str(finding))

    total = sum(kinds.values())
    detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    click.echo(
        f"privacy scan: {total} finding{'' if total == 1 else 's'}"
        + (f" ({detail})" if detail else "")
        + f" in {scanner.sources} source{'' if scanner.sources == 1 else 's'}"
        + f", {scanner.bytes_scanned} bytes read"
        + (f"; {len(errors)} could not be read" if errors else "")
    )
    if total:
        sys.exit(FOUND)
    if errors:
        sys.exit(INCOMPLETE)


def _findings(
    scanner: Scanner,
    paths: tuple[Path, ...],
    database: str | None,
    redis_client: Any,
    on_error: ErrorSink,
) -> Iterator[Finding]:
    if paths:
        yield from scan_paths(scanner, paths, on_error)
    if database is not None:
        yield from _scan_database(scanner, database, on_error)
    if redis_client is not None:
        yield from _scan_redis(scanner, redis_client, on_error)


def _known_cards(test_pans: tuple[str, ...], test_pans_file: Path | None) -> KnownCards:
    pans = list(test_pans)
    if test_pans_file is not None:
        try:
            lines = test_pans_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise click.UsageError(f"--test-pans-file: cannot read it ({reason})") from None
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                try:
                    KnownCards([text])
                except ValueError:
                    raise click.UsageError(
                        f"--test-pans-file line {number}: not a card number "
                        "(12 to 19 digits, spaces or dashes between groups)"
                    ) from None
                pans.append(text)
    try:
        return KnownCards(pans)
    except ValueError as exc:  # the message numbers the bad one, never repeats it
        raise click.UsageError(f"--test-pan: {exc}") from None


def _check_paths(scanner: Scanner, paths: tuple[Path, ...]) -> None:
    problems = []
    for path in paths:
        label = scanner.label(os.fsencode(path))
        if not path.exists():
            problems.append(f"{label}: no such file or directory")
        elif not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            problems.append(f"{label}: permission denied")
    if problems:
        raise click.UsageError("cannot read " + "; ".join(problems))


def _database_url(url: str) -> str:
    """A libpq URL for psycopg, from the URL forms chatledger accepts."""
    parts = urlsplit(url)
    if parts.scheme not in _DATABASE_SCHEMES or not (parts.netloc or parts.query):
        raise click.UsageError(
            "--database-url: expected postgresql://user:password@host:port/database"
        )
    return urlunsplit(("postgresql", *parts[1:]))


def _redis_client(url: str) -> Any:
    import redis

    parts = urlsplit(url)
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if parts.scheme not in _REDIS_SCHEMES or (database and not database.isdigit()):
        # redis-py would read a malformed database number as database 0: refuse it.
        raise click.UsageError("--redis-url: expected redis://host:port/db (or rediss://, unix://)")
    try:
        return redis.Redis.from_url(
            url, socket_connect_timeout=10, socket_timeout=60, decode_responses=False
        )
    except ValueError as exc:
        raise click.UsageError(f"--redis-url: {exc}") from None


def _scan_database(scanner: Scanner, url: str, on_error: ErrorSink) -> Iterator[Finding]:
    import psycopg

    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        on_error(f"database: cannot connect: {str(exc).strip()}")
        return
    with connection:
        try:
            yield from scan_postgres(scanner, connection, on_error)
        except psycopg.Error as exc:  # listing the tables failed, or the server went away
            on_error(f"database: {str(exc).strip()}")


def _scan_redis(scanner: Scanner, client: Any, on_error: ErrorSink) -> Iterator[Finding]:
    import redis

    try:
        client.ping()
        yield from scan_redis(scanner, client, on_error)
    except redis.RedisError as exc:
        on_error(f"redis: {exc}")
    finally:
        client.close()
