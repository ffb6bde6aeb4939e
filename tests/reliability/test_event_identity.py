"""Two chat messages are two events, even when their ids hold a Luhn-valid run of digits
with the same last four: the chat door keeps the platform's message ids as sent
(webhooks/receive.py `CHAT_IDENTIFIERS`) and keys the inbox by them. The stream found this
when ids were masked like card numbers before being used as keys, and the second message
was answered as a duplicate and never processed.
"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import CHAT_APP_SECRET
from tests.reliability.conftest import Prepared, Suite
from tests.support.signing import body_of, meta_headers

pytestmark = pytest.mark.reliability

#: Two Luhn-valid 16-digit runs ending in the same four digits.
RUNS = ("4111111111111111", "4242424242041111")


def test_two_chat_messages_with_card_like_ids_are_two_events(suite: Suite, prepared: Prepared):
    service = suite.service("ids", workers=0, beat=False).start()
    http = requests.Session()
    http.trust_env = False
    try:
        page = prepared.world.merchants[0].page_id
        ids = []
        for n, run in enumerate(RUNS):
            item = {
                "sender": {"id": "5550001"},
                "recipient": {"id": page},
                "timestamp": 1_790_000_000_000 + n,
                "message": {"mid": f"m_{run}AbCdEf", "text": "is it in stock?"},
            }
            body = body_of({"object": "page", "entry": [{"id": page, "messaging": [item]}]})
            answer = http.post(
                service.urls[0] + "/webhooks/chat/messenger",
                data=body,
                headers=meta_headers(body, CHAT_APP_SECRET),
                timeout=60,
            )
            answer.raise_for_status()  # an HTTPError, not the expected failure
            ids.append(answer.json()["ids"][0])
        assert ids[0] != ids[1], "two messages were stored as one inbox event"
    finally:
        http.close()
        service.stop()
