"""Group commit: concurrent appenders share one durable write.

Why: a durable append has a fixed cost that does not depend on how many messages it carries
(the file log: its lock, its tail check, one fsync, the tail hint; Kafka: a produce request
acknowledged with acks=all, plus aiokafka's per-`send()` Python overhead). With many
writers each appending one event, paying that cost once per caller bounds the log at
1/cost appends per second, far below what the disk or the broker takes. So every log
queues its callers' batches here and one flusher task writes everything queued as one
batch, in arrival order, while the next callers queue behind it.

What each caller still gets, exactly as with a write of its own:

- its own positions, in its input order (a slice of the group's positions);
- durability on return: a caller's future is resolved only after the group's write
  returned, i.e. after its fsync / acks=all;
- the error when the group's write fails: every caller of that group gets it (a copy of
  the same exception), and none of them is told its events are written. Callers queued
  behind a failed group are written by the next write (a fresh attempt), not failed with it;
- ordering: groups are written one at a time, in order, so a caller whose append returned
  before another caller's append began precedes it in the log, and the messages of one
  caller are contiguous and in input order. The log's own chain (memstream.log.chain) is
  computed by the write, over the group in order, so it links exactly as the log is written.

Cancellation (memstream.cancellation): a caller cancelled while its batch is still queued
is dropped from the queue, so nothing of it is written (as when its task was cancelled
before calling append). Once its batch has been taken into a group the write runs to its end
in the flusher task, which no caller's cancellation reaches, like a write begun in a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from memstream.log.base import Position

__all__ = ["GroupCommit"]

Message = tuple[bytes, bytes]
Write = Callable[[list[Message]], Awaitable[list[Position]]]


@dataclass(slots=True)
class _Queued:
    messages: list[Message]
    size: int
    future: asyncio.Future[list[Position]]


class GroupCommit:
    """Queue appends and write them in groups through `write` (see the module docstring).

    `write(messages)` must append every message durably, in order, and return their
    positions in that order, or raise (then nothing of it may be reported as written).
    A group holds at most `max_messages` messages and `max_bytes` bytes of keys and values,
    except that a single caller's batch is never split (it is one group on its own then).
    """

    def __init__(self, write: Write, *, max_messages: int = 10_000, max_bytes: int = 8 << 20):
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be >= 1")
        self._write = write
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._queue: deque[_Queued] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # how many writes were made (for tests and benchmarks)

    async def append(self, messages: Sequence[Message]) -> list[Position]:
        """Append `messages` (already checked by the log) in the next group; their positions."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. asyncio.run again)
            old = self._loop
            if old is not None and not old.is_closed() and self._queue:
                raise RuntimeError("a log's appends run on one event loop at a time")
            self._loop, self._flusher = loop, None
            self._queue.clear()  # left by a loop that was closed while they waited
        batch = list(messages)
        queued = _Queued(batch, sum(len(k) + len(v) for k, v in batch), loop.create_future())
        self._queue.append(queued)
        if self._flusher is None or self._flusher.done():
            # an empty context: the flusher serves many requests, it is none of theirs
            self._flusher = loop.create_task(self._drain(), context=contextvars.Context())
        # Awaiting the future directly: a cancelled caller cancels its own future, which
        # the flusher then skips if it has not taken it yet (nothing of it is written).
        return await queued.future

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or failed): before closing."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.shield(flusher)

    def _take(self) -> list[_Queued]:
        group: list[_Queued] = []
        count = size = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued: never written
                self._queue.popleft()
                continue
            if group and (
                count + len(head.messages) > self.max_messages or size + head.size > self.max_bytes
            ):
                break
            group.append(self._queue.popleft())
            count += len(head.messages)
            size += head.size
        return group

    async def _drain(self) -> None:
        while self._queue:
            group = self._take()
            if not group:
                continue
            messages = [m for q in group for m in q.messages]
            self.groups += 1
            try:
                positions = await self._write(messages)
            except Exception as exc:  # every caller of the group gets the error
                for q in group:
                    if not q.future.done():
                        q.future.set_exception(_copy(exc))
                continue
            except BaseException:
                # the flusher itself was cancelled (the loop is shutting down): whether the
                # write landed is unknown, so nobody is told it did
                for q in (*group, *self._queue):
                    q.future.cancel()
                self._queue.clear()
                raise
            if len(positions) != len(messages):  # a broken write: claim nothing
                error = RuntimeError(
                    f"the log returned {len(positions)} positions for {len(messages)} messages"
                )
                for q in group:
                    if not q.future.done():
                        q.future.set_exception(_copy(error))
                continue
            start = 0
            for q in group:
                end = start + len(q.messages)
                if not q.future.done():  # its caller may have gone meanwhile
                    q.future.set_result(positions[start:end])
                start = end


def _copy(exc: BaseException) -> BaseException:
    """One exception object per caller: raising one object in many tasks would pile every
    task's traceback onto it. The copy keeps the cause (what the log said)."""
    try:
        out = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception type that cannot be copied
        return exc
    out.__cause__, out.__context__ = exc.__cause__, exc.__context__
    out.__traceback__ = exc.__traceback__
    return out
