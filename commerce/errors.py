"""Domain errors. The web layer maps each to one problem document in app/errors.py.

Domain code raises these and never an HTTP error: the same service is called from
the API, the webhook door and the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class DomainError(Exception):
    #: Stable slug used in the problem document's `type`.
    code = "domain-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(DomainError):
    """Input that no retry will fix; `errors` maps field names to messages."""

    code = "validation-error"

    def __init__(self, errors: Mapping[str, Any], detail: str | None = None) -> None:
        super().__init__(detail or "The request has invalid fields.")
        self.errors = dict(errors)


class NotFound(DomainError):
    """Also what a merchant gets for another merchant's object: the two are indistinguishable."""

    code = "not-found"

    def __init__(self, kind: str) -> None:
        super().__init__(f"No such {kind}.")
        self.kind = kind


class Conflict(DomainError):
    """The request is valid but the object's current state does not allow it."""

    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid-transition"

    def __init__(self, state: str, event: str, allowed: Sequence[str] = ()) -> None:
        hint = f" (allowed from: {', '.join(allowed)})" if allowed else ""
        super().__init__(f"A sale in state {state!r} cannot take {event!r}{hint}.")
        self.state = state
        self.event = event


class ProviderError(DomainError):
    """The payment provider failed or refused; `retryable` says whether trying again may help."""

    code = "provider-error"

    def __init__(self, detail: str, *, retryable: bool, provider_code: str | None = None) -> None:
        super().__init__(detail)
        self.retryable = retryable
        self.provider_code = provider_code
