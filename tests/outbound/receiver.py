"""A merchant's webhook receiver on 127.0.0.1, verifying every delivery with the
`standardwebhooks` package, with answers scripted by the test."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: Secrets (of `Receiver.secrets`) whose verification passed.
    verified_with: list[str] = field(default_factory=list)
    payload: Any = None


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.secrets: list[str] = []
        self.answers: list[Answer] = []
        self.default = Answer()
        self.release = threading.Event()
        self.hang = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Received(self.path, headers, body)
                for secret in receiver.secrets:
                    try:
                        record.payload = Webhook(secret).verify(body, headers)
                    except WebhookVerificationError:
                        continue
                    record.verified_with.append(secret)
                receiver.received.append(record)
                if receiver.hang:
                    receiver.release.wait(10)
                answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
