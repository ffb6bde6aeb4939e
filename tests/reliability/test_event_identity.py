"""A product bug the stream found: the chat door takes a message's id after masking card
numbers in the item, so two different messages whose ids hold a Luhn-valid run of digits
with the same last four collapse into one inbox key. The second is answered 200 as a
`duplicate` of the first and is never processed (its touchpoint, its answer to a fraud alert,
its request for balances are lost).

Meta's message ids are opaque strings; `m_` followed by base64-like text can hold such a run.
Marked xfail(strict): it fails today and will report XPASS, failing the suite, once fixed
(then drop the marker). A fix: take the id from the item before scrubbing, or list
`message.mid` / `postback.mid` among the chat door's identifiers (webhooks/receive.py
`CHAT_IDENTIFIERS`), or keep a keyed hash of an id that had to be masked.
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


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the chat door masks card-like digits in message ids before using them as keys",
)
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
