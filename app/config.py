"""Settings: read once from the environment into one immutable, validated object.

Every variable is optional in embedded mode (SPEC section 8). A bad value stops
start-up with a `ConfigError` that names the variable, so an operator never has
to guess which of twenty settings broke the boot.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from commerce.alerts.rules import Thresholds

PREFIX = "CHATLEDGER_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True, slots=True)
class CardKey:
    """One versioned key for hashing card numbers; the key bytes never reach the database."""

    version: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    #: SQLAlchemy URL of PostgreSQL; None means the embedded server in `data_dir`.
    database_url: str | None
    #: Redis URL; None means the embedded server in `data_dir`.
    redis_url: str | None
    data_dir: Path
    host: str
    port: int
    #: The operator's API key; None means one is generated and kept in `data_dir`.
    operator_key: str | None = field(repr=False)
    stripe_api_key: str | None = field(repr=False)
    #: Stripe's API base; set only to reach a local stand-in in tests.
    stripe_api_base: str | None
    stripe_webhook_secrets: tuple[str, ...] = field(repr=False)
    chat_app_secret: str | None = field(repr=False)
    chat_verify_token: str | None = field(repr=False)
    chat_api_base: str | None
    #: Newest first: the first key hashes new data, the others still verify old hashes.
    card_keys: tuple[CardKey, ...] = field(repr=False)
    #: Requests per minute allowed to one API key.
    rate_limit_per_minute: int = 600
    #: Largest request body accepted, in bytes; larger ones get 413.
    max_body_bytes: int = 256 * 1024
    log_level: str = "INFO"
    #: Report cells drawn from partner data covering fewer distinct cardholders are hidden.
    report_min_cardholders: int = 5
    #: Messenger page access tokens, (page id, token), for the send API; the first page is
    #: the one fraud alerts and balance replies are sent from. Never in the database.
    chat_page_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: The fraud-alert rules' thresholds, one CHATLEDGER_ALERT_* variable each.
    alert_thresholds: Thresholds = field(default_factory=Thresholds)
    #: A balance snapshot older than this is told as stale.
    balance_stale_after: timedelta = timedelta(hours=24)
    #: Chunks of a reconciliation batch run at the same time, each in a database session of
    #: its own (about one per core the database can give the batch).
    reconciliation_batch_sessions: int = 2

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.redis_url is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        return cls(
            database_url=reader.url("DATABASE_URL", schemes=("postgresql", "postgresql+psycopg")),
            redis_url=reader.url("REDIS_URL", schemes=("redis", "rediss", "unix")),
            data_dir=Path(reader.text("DATA_DIR") or "./var").resolve(),
            host=reader.text("HOST") or "127.0.0.1",
            port=reader.integer("PORT", default=8000, low=1, high=65535),
            operator_key=reader.secret("OPERATOR_KEY", min_length=24),
            stripe_api_key=reader.secret("STRIPE_API_KEY", pattern=r"(sk|rk)_(test|live)_\w+"),
            stripe_api_base=reader.url("STRIPE_API_BASE", schemes=("http", "https")),
            stripe_webhook_secrets=reader.csv("STRIPE_WEBHOOK_SECRETS", pattern=r"whsec_\S+"),
            chat_app_secret=reader.secret("CHAT_APP_SECRET", min_length=8),
            chat_verify_token=reader.secret("CHAT_VERIFY_TOKEN", min_length=8),
            chat_api_base=reader.url("CHAT_API_BASE", schemes=("http", "https")),
            card_keys=reader.card_keys("CARD_KEYS"),
            rate_limit_per_minute=reader.integer("RATE_LIMIT_PER_MINUTE", default=600, low=1),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", default=256 * 1024, low=1024),
            log_level=reader.choice(
                "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"
            ),
            report_min_cardholders=reader.integer(
                "REPORT_MIN_CARDHOLDERS", default=5, low=2, high=1000
            ),
            chat_page_tokens=reader.page_tokens("CHAT_PAGE_TOKENS"),
            alert_thresholds=_alert_thresholds(reader),
            balance_stale_after=timedelta(
                hours=reader.integer("BALANCE_STALE_HOURS", default=24, low=1, high=24 * 365)
            ),
            reconciliation_batch_sessions=reader.integer(
                "RECONCILIATION_BATCH_SESSIONS", default=2, low=1, high=32
            ),
        )


def _alert_thresholds(reader: _Reader) -> Thresholds:
    """The fraud rules' thresholds; each unset variable keeps the rule's default."""
    default = Thresholds()
    week = 7 * 24 * 60

    def minutes(name: str, value: timedelta) -> timedelta:
        default_minutes = int(value.total_seconds() // 60)
        return timedelta(minutes=reader.integer(name, default=default_minutes, low=1, high=week))

    return Thresholds(
        velocity_count=reader.integer(
            "ALERT_VELOCITY_COUNT", default=default.velocity_count, low=2, high=1000
        ),
        velocity_window=minutes("ALERT_VELOCITY_WINDOW_MINUTES", default.velocity_window),
        amount_factor=reader.integer(
            "ALERT_AMOUNT_FACTOR", default=default.amount_factor, low=2, high=1000
        ),
        amount_min_history=reader.integer(
            "ALERT_AMOUNT_MIN_HISTORY", default=default.amount_min_history, low=1, high=1000
        ),
        new_country_min_history=reader.integer(
            "ALERT_NEW_COUNTRY_MIN_HISTORY",
            default=default.new_country_min_history,
            low=1,
            high=1000,
        ),
        duplicate_window=minutes("ALERT_DUPLICATE_WINDOW_MINUTES", default.duplicate_window),
        new_merchant_min_history=reader.integer(
            "ALERT_NEW_MERCHANT_MIN_HISTORY",
            default=default.new_merchant_min_history,
            low=1,
            high=1000,
        ),
        lookback=timedelta(
            days=reader.integer(
                "ALERT_LOOKBACK_DAYS", default=default.lookback.days, low=1, high=3650
            )
        ),
    )


class _Reader:
    """Reads `CHATLEDGER_<NAME>` variables; every failure names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str | None:
        value = self._env.get(PREFIX + name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def secret(self, name: str, *, min_length: int = 1, pattern: str | None = None) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        if len(value) < min_length:
            raise ConfigError(PREFIX + name, f"must be at least {min_length} characters long")
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(PREFIX + name, "has the wrong format")
        return value

    def url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ConfigError(
                PREFIX + name, f"must be a URL starting with one of {', '.join(schemes)}"
            )
        if parts.scheme not in ("unix",) and not (parts.netloc or parts.query):
            raise ConfigError(PREFIX + name, "must name a host")
        return value

    def integer(self, name: str, *, default: int, low: int, high: int | None = None) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value, 10)
        except ValueError:
            raise ConfigError(PREFIX + name, "must be a whole number") from None
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(PREFIX + name, f"must be {bound}")
        return number

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value.upper() not in choices:
            raise ConfigError(PREFIX + name, f"must be one of {', '.join(choices)}")
        return value.upper()

    def csv(self, name: str, *, pattern: str) -> tuple[str, ...]:
        value = self.text(name)
        if value is None:
            return ()
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        for item in items:
            if not re.fullmatch(pattern, item):
                raise ConfigError(PREFIX + name, "has an entry with the wrong format")
        return items

    def page_tokens(self, name: str) -> tuple[tuple[str, str], ...]:
        """`page_id:token,...`; a message names the variable and the page, never a token."""
        value = self.text(name)
        if value is None:
            return ()
        pairs: list[tuple[str, str]] = []
        for entry in value.split(","):
            if not entry.strip():
                continue
            page_id, sep, token = entry.strip().partition(":")
            if not sep or not re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", page_id):
                raise ConfigError(PREFIX + name, "entries must look like <page id>:<token>")
            if len(token) < 8 or not re.fullmatch(r"[\x21-\x7e]+", token):
                raise ConfigError(
                    PREFIX + name,
                    f"the token of page {page_id} must be 8 or more printable characters "
                    "without spaces",
                )
            if any(known == page_id for known, _ in pairs):
                raise ConfigError(PREFIX + name, f"page {page_id} appears twice")
            pairs.append((page_id, token))
        return tuple(pairs)

    def card_keys(self, name: str) -> tuple[CardKey, ...]:
        value = self.text(name)
        if value is None:
            return ()
        keys: list[CardKey] = []
        for entry in value.split(","):
            version, sep, encoded = entry.strip().partition(":")
            if not sep or not re.fullmatch(r"v\d{1,6}", version):
                raise ConfigError(PREFIX + name, "entries must look like v2:<base64>")
            try:
                secret = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(PREFIX + name, f"key {version} is not valid base64") from None
            if len(secret) < 32:
                raise ConfigError(PREFIX + name, f"key {version} must be at least 32 bytes")
            if any(k.version == version for k in keys):
                raise ConfigError(PREFIX + name, f"key version {version} appears twice")
            keys.append(CardKey(version, secret))
        return tuple(keys)
