"""The seam between reports and off-platform attribution (issue 6, part 1).

Off-platform revenue is card transactions at the merchant's MIDs attributed to an offer by
commerce/attribution. That package registers a source here with `register_off_platform`: a
function that answers, for one merchant, a UTC window and an attribution model
(`last_touch`, `first_touch` or `linear`), the attributed purchases as rows of
(offer_id, conversation_id, currency, window, amount, cardholder), where `window` names the
attribution rule that matched (e.g. "click_7d", "view_1d") and `cardholder` is any stable
key of the card's holder (it is used only to count distinct cardholders for suppression and
never leaves the reports service). Until a source is registered there is no off-platform
revenue to show, and the report says so (`off_platform_available: false`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class AttributedPurchase:
    offer_id: str
    conversation_id: str
    currency: str
    window: str
    #: Minor units of `currency`, net of take-backs (refunds in the return period).
    amount: int
    cardholder: str


#: (session, merchant id, start, end, model) -> the purchases credited under that model.
OffPlatformSource = Callable[[Session, str, datetime, datetime, str], Iterable[AttributedPurchase]]

_source: OffPlatformSource | None = None


def register_off_platform(source: OffPlatformSource | None) -> None:
    """Install (or, with None, remove) the reader of attributed card transactions."""
    global _source
    _source = source


def off_platform_source() -> OffPlatformSource | None:
    return _source
