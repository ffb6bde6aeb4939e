"""Outbound webhooks to merchants: endpoints, the events they subscribe to, and deliveries
signed per Standard Webhooks, retried from a schedule kept in the database."""
