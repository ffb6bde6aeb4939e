"""Partner notifications (SPEC section 6) -> card transactions (judged for fraud alerts),
consents, balances.

The door has already refused events outside an agreement in force; the agreement is
checked again here because it may have ended while the event waited in the inbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from commerce.alerts.services import check_transaction
from commerce.cards.transactions import record_card_transaction
from commerce.consent.services import apply_consent, consent_in_force, record_balance
from commerce.errors import InvalidInput
from commerce.partners.services import agreement_in_force
from commerce.reconciliation import engine as reconciliation
from webhooks.inbox import Ignored, handles
from webhooks.models import InboxEvent

TRANSACTION_KINDS = {
    "transaction.authorized": "authorized",
    "transaction.cleared": "cleared",
    "transaction.reversed": "reversed",
    "transaction.refunded": "refunded",
    "transaction.chargeback": "chargeback",
}

#: The agreement scope each event type needs; None: any agreement in force.
SCOPE_OF: dict[str, str | None] = {
    **dict.fromkeys(TRANSACTION_KINDS, "transactions"),
    "balance.updated": "balances",
    "consent.granted": None,
    "consent.revoked": None,
}


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput({field: ["Must be an RFC 3339 time."]})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput({field: ["Must be an RFC 3339 time."]}) from None
    if parsed.tzinfo is None:
        raise InvalidInput({field: ["Must carry a time zone."]})
    return parsed


@handles("partner")
def handle(session: Session, row: InboxEvent) -> None:
    partner_id = row.source.split(":", 1)[1]
    body = row.payload
    data = body.get("data") or {}
    if row.event_type not in SCOPE_OF:
        raise Ignored(f"{row.event_type} is not a partner event chatledger keeps")
    scope = SCOPE_OF[row.event_type]
    agreement = agreement_in_force(session, partner_id, scope=scope)
    if agreement is None:
        raise Ignored("no agreement in force covers this event any more")
    created = _time(body.get("created"), "created")
    purposes = list(agreement.purposes)
    if scope is not None:
        # Data about a cardholder is kept only under their consent, for the purposes both
        # the agreement and the consent allow; a consent revoked meanwhile stops it here.
        consent = consent_in_force(
            session,
            partner_id=partner_id,
            customer_ref=str(data.get("customer_ref")),
            scope=scope,
        )
        if consent is None:
            raise Ignored(f"no consent in force covers {scope} for this cardholder")
        purposes = sorted(set(purposes) & set(consent.purposes))
        if not purposes:
            raise Ignored("the agreement and the consent share no purpose")

    if row.event_type in TRANSACTION_KINDS:
        transaction = record_card_transaction(
            session,
            partner_id=partner_id,
            kind=TRANSACTION_KINDS[row.event_type],
            data=data,
            occurred_at=_time(data.get("occurred_at"), "data.occurred_at"),
            purposes=purposes,
            inbox_event_id=row.id,
        )
        if reconciliation.PURPOSE in transaction.purposes and transaction.merchant_id:
            # Reconciliation of its card group, then attribution of its cardholder (a refund
            # or reversal may take a credit back), by the worker's next drain.
            reconciliation.enqueue(
                session,
                transaction.merchant_id,
                last4s=[transaction.card_last4] if transaction.card_last4 else [],
                cardholders=[(partner_id, transaction.customer_ref)]
                if transaction.customer_ref
                else [],
            )
        if "fraud_alerts" in transaction.purposes:
            # Judged through the fraud-alerts read path, which checks the consent again;
            # an alert's sending task is queued after the commit.
            check_transaction(session, transaction.id)
    elif row.event_type == "balance.updated":
        record_balance(session, partner_id=partner_id, data=data, purposes=purposes)
    else:
        apply_consent(
            session,
            partner_id=partner_id,
            granted=row.event_type == "consent.granted",
            data=data,
            as_of=created,
        )
