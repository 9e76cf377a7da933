"""GroupCommit (memstream.log.group) against a reference: appending one caller at a time.

The write under it here is an in-memory log that can fail a whole group (a group holding a
"poison" message is refused, as a disk or broker refuses a whole write) and that yields to
the event loop while it "writes", so callers queue behind it. Hypothesis varies how many
callers there are, their batch sizes, when they arrive, which fail and which are cancelled.
The real logs under group commit are tested in tests/integration/test_group_commit.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.errors import LogUnavailableError
from memstream.log.base import Position
from memstream.log.group import GroupCommit

POISON = b"poison"


class MemoryLog:
    """A log in a list: a write stores its whole group or nothing."""

    def __init__(self, yields: list[int]) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.groups: list[int] = []
        self._yields = itertools.cycle(yields or [0])

    async def write(self, messages: list[tuple[bytes, bytes]]) -> list[Position]:
        for _ in range(next(self._yields)):
            await asyncio.sleep(0)
        if any(v == POISON for _, v in messages):
            raise LogUnavailableError("the disk refused the write")
        start = len(self.records)
        self.records.extend(messages)
        self.groups.append(len(messages))
        return [Position(0, start + i) for i in range(len(messages))]


caller = st.tuples(
    st.integers(1, 5),  # messages
    st.integers(0, 4),  # event-loop steps before it calls append
    st.booleans(),  # one of its messages is poison
    st.one_of(st.none(), st.integers(0, 4)),  # cancelled this many steps after calling
)


@settings(max_examples=150, deadline=None)
@given(
    callers=st.lists(caller, min_size=1, max_size=25),
    yields=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    max_messages=st.integers(1, 12),
)
def test_each_caller_gets_its_own_positions_or_the_error_and_nothing_else(
    callers: list[tuple[int, int, bool, int | None]], yields: list[int], max_messages: int
) -> None:
    log = MemoryLog(yields)
    group = GroupCommit(log.write, max_messages=max_messages)
    clock = itertools.count()
    called: dict[int, int] = {}
    returned: dict[int, int] = {}

    def messages_of(c: int) -> list[tuple[bytes, bytes]]:
        n, _, poison, _ = callers[c]
        out = [(f"k{c % 3}".encode(), f"c{c}:m{i}".encode()) for i in range(n)]
        if poison:
            out[-1] = (out[-1][0], POISON)
        return out

    async def one(c: int) -> list[Position]:
        for _ in range(callers[c][1]):
            await asyncio.sleep(0)
        called[c] = next(clock)
        positions = await group.append(messages_of(c))
        returned[c] = next(clock)
        return positions

    async def scenario() -> list[list[Position] | BaseException]:
        tasks = [asyncio.create_task(one(c)) for c in range(len(callers))]

        async def cancel(c: int, after: int) -> None:
            while c not in called:
                await asyncio.sleep(0)
            for _ in range(after):
                await asyncio.sleep(0)
            tasks[c].cancel()

        cancellers = [
            cancel(c, after) for c, (*_, after) in enumerate(callers) if after is not None
        ]
        await asyncio.gather(*cancellers)
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await group.drain()
        return out

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 30))

    stored = {value: i for i, (_, value) in enumerate(log.records)}
    assert len(stored) == len(log.records)  # nothing written twice
    for c, outcome in enumerate(outcomes):
        mine = messages_of(c)
        if isinstance(outcome, list):  # told: written, exactly here, whole and in order
            assert [log.records[p.offset] for p in outcome] == mine
            assert [p.offset for p in outcome] == list(
                range(outcome[0].offset, outcome[0].offset + len(mine))
            )
        elif isinstance(outcome, LogUnavailableError):  # told: not written
            assert not any(v in stored for _, v in mine)
        else:  # cancelled: its batch is in the log whole or not at all
            assert isinstance(outcome, asyncio.CancelledError)
            present = [v in stored for _, v in mine]
            assert all(present) or not any(present)
        if any(v == POISON for _, v in mine):
            assert not isinstance(outcome, list)  # a refused group acknowledges nothing
    # a caller that returned before another called append precedes it in the log
    done = [(c, o) for c, o in enumerate(outcomes) if isinstance(o, list)]
    for (a, pa), (b, pb) in itertools.permutations(done, 2):
        if returned[a] < called[b]:
            assert pa[-1].offset < pb[0].offset
    # a group never exceeds the bound unless one caller's batch alone does
    assert all(n <= max(max_messages, 5) for n in log.groups)


def test_a_caller_queued_behind_a_failed_group_is_written_by_the_next_write() -> None:
    log = MemoryLog([2])
    group = GroupCommit(log.write)

    async def scenario() -> list[list[Position] | BaseException]:
        first = asyncio.create_task(group.append([(b"k", POISON)]))
        await asyncio.sleep(0)  # the flusher has taken `first` and is writing it
        await asyncio.sleep(0)
        second = asyncio.create_task(group.append([(b"k", b"fine")]))
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert isinstance(first, LogUnavailableError)
    assert second == [Position(0, 0)] and log.records == [(b"k", b"fine")]


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(MemoryLog([0]).write, max_messages=0)


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.binary(max_size=60), max_size=40))
def test_the_kafka_logs_remembered_partition_is_the_partitioners(keys: list[bytes]) -> None:
    """KafkaEventLog remembers each key's partition; it must be what murmur2 picks."""
    from aiokafka.partitioner import DefaultPartitioner

    from memstream.log.kafka import KafkaEventLog

    log = KafkaEventLog("127.0.0.1:9")
    log._partitions = [0, 1, 2]
    reference = DefaultPartitioner()
    for key in keys + keys:  # the second time from memory
        assert log._partition_of(key) == reference(key, [0, 1, 2], [0, 1, 2])
