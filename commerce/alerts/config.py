"""The fraud rules' thresholds and the balance stale age in force in this process.

Set once at start from the settings (`CHATLEDGER_ALERT_*`, `CHATLEDGER_BALANCE_STALE_HOURS`)
by the worker, which is where card transactions are judged and balances told; until then,
and in a process that never sets them, the rules' defaults apply. The domain reads no
environment itself.
"""

from __future__ import annotations

from datetime import timedelta

from commerce.alerts.rules import DEFAULT_THRESHOLDS, Thresholds

DEFAULT_STALE_AFTER = timedelta(hours=24)

_thresholds: Thresholds = DEFAULT_THRESHOLDS
_stale_after: timedelta = DEFAULT_STALE_AFTER


def configure(
    *, thresholds: Thresholds = DEFAULT_THRESHOLDS, stale_after: timedelta = DEFAULT_STALE_AFTER
) -> None:
    global _thresholds, _stale_after
    _thresholds = thresholds
    _stale_after = stale_after


def thresholds() -> Thresholds:
    return _thresholds


def stale_after() -> timedelta:
    return _stale_after
