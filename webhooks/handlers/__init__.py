"""One module per source; importing this package registers them all with the inbox."""

from webhooks.handlers import chat, partners, stripe

__all__ = ["chat", "partners", "stripe"]
