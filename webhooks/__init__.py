"""The door for events: receiving, verifying, storing and processing inbound webhooks.

receive.py   raw body -> verify -> scrub -> store in the inbox -> 2xx
verify.py    Stripe, Standard Webhooks and Meta signature checks
inbox.py     the inbox table, insert-or-get, and the processing loop
handlers/    one module per source, turning its events into domain calls
tasks.py     Celery tasks: process one inbox id; sweep what was left behind
"""
