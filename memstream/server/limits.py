"""Request-level bounds: the body size (413) and per-API-key rate limits (429).

The body limit is a pure ASGI middleware, so an oversized body is refused from its
Content-Length before any of it is read, and a chunked body is cut off as soon as it passes
the limit: no handler ever holds more than `max_body_bytes` of one request in memory.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memstream.errors import RateLimitedError
from memstream.settings import Limits


def too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (MEMSTREAM_MAX_BODY_BYTES)"


class BodyLimit:
    """413 for a request body over `max_bytes` (declared or actually sent)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _reject(send, self.max_bytes)
                    return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing as it is
                    raise HTTPException(status_code=413, detail=too_large(self.max_bytes))
            return message

        await self.app(scope, bounded_receive, send)


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps({"detail": too_large(limit)}).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per API key: `rate_limit_per_s` requests a second on average, bursts
    of up to `rate_limit_burst`. Off when the rate is 0 (the default)."""

    def __init__(self, limits: Limits, max_keys: int = 100_000) -> None:
        self.rate = float(limits.rate_limit_per_s)
        self.burst = float(limits.rate_limit_burst or max(1.0, 2.0 * self.rate))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key_id: str) -> None:
        """Spend one request of `key_id`'s budget, or raise RateLimitedError (429)."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitedError(
                    f"rate limit of this API key exceeded ({self.rate:g} requests/s, bursts of "
                    f"{self.burst:g}; MEMSTREAM_RATE_LIMIT_PER_S): retry after {wait:.1f}s",
                    retry_after_s=wait,
                )
            if len(self._buckets) >= self.max_keys and key_id not in self._buckets:
                self._buckets.clear()  # bounded memory; forgetting only ever grants a burst
            self._buckets[key_id] = (tokens - 1.0, now)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def limits_of(state: Any) -> Limits:
    limits: Limits = state.ms.settings.limits
    return limits
