"""Reconciliation: each sale against what Stripe and the card networks say happened."""
