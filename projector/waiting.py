"""Waiting for the projector: whether a checkpoint covers positions, the future that wakes
waiting writers after each step, the timeout a write gets when its event is durable but not
projected yet, and how a pinned position is shown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from memstream.errors import MemstreamError
from memstream.log.base import Offsets, Position


class ProjectionTimeout(MemstreamError):
    """The event is durable in the log but was not projected in time."""

    status_code = 504


def covers(checkpoint: Offsets, required: Offsets) -> bool:
    return all(checkpoint.get(p, 0) >= o for p, o in required.items())


def required_offsets(positions: Sequence[Position]) -> Offsets:
    req: Offsets = {}
    for pos in positions:
        req[pos.partition] = max(req.get(pos.partition, 0), pos.offset + 1)
    return req


class Progress:
    """Wakes whoever waits for the projector's next step. One shared future per step
    rather than asyncio.Event + wait_for: hundreds of waiting writers then cost no task
    each per wake-up."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def set(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    async def wait(self, timeout_s: float) -> bool:
        """Until the next `set` (True) or `timeout_s` (False)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        done, _ = await asyncio.wait([self._next], timeout=timeout_s)
        return bool(done)


def describe_pin(pinned: Offsets) -> str:
    """A pin as the positions `--to-position` takes: "p:o" of the last included event."""
    return ",".join(f"{p}:{o - 1}" for p, o in sorted(pinned.items()))
