"""A real HTTP server on loopback that speaks OpenAI's chat-completions protocol, answering
from a script (tests and bench/inference.py; no LLM exists on this machine).

    with ScriptedLLM() as llm:
        llm.push(Reply({"facts": ["Likes tea"]}), Reply({"memory": [...]}))
        ... Settings(llm_base_url=llm.base_url, llm_model="scripted") ...

Each POST /v1/chat/completions takes the next reply in order (or, with a `responder`, the
reply it picks for the request); a reply can instead fail on cue (an HTTP status, invalid
JSON, a delay past the client's timeout), or wait for a `gate` the test opens. Every request
body is kept in `requests`, so a test can check what the LLM was shown.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: `content` (an object, sent as JSON text; or a str sent as is),
    or an error `status`; `delay` seconds first. `repeat` answers this many requests.
    `gate`: held (at most GATE_S) until the test sets it, e.g. while it kills the server
    waiting for this answer; `hold`: the same, at most 120 s (the disconnect tests)."""

    content: Any = None
    status: int = 200
    delay: float = 0.0
    hold: threading.Event | None = None
    repeat: int = 1
    prompt_tokens: int = 11
    completion_tokens: int = 7
    gate: threading.Event | None = None


GATE_S = 120.0  # a gate never opened lets its request go after this long
Responder = Callable[[dict[str, Any]], Reply]


def schema_name(request: dict[str, Any]) -> str | None:
    """Which answer a request asks for: "facts" (extraction) or "memory_decisions"."""
    fmt = request.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name")
    return str(name) if name is not None else None


class ScriptedLLM:
    def __init__(
        self,
        *,
        json_schema: bool = True,
        default: Reply | None = None,
        responder: Responder | None = None,
    ) -> None:
        self.json_schema = json_schema  # False: refuse response_format json_schema with 400
        self.default = default  # answered when the script is empty (bench); else 500
        # picks the reply for each request instead of the script (in the server's thread):
        # several servers asking at once each get the answer their question needs
        self.responder = responder
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def host(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def push(self, *replies: Reply | dict[str, Any]) -> None:
        with self.lock:
            for r in replies:
                self.script.append(r if isinstance(r, Reply) else Reply(r))

    def remaining(self) -> int:
        with self.lock:
            return len(self.script)

    def _next(self) -> Reply | None:
        with self.lock:
            if not self.script:
                return self.default
            reply = self.script[0]
            reply.repeat -= 1
            if reply.repeat <= 0:
                self.script.popleft()
            return reply

    def start(self) -> ScriptedLLM:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: with Nagle's algorithm the body waited for
            # the client's delayed ACK (~40 ms on loopback), so a reply took its delay + 40 ms
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # the client may have given up (timeout tests)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                fmt = (request.get("response_format") or {}).get("type")
                if fmt == "json_schema" and not owner.json_schema:
                    self._send(400, b'{"error": {"message": "response_format json_schema is not supported"}}')  # fmt: skip
                    return
                with owner.lock:
                    owner.requests.append(request)
                reply = owner.responder(request) if owner.responder else owner._next()
                if reply is None:
                    self._send(500, b'{"error": {"message": "the script is exhausted"}}')
                    return
                if reply.gate is not None:
                    reply.gate.wait(GATE_S)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hold is not None:
                    reply.hold.wait(timeout=120)
                if reply.status != 200:
                    msg = json.dumps({"error": {"message": f"scripted HTTP {reply.status}"}})
                    self._send(reply.status, msg.encode())
                    return
                content = (
                    reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
                )
                body = {
                    "id": "chatcmpl-scripted",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "scripted"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                }
                self._send(200, json.dumps(body).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def facts(*texts: str) -> dict[str, Any]:
    return {"facts": list(texts)}


def decide(*items: dict[str, Any]) -> dict[str, Any]:
    return {"memory": list(items)}
