"""Sending messages to people through the chat platform's send API, behind an interface.

`MessengerSendApi` is the one implementation: the Messenger Send API shape,
`POST {base}/me/messages?access_token=<page access token>` with a JSON body of recipient,
messaging type and message; the token says which page sends. The worker installs it at
start when CHATLEDGER_CHAT_API_BASE is set, with the page tokens of
CHATLEDGER_CHAT_PAGE_TOKENS; the tests point it at a local stand-in that checks the token.
With none installed, `sender()` is None and nothing is sent.

A page without a token is never sent from unauthenticated: the send fails with
`MissingPageToken`, which the caller records. Tokens stay out of logs: the URL carries
one, so the HTTP client's loggers (urllib3 logs each request's URL at DEBUG) pass through
`TokenLogFilter`, and an error detail never includes a URL or the token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests

#: The HTTP client's loggers, which may log a request's URL with its query.
HTTP_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
    "requests",
)
_TOKEN_IN_TEXT = re.compile(r"(access_token(?:=|%3D|\"?\s*:\s*\"?))[^&\s\"',;)]+", re.IGNORECASE)


def redact_tokens(text: str) -> str:
    """`text` with the value of every `access_token` parameter replaced by `***`."""
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


class TokenLogFilter(logging.Filter):
    """Replaces access tokens in a log record's message (its arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_token_filter() -> None:
    """Put `TokenLogFilter` on the HTTP client's loggers, once."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenLogFilter) for f in logger.filters):
            logger.addFilter(TokenLogFilter())


@dataclass(frozen=True, slots=True)
class SendResult:
    #: The platform's id for the message, when it gives one.
    message_id: str | None


class ChatSendError(Exception):
    """The platform refused or could not be reached; `retryable` says whether trying again
    may help (a timeout, a 429 or a 5xx may; a 4xx about the request will not)."""

    def __init__(self, detail: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.status = status


class MissingPageToken(ChatSendError):
    """No access token is configured for the page that would send: nothing was sent."""

    def __init__(self, page_id: str | None) -> None:
        where = f"page {page_id}" if page_id else "any page"
        super().__init__(
            f"not sent: no page access token for {where} (CHATLEDGER_CHAT_PAGE_TOKENS)",
            retryable=False,
        )
        self.page_id = page_id


class ChatSender(Protocol):
    def send(
        self,
        *,
        recipient_id: str,
        message: Mapping[str, Any],
        messaging_type: str,
        tag: str | None = None,
        page_id: str | None = None,
    ) -> SendResult:
        """Send from `page_id`, or from the sender's default page when None."""
        ...


class MessengerSendApi:
    """The Messenger Send API through `requests`, with timeouts on every call.

    `page_tokens` maps page ids to their page access tokens; the first page is the default
    one, which sends when the caller names none (fraud alerts, balance replies).
    """

    #: (connect, read) seconds: the caller may hold a row lock while it waits.
    TIMEOUT = (3.05, 10.0)

    def __init__(
        self,
        api_base: str,
        *,
        page_tokens: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> None:
        self._url = api_base.rstrip("/") + "/me/messages"
        self._tokens = dict(page_tokens)
        self.default_page: str | None = next(iter(self._tokens), None)
        self._session = requests.Session()
        install_token_filter()

    def __repr__(self) -> str:
        return f"MessengerSendApi({self._url!r}, pages={sorted(self._tokens)!r})"

    def send(
        self,
        *,
        recipient_id: str,
        message: Mapping[str, Any],
        messaging_type: str,
        tag: str | None = None,
        page_id: str | None = None,
    ) -> SendResult:
        page = page_id or self.default_page
        token = self._tokens.get(page) if page else None
        if not token:
            raise MissingPageToken(page)
        body: dict[str, Any] = {
            "recipient": {"id": recipient_id},
            "messaging_type": messaging_type,
            "message": dict(message),
        }
        if tag is not None:
            body["tag"] = tag
        try:
            answer = self._session.post(
                self._url,
                json=body,
                params={"access_token": token},
                timeout=self.TIMEOUT,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # Only the exception's type: its text holds the URL, and the URL the token.
            raise ChatSendError(
                f"send API unreachable: {type(exc).__name__}", retryable=True
            ) from None
        if answer.status_code >= 300:
            retryable = answer.status_code == 429 or answer.status_code >= 500
            text = redact_tokens(answer.text[:300]).replace(token, "***")
            raise ChatSendError(
                f"send API answered {answer.status_code} for page {page}: {text}",
                retryable=retryable,
                status=answer.status_code,
            )
        try:
            document = answer.json()
        except ValueError:
            document = {}
        message_id = document.get("message_id") if isinstance(document, dict) else None
        return SendResult(str(message_id) if message_id else None)


_sender: ChatSender | None = None


def configure(sender: ChatSender | None) -> None:
    """Install the process's sender; the worker does this at start."""
    global _sender
    _sender = sender


def sender() -> ChatSender | None:
    return _sender
