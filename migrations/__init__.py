"""Alembic migrations; `chatledger db upgrade` applies them."""
