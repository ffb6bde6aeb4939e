"""chatledger's domain: offers, sales, payments and the rules that keep the books.

Nothing here knows about HTTP or the webhook door; the web layer and the worker call in.
"""
