"""A real HTTP server on loopback that receives webhook deliveries (tests only).

It answers 500 to its first `fail_first` requests, then 200, and keeps every request (raw
body bytes and headers) so a test can check order, signatures and duplicates.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status = 500 if len(receiver.requests) < receiver.fail_first else 200
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                 body, status)
                    )  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"nope" if status == 500 else b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.accepted()):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver: condition not met within {timeout_s}s; got "
                    f"{[r.json.get('event_type') for r in self.accepted()]}"
                )
            time.sleep(0.05)

    async def until(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 60.0
    ) -> None:
        """`wait_for` for a test whose event loop runs the dispatcher."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.accepted()):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver: condition not met within {timeout_s}s; got "
                    f"{[r.json.get('event_type') for r in self.accepted()]}"
                )
            await asyncio.sleep(0.05)


@contextmanager
def receiving(fail_first: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(fail_first)
    receiver._thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver._thread.join(10)
