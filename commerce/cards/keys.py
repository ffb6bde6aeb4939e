"""Rotating the card-hash key: re-key every stored hash to the newest key, without a PAN."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce.audit.services import record
from commerce.cards.models import CardAlias
from commerce.cards.scrub import CardHasher


def rotate(session: Session, hasher: CardHasher, *, batch: int = 1000) -> int:
    """Wrap every stored PAN hash not yet under the newest key; returns how many.

    The alias rows keep their card reference, so every link between a card's aliases,
    its transactions and its sales stays as it was.
    """
    newest = hasher.newest_version
    done = 0
    while True:
        aliases = session.scalars(
            select(CardAlias)
            .where(
                CardAlias.kind == "pan_hash",
                CardAlias.key_version.is_not(None),
                ~CardAlias.key_version.startswith(newest),
            )
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        if not aliases:
            break
        for alias in aliases:
            alias.value, alias.key_version = hasher.rekey(alias.value, alias.key_version or "")
        session.flush()
        done += len(aliases)
    record(
        session,
        actor="system:keys",
        action="card_keys.rotate",
        detail={"rekeyed": done, "newest": newest},
    )
    return done
