"""The reliability suite's servers and stream (`make test-reliability`; not in `make test`).

One embedded PostgreSQL and one Redis (app.embedded) in a data dir of the suite's own, so
that the tests can restart, stop and kill them; a local Stripe whose clock runs three hours
behind, so that every event it writes is in the past. The world the stream refers to is made
once, through the API, in the database `prepared`; each run gets a copy of it (CREATE
DATABASE .. TEMPLATE), so every run starts from the same sales, offers and partner.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random

import pytest

from tests.support.chat_server import ChatServer
from tests.support.stack import Cluster, Service, prepare_database, settings_for, with_redis_db
from tests.support.stream import (
    Api,
    Books,
    Stream,
    World,
    build_stream,
    build_world,
    deliver,
    wait_until_settled,
)
from tests.support.stripe_server import StripeServer

SEED = 20261129
PREPARED = "prepared"
#: Redis databases of the runs (one embedded Redis; the runs never overlap in time).
REDIS_DB = {"prepared": 15, "clean": 1, "faults": 2, "two": 3, "race": 4, "ids": 5, "disputes": 6}


@dataclass
class Suite:
    cluster: Cluster
    root: Path
    stripe: StripeServer
    chat: ChatServer

    def service(
        self,
        name: str,
        *,
        web: int = 1,
        workers: int = 1,
        beat: bool = True,
        stripe_url: str | None = None,
        template: str | None = PREPARED,
    ) -> Service:
        """A run's own database (a copy of the prepared one) and processes; not started."""
        database_url = self.cluster.create_database(name, template=template)
        root = self.root / name
        settings = settings_for(
            database_url=database_url,
            redis_url=with_redis_db(self.cluster.redis_url, REDIS_DB[name]),
            data_dir=root,
            stripe_url=stripe_url or self.stripe.url,
            chat_url=self.chat.url,
        )
        return Service(name, root, settings, web_count=web, worker_count=workers, beat=beat)


@dataclass
class Prepared:
    world: World
    stream: Stream
    operator_key: str


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory, chat_server: ChatServer) -> Iterator[Suite]:
    root = tmp_path_factory.mktemp("reliability")
    cluster = Cluster(root / "servers")
    stripe = StripeServer(clock=lambda: time.time() - 3 * 3600)
    try:
        cluster.start()
        stripe.start()
        yield Suite(cluster, root, stripe, chat_server)
    finally:
        stripe.stop()
        cluster.stop()


@pytest.fixture(scope="session")
def prepared(suite: Suite) -> Prepared:
    """The world (through the API, on gunicorn) and the stream of events about it."""
    rng = Random(SEED)
    service = suite.service(PREPARED, workers=0, beat=False, template=None)
    t0 = time.monotonic()
    operator_key = prepare_database(service.settings)
    service.start()
    api = Api(service.urls[0])
    try:
        world = build_world(api, operator_key, rng)
    finally:
        api.close()
        service.stop()  # nobody may be connected to a template
    stream = build_stream(world, suite.stripe, rng)
    print(f"\nprepared: the world and the stream made in {time.monotonic() - t0:.1f} s")
    return Prepared(world, stream, operator_key)


@pytest.fixture(scope="session")
def clean_books(suite: Suite, prepared: Prepared) -> Books:
    """The books after the stream delivered cleanly: each event once, in the order it
    happened, no fault injected, on a copy of the prepared database."""
    t0 = time.monotonic()
    service = suite.service("clean", workers=2, beat=False).start()
    try:
        stream = prepared.stream
        answers = deliver(service.urls, stream, range(len(stream.events)), duration=0)
        # An overloaded door may answer 503 (a statement that hit its timeout): the sender
        # tries again, as any sender does; nothing is injected here.
        retried = 0
        for _ in range(3):
            again = [answer.event for answer in answers if not answer.ok]
            if not again:
                break
            retried += len(again)
            answers = deliver(service.urls, stream, again, duration=0, threads=4)
        refused = [answer for answer in answers if not answer.ok]
        assert not refused, refused[:5]
        delivered = time.monotonic() - t0
        engine = suite.cluster.engine(service.settings.database_url)
        wait_until_settled(engine, len(stream.events), timeout=600)
        print(
            f"\nclean run: {len(stream.events)} events delivered once each, in order, in"
            f" {delivered:.1f} s ({retried} sent again after a 503); every one processed"
            f" {time.monotonic() - t0:.1f} s after the start"
        )
        books = Books.read(engine)
        engine.dispose()
    except BaseException:
        print(service.logs())
        raise
    finally:
        service.stop()
    return books
