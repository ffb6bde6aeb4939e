"""A cardholder's balances, told in chat when they ask for them.

Which accounts: those whose partner the cardholder's chat identity has a consent with that
covers balances for `balance_display`; the snapshots are read only through
`partnerdata.read(purpose="balance_display")`. The latest snapshot of each account is told,
and one older than `stale_after` (CHATLEDGER_BALANCE_STALE_HOURS, through `alerts.config`)
is said to be stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from commerce import partnerdata
from commerce.alerts import config
from commerce.chat.send import ChatSender, SendResult
from commerce.consent.models import BalanceSnapshot, Consent
from commerce.db import utcnow
from commerce.money import format_amount

PURPOSE = "balance_display"
ACTOR = "system:balance_display"
#: What a cardholder writes to ask (compared trimmed and case-insensitively).
KEYWORD = "balance"
NO_ACCOUNT = (
    "No bank account is shared with us for showing balances. You can share one from your "
    "bank's app."
)
NOTHING_YET = "Your bank has not sent us a balance yet. Please try again later."


@dataclass(frozen=True, slots=True)
class BalanceDisplay:
    #: A snapshot older than this is told as stale.
    stale_after: timedelta = config.DEFAULT_STALE_AFTER

    @classmethod
    def configured(cls) -> BalanceDisplay:
        """As the settings say (`alerts.config`)."""
        return cls(stale_after=config.stale_after())


def asks_for_balance(text: object) -> bool:
    return isinstance(text, str) and text.strip().lower() == KEYWORD


def _covering(session: Session, channel: str, user_id: str, at: datetime) -> list[Consent]:
    consents = session.scalars(
        select(Consent).where(
            Consent.chat_channel == channel,
            Consent.chat_user_id == user_id,
            Consent.status == "granted",
        )
    ).all()
    return [
        c
        for c in consents
        if "balances" in c.scopes
        and PURPOSE in c.purposes
        and (c.expires_at is None or c.expires_at > at)
    ]


def _account(account_ref: str) -> str:
    # An account reference may be an account number: only its last four are told.
    return f"Account ending {account_ref[-4:]}" if len(account_ref) > 4 else "Account"


def _age(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} days" if hours >= 48 else f"{hours} hours"


def balance_text(
    session: Session,
    *,
    channel: str,
    user_id: str,
    now: datetime | None = None,
    display: BalanceDisplay | None = None,
) -> str:
    """The reply to "balance" for this chat identity."""
    now = now or utcnow()
    display = display or BalanceDisplay.configured()
    consents = _covering(session, channel, user_id, now)
    if not consents:
        return NO_ACCOUNT
    snapshots = partnerdata.read(
        session,
        BalanceSnapshot,
        purpose=PURPOSE,
        actor=ACTOR,
        where=[
            or_(
                *(
                    and_(
                        BalanceSnapshot.partner_id == c.partner_id,
                        BalanceSnapshot.customer_ref == c.customer_ref,
                    )
                    for c in consents
                )
            )
        ],
        order_by=[
            BalanceSnapshot.partner_id,
            BalanceSnapshot.account_ref,
            BalanceSnapshot.as_of.desc(),
        ],
    )
    latest: dict[tuple[str, str], BalanceSnapshot] = {}
    for snapshot in snapshots:
        latest.setdefault((snapshot.partner_id, snapshot.account_ref), snapshot)
    if not latest:
        return NOTHING_YET
    lines = ["Your balances:"]
    for snapshot in latest.values():
        line = (
            f"{_account(snapshot.account_ref)}: "
            f"{format_amount(snapshot.available, snapshot.currency)} available, "
            f"{format_amount(snapshot.current, snapshot.currency)} current, "
            f"as of {snapshot.as_of.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )
        age = now - snapshot.as_of
        if age > display.stale_after:
            line += f" (stale: last updated {_age(age)} ago)"
        lines.append(line)
    return "\n".join(lines)[:2000]


def send_balance(
    session: Session,
    sender: ChatSender,
    *,
    channel: str,
    user_id: str,
    now: datetime | None = None,
    display: BalanceDisplay | None = None,
    page_id: str | None = None,
) -> SendResult:
    """Answer the cardholder's "balance" in their chat; a reply to their message, from
    `page_id` (the page they wrote to) when given, else from the sender's default page."""
    text = balance_text(session, channel=channel, user_id=user_id, now=now, display=display)
    return sender.send(
        recipient_id=user_id, message={"text": text}, messaging_type="RESPONSE", page_id=page_id
    )
