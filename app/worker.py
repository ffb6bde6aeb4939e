"""The Celery application: `celery -A app.worker:celery worker` and `... beat`.

JSON only (a task carries ids, never objects), late acknowledgement so a task
whose worker died is delivered again, and a Redis visibility timeout longer than
the longest countdown any task schedules, so Redis does not hand a waiting task
to a second worker while the first still holds it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from app.config import Settings
from app.embedded import celery_broker_url
from commerce import payments, runtime
from commerce.alerts import config as alerts_config
from commerce.cards.scrub import PanLogFilter
from commerce.chat import send as chat_send
from commerce.chat.send import MessengerSendApi
from commerce.payments.stripe import StripeProvider
from commerce.reconciliation import engine as reconciliation_engine
from webhooks.relay import inbox_relay_step

#: Longest countdown a task may schedule (retry_backoff_max of the refund task is 10 minutes).
LONGEST_COUNTDOWN = timedelta(hours=1)
TASK_MODULES = [
    "commerce.sales.tasks",
    "commerce.consent.tasks",
    "commerce.alerts.tasks",
    "commerce.outbound.tasks",
    "commerce.reconciliation.tasks",
    "commerce.reports.tasks",
    "webhooks.tasks",
]


def create_celery(settings: Settings) -> Celery:
    if settings.redis_url is None or settings.database_url is None:
        raise RuntimeError(
            "CHATLEDGER_DATABASE_URL and CHATLEDGER_REDIS_URL must be set for the worker; "
            "`chatledger run` sets them for the embedded servers"
        )
    broker = celery_broker_url(settings.redis_url)
    app = Celery("chatledger", broker=broker, include=TASK_MODULES)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # A task that raised is acknowledged (it records its own failure); a worker that
        # vanished is not, and its task is delivered again.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": int(LONGEST_COUNTDOWN.total_seconds()) * 2,
        },
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "sweep-requested-refunds": {
                "task": "sales.sweep_requested_refunds",
                "schedule": 60.0,
            },
            "sweep-inbox": {
                "task": "webhooks.sweep",
                "schedule": 15.0,
            },
            "sweep-webhook-deliveries": {
                "task": "outbound.sweep",
                "schedule": 15.0,
            },
            "privacy-sweep": {
                "task": "privacy.sweep",
                "schedule": 60.0,
            },
            "sweep-unsent-alerts": {
                "task": "alerts.sweep_unsent",
                "schedule": 60.0,
            },
            # Moves the report change log into the rollups (reports read both).
            "fold-report-rollups": {
                "task": "reports.fold",
                "schedule": 10.0,
            },
            "sync-unsettled-payments": {
                "task": "sales.sync_unsettled_payments",
                "schedule": 300.0,
            },
            # Payouts whose lines were never listed, or whose late sale events explain them.
            "reconciliation-sweep-payouts": {
                "task": "reconciliation.sweep_payouts",
                "schedule": 120.0,
            },
            # What events queued for reconciliation and attribution, if no drain was sent.
            "reconciliation-drain": {
                "task": "reconciliation.drain",
                "schedule": 5.0,
            },
            # Authorizations whose clearing days ran out since the last sweep.
            "reconciliation-sweep-clearings": {
                "task": "reconciliation.sweep_clearings",
                "schedule": 3600.0,
            },
        },
    )

    @after_setup_logger.connect(weak=False)
    @after_setup_task_logger.connect(weak=False)
    def _mask_card_numbers(logger: logging.Logger, **_: object) -> None:
        for handler in logger.handlers:
            if not any(isinstance(f, PanLogFilter) for f in handler.filters):
                handler.addFilter(PanLogFilter())

    # The inbox relay: a thread in each worker's main process that sends the tasks of the
    # events the doors stored (webhooks/relay.py).
    app.steps["worker"].add(inbox_relay_step(settings.database_url))

    @worker_process_init.connect(weak=False)
    def _configure_process(**_: object) -> None:
        configure_domain(settings)

    configure_domain(settings)
    return app


def configure_domain(settings: Settings) -> None:
    """The database, payment provider, chat send API (with its page tokens) and alert
    thresholds the tasks use, in this process."""
    assert settings.database_url is not None
    runtime.configure_database(settings.database_url)
    chat_send.configure(
        MessengerSendApi(settings.chat_api_base, page_tokens=settings.chat_page_tokens)
        if settings.chat_api_base
        else None
    )
    alerts_config.configure(
        thresholds=settings.alert_thresholds, stale_after=settings.balance_stale_after
    )
    reconciliation_engine.configure(batch_sessions=settings.reconciliation_batch_sessions)
    if settings.stripe_api_key:
        payments.configure(
            StripeProvider(settings.stripe_api_key, api_base=settings.stripe_api_base)
        )


def __getattr__(name: str) -> Celery:
    # `celery -A app.worker:celery` builds the app from the environment on first access;
    # importing this module (as create_app does) reads nothing.
    if name == "celery":
        app = create_celery(Settings.from_env())
        globals()["celery"] = app
        return app
    raise AttributeError(name)
