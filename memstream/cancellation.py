"""Stopping a request's work when its client has gone (docs/rest.md, "A client that leaves").

Why: a read's cost is bounded (memstream.settings.Limits) but can still be seconds of CPU,
and a client that gave up does not want the answer; without this the server went on
computing it for nobody. The REST server gives each request a `Token` in a context variable
(`bound`) and cancels it when the client disconnects (memstream/server/disconnect.py):

- async work stops by asyncio cancellation of the handler's task (awaiting a thread, the
  LLM, the projector: all end at once);
- work already running in a worker thread cannot be stopped from outside, so its hot loops
  call `check()` (the filter evaluator once per row, the entity list once per memory) and
  raise `RequestCancelled`; DuckDB queries are interrupted through `interrupting(cursor.interrupt)`.
  `asyncio.to_thread` copies the context, so a thread sees the token of the request that
  started it. Outside a request there is no token and `check()` does nothing.

Writes: `committing()` marks the moment a write starts changing shared state (appending its
events, destroying a subject's keys). From then on a disconnect no longer stops it: it runs
to its end and its answer goes nowhere. So an event is in the log or not, never half a batch;
a client that lost its connection retries with the same idempotency key, or reads back.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from memstream.errors import MemstreamError

__all__ = [
    "RequestCancelled",
    "Token",
    "bound",
    "check",
    "committing",
    "interrupting",
    "unbound_context",
]


class RequestCancelled(MemstreamError):
    """The client of this request disconnected and its work was stopped. Nobody reads the
    answer; 499 is nginx's "client closed request", for the logs."""

    status_code = 499

    def __init__(self, message: str = "the client closed the connection") -> None:
        super().__init__(message)


class Token:
    """One request's cancellation state, shared by its task and the threads it starts."""

    __slots__ = ("_callbacks", "_committing", "_lock", "_stopped")

    def __init__(self) -> None:
        self._stopped = False  # set once, by the event loop's thread; read by any thread
        self._lock = threading.Lock()
        self._committing = 0
        self._callbacks: list[Callable[[], object]] = []

    @property
    def cancelled(self) -> bool:
        return self._stopped

    def cancel(self) -> bool:
        """The client left: stop the work unless a write is committing. True when the work
        is to stop (the caller then cancels the task too); False when it runs to its end."""
        with self._lock:
            if self._committing:
                return False
            self._stopped = True
            callbacks = list(self._callbacks)
        for callback in callbacks:  # e.g. DuckDB's interrupt, from this (another) thread
            with contextlib.suppress(Exception):
                callback()
        return True

    def check(self) -> None:
        if self._stopped:
            raise RequestCancelled()

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        with self._lock:
            self.check()  # a request already cancelled does not start to write
            self._committing += 1
        try:
            yield
        finally:
            with self._lock:
                self._committing -= 1

    @contextlib.contextmanager
    def interrupting(self, interrupt: Callable[[], object]) -> Iterator[None]:
        with self._lock:
            self.check()
            self._callbacks.append(interrupt)
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.remove(interrupt)


_CURRENT: contextvars.ContextVar[Token | None] = contextvars.ContextVar(
    "memstream_request_token", default=None
)


@contextlib.contextmanager
def bound(token: Token | None) -> Iterator[None]:
    """Run the block (and the tasks and threads it starts) under `token`."""
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


def check() -> None:
    """Raise RequestCancelled if this request's client has gone (cheap: call it per row)."""
    token = _CURRENT.get()
    if token is not None and token._stopped:
        raise RequestCancelled()


def committing() -> contextlib.AbstractContextManager[None]:
    """The block changes shared state: a disconnect from here on does not stop the request.
    Outside a request (no token: the bench, the CLI, a library caller) a shared no-op
    context, not a generator-based one per write (~1.5 us an append)."""
    token = _CURRENT.get()
    if token is None:
        return _NOTHING
    return token.committing()


_NOTHING = contextlib.nullcontext()


@contextlib.contextmanager
def interrupting(interrupt: Callable[[], object]) -> Iterator[None]:
    """Call `interrupt` (from the event loop's thread) if the request is cancelled while the
    block runs: for work that cannot call `check()` itself, e.g. one DuckDB query."""
    token = _CURRENT.get()
    if token is None:
        yield
        return
    with token.interrupting(interrupt):
        yield


def unbound_context() -> contextvars.Context:
    """A copy of the current context without a request token: for work a request starts
    that must outlive it (an `async_mode` add answered before its inference runs)."""
    context = contextvars.copy_context()
    context.run(_CURRENT.set, None)
    return context
