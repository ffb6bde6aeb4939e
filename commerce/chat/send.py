"""Sending messages to people through the chat platform's send API, behind an interface.

`MessengerSendApi` is the one implementation: the Messenger Send API shape,
`POST {base}/me/messages` with a JSON body of recipient, messaging type and message. The
worker installs it at start when CHATLEDGER_CHAT_API_BASE is set; the tests point it at a
local stand-in. With none installed, `sender()` is None and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests


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


class ChatSender(Protocol):
    def send(
        self,
        *,
        recipient_id: str,
        message: Mapping[str, Any],
        messaging_type: str,
        tag: str | None = None,
    ) -> SendResult: ...


class MessengerSendApi:
    """The Messenger Send API through `requests`, with timeouts on every call."""

    #: (connect, read) seconds: the caller may hold a row lock while it waits.
    TIMEOUT = (3.05, 10.0)

    def __init__(self, api_base: str, *, access_token: str | None = None) -> None:
        self._url = api_base.rstrip("/") + "/me/messages"
        self._access_token = access_token
        self._session = requests.Session()

    def send(
        self,
        *,
        recipient_id: str,
        message: Mapping[str, Any],
        messaging_type: str,
        tag: str | None = None,
    ) -> SendResult:
        body: dict[str, Any] = {
            "recipient": {"id": recipient_id},
            "messaging_type": messaging_type,
            "message": dict(message),
        }
        if tag is not None:
            body["tag"] = tag
        params = {"access_token": self._access_token} if self._access_token else None
        try:
            answer = self._session.post(
                self._url, json=body, params=params, timeout=self.TIMEOUT, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise ChatSendError(
                f"send API unreachable: {type(exc).__name__}", retryable=True
            ) from None
        if answer.status_code >= 300:
            retryable = answer.status_code == 429 or answer.status_code >= 500
            raise ChatSendError(
                f"send API answered {answer.status_code}: {answer.text[:300]}",
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
