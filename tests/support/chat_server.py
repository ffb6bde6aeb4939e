"""A local HTTP server standing in for the chat platform's send API (Messenger's shape).

`POST /me/messages?access_token=<page access token>` with a JSON body is recorded and
answered like Messenger: `{"recipient_id": ..., "message_id": ...}`, the message sent from
the page the token belongs to. Like the Graph API, a request without a token, or with one
the server does not know, is refused with 400 and an `OAuthException` (code 190) and sends
nothing. `PAGE_TOKENS` are the pages the tests configure; `fail_next(n, status)` makes the
next n sends fail with that status, as an outage or a throttled platform would.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

#: The pages whose tokens the tests give chatledger (CHATLEDGER_CHAT_PAGE_TOKENS), first
#: the default one.
PAGE_TOKENS = {
    "700000000001": "EAAT" + "alerts0page0token0for0tests",
    "700000000002": "EAAT" + "second0page0token0for0tests",
}


def page_tokens_setting(tokens: dict[str, str] = PAGE_TOKENS) -> str:
    """The CHATLEDGER_CHAT_PAGE_TOKENS value for `tokens`."""
    return ",".join(f"{page}:{token}" for page, token in tokens.items())


@dataclass(frozen=True)
class SentMessage:
    path: str
    query: str
    body: dict[str, Any]
    #: The page whose token the request carried.
    page_id: str = ""

    @property
    def recipient(self) -> str:
        return str(self.body["recipient"]["id"])

    @property
    def text(self) -> str:
        return str(self.body["message"].get("text", ""))


class ChatServer:
    def __init__(self, page_tokens: dict[str, str] = PAGE_TOKENS) -> None:
        self.pages_by_token = {token: page for page, token in page_tokens.items()}
        self.sent: list[SentMessage] = []
        self.failed: list[SentMessage] = []
        #: Requests refused for their token (missing or unknown), with their query.
        self.unauthorized: list[str] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.sent.clear()
            self.failed.clear()
            self.unauthorized.clear()
            self._failures.clear()

    def fail_next(self, times: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    def to(self, recipient: str) -> list[SentMessage]:
        with self._lock:
            return [m for m in self.sent if m.recipient == recipient]

    def _answer(self, path: str, query: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/me/messages":
            return 404, {"error": {"message": "Unknown path", "code": 803}}
        tokens = parse_qs(query).get("access_token", [])
        page_id = self.pages_by_token.get(tokens[0]) if len(tokens) == 1 else None
        if page_id is None:
            with self._lock:
                self.unauthorized.append(query)
            return 400, {
                "error": {
                    "message": "Invalid OAuth access token - Cannot parse access token",
                    "type": "OAuthException",
                    "code": 190,
                }
            }
        try:
            body = json.loads(raw)
            recipient = body["recipient"]["id"]
            assert body["messaging_type"] in ("RESPONSE", "UPDATE", "MESSAGE_TAG")
            assert isinstance(body["message"], dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            return 400, {"error": {"message": "Invalid parameter", "code": 100}}
        message = SentMessage(path, query, body, page_id)
        with self._lock:
            if self._failures:
                self.failed.append(message)
                return self._failures.pop(0), {"error": {"message": "Try later", "code": 2}}
            self.sent.append(message)
        return 200, {"recipient_id": recipient, "message_id": "m_" + secrets.token_hex(8)}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                path, _, query = self.path.partition("?")
                status, document = server._answer(path, query, self.rfile.read(length))
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
