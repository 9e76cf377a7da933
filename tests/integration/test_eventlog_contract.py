"""The EventLog contract: one suite, run unchanged against every implementation.

Each test is parametrized over the embedded file log and Kafka (`-k file` / `-k kafka`, or
`-m kafka` / `-m "not kafka"`). The Kafka cases get a broker from tests/kafka_broker.py
(env KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else scripts/kafka-local) and a fresh
topic per test; the file cases get a fresh directory.

Message size limit: key + value up to MAX_MESSAGE_BYTES (1,048,000 bytes, i.e. 1 MiB minus
a little framing room), which fits Kafka's default `message.max.bytes` (1,048,588 bytes per
record batch) without touching broker or topic settings. Every log must accept messages up
to that size and refuse larger ones without writing any of the batch, so data that fits one
log fits the other.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from memstream.errors import LogUnavailableError, ValidationError
from memstream.log.base import MAX_MESSAGE_BYTES, EventLog, LogRecord, Offsets, Position

pytestmark = pytest.mark.timeout(300)  # the first Kafka case may include a cold broker start

READ_TIMEOUT_S = 20.0


@dataclass
class LogUnderTest:
    """One implementation under test: `open()` gives a new instance on the same storage."""

    kind: str
    open: Callable[[], EventLog]


@pytest.fixture(
    params=[
        pytest.param("file", id="file"),
        pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
    ]
)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> LogUnderTest:
    if request.param == "file":
        from memstream.log.file import FileEventLog

        directory = tmp_path / "eventlog"
        return LogUnderTest("file", lambda: FileEventLog(directory))

    from memstream.log.kafka import KafkaEventLog

    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topic: str = request.getfixturevalue("kafka_topic")
    return LogUnderTest(
        "kafka", lambda: KafkaEventLog(bootstrap, topic=topic, partitions=3, client_id="contract")
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=240))


# ----------------------------------------------------------------------------- helpers


async def read_records(
    log: EventLog,
    expected: int,
    start: Offsets | None = None,
    *,
    group_id: str | None = None,
    timeout_s: float = READ_TIMEOUT_S,
) -> list[LogRecord]:
    """Read `expected` records from `start`, then check nothing more comes."""
    reader = await log.reader(start, group_id=group_id)
    try:
        out: list[LogRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            out += await reader.next_batch(max_records=500, timeout_s=0.5)
        assert len(out) >= expected, f"read {len(out)} of {expected} records in {timeout_s}s"
        extra = await reader.next_batch(max_records=500, timeout_s=0.3)
        assert extra == [], f"{len(extra)} records beyond the expected {expected}"
        return out
    finally:
        await reader.close()


def assert_partition_order(records: Sequence[LogRecord]) -> None:
    """Within each partition, records come in strictly increasing offset order."""
    last: dict[int, int] = {}
    for r in records:
        p, o = r.position.partition, r.position.offset
        assert o > last.get(p, -1), f"partition {p}: offset {o} after {last.get(p)}"
        last[p] = o


def by_partition(positions: Sequence[Position]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for pos in positions:
        out[pos.partition].append(pos.offset)
    return out


def messages(n: int, keys: int = 5, tag: str = "m") -> list[tuple[bytes, bytes]]:
    return [(f"key-{i % keys}".encode(), f"{tag}-{i}".encode()) for i in range(n)]


# ------------------------------------------------------------------------------- tests


def test_start_is_idempotent_and_a_fresh_log_is_empty(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        log = subject.open()
        await log.start()
        await log.start()
        try:
            ends = await log.end_offsets()
            assert ends and all(v == 0 for v in ends.values()), ends
            assert await log.committed("nobody") == {}
            assert await read_records(log, 0) == []
        finally:
            await log.close()

    run(scenario)


def test_append_returns_positions_in_input_order_increasing_per_partition(
    subject: LogUnderTest,
) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            first = await log.append(messages(20))
            second = await log.append(messages(7, tag="again"))
        assert len(first) == 20 and len(second) == 7
        assert len(set(first + second)) == 27, "positions must be unique"
        # A fresh log: each partition's offsets are 0, 1, 2, ... in input order.
        for p, offsets in by_partition(first + second).items():
            assert offsets == list(range(len(offsets))), (p, offsets)
        for a, b in zip(first, first[1:], strict=False):
            if a.partition == b.partition:
                assert a.offset < b.offset

    run(scenario)


def test_same_key_same_partition_in_order(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            sent: list[tuple[bytes, bytes]] = []
            positions: list[Position] = []
            for batch in range(5):  # several appends: order holds across batches too
                msgs = [(f"scope-{i % 10}".encode(), f"{batch}-{i}".encode()) for i in range(30)]
                positions += await log.append(msgs)
                sent += msgs
            records = await read_records(log, len(sent))
        partition_of: dict[bytes, set[int]] = defaultdict(set)
        for (key, _), pos in zip(sent, positions, strict=True):
            partition_of[key].add(pos.partition)
        assert all(len(ps) == 1 for ps in partition_of.values()), partition_of
        for key in partition_of:
            sent_values = [v for k, v in sent if k == key]
            read_values = [r.value for r in records if r.key == key]
            assert read_values == sent_values, key

    run(scenario)


def test_reader_from_zero_returns_everything_in_order_with_exact_bytes(
    subject: LogUnderTest,
) -> None:
    rng = random.Random(7)
    payloads = [
        (b"k", b""),  # empty value
        (b"", b"empty key"),
        (bytes(range(256)), bytes(range(256))[::-1]),  # every byte value, NULs included
        ("ключ/🔑".encode(), "значение ✓".encode()),
        *[
            (rng.randbytes(rng.randint(1, 40)), rng.randbytes(rng.randint(0, 5000)))
            for _ in range(60)
        ],
    ]

    async def scenario() -> None:
        before_ms = int(time.time() * 1000)
        async with subject.open() as log:
            positions = await log.append(payloads)
            records = await read_records(log, len(payloads))
        after_ms = int(time.time() * 1000)
        assert_partition_order(records)
        got = {r.position: r for r in records}
        assert len(got) == len(payloads), "no duplicates"
        for (key, value), pos in zip(payloads, positions, strict=True):
            r = got[pos]
            assert (r.key, r.value) == (key, value), pos
            assert before_ms - 60_000 <= r.timestamp_ms <= after_ms + 60_000

    run(scenario)


def test_reader_from_an_offset_starts_there(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            positions = await log.append(messages(40, keys=4))
            p = positions[0].partition
            in_p = [pos for pos in positions if pos.partition == p]
            start = {p: in_p[3].offset}  # other partitions (if any) start at 0
            expected = [pos for pos in positions if pos.partition != p or pos.offset >= start[p]]
            records = await read_records(log, len(expected), start)
            assert sorted(r.position for r in records) == sorted(expected)
            assert_partition_order(records)
            assert min(r.position.offset for r in records if r.position.partition == p) == start[p]

            # Starting at the end reads nothing old, then sees what is appended later (tailing).
            ends = await log.end_offsets()
            reader = await log.reader(ends)
            try:
                assert await reader.next_batch(timeout_s=0.3) == []
                new = await log.append([(b"key-0", b"late")])
                got: list[LogRecord] = []
                deadline = time.monotonic() + READ_TIMEOUT_S
                while not got and time.monotonic() < deadline:
                    got = await reader.next_batch(timeout_s=0.5)
                assert [(r.position, r.value) for r in got] == [(new[0], b"late")]
            finally:
                await reader.close()

    run(scenario)


def test_end_offsets_after_appends(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            fresh = await log.end_offsets()
            positions = await log.append(messages(25, keys=3))
            positions += await log.append(messages(5, keys=1, tag="b"))
            ends = await log.end_offsets()
        assert set(fresh) == set(ends), "end_offsets covers every partition, even empty ones"
        written = by_partition(positions)
        for p in ends:
            assert ends[p] == (max(written[p]) + 1 if p in written else 0), (p, ends)

    run(scenario)


def test_commit_then_committed_returns_it(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            positions = await log.append(messages(12, keys=6))
            assert await log.committed("projector") == {}
            reader = await log.reader(group_id="projector")
            try:
                seen: list[LogRecord] = []
                deadline = time.monotonic() + READ_TIMEOUT_S
                while len(seen) < 12 and time.monotonic() < deadline:
                    seen += await reader.next_batch(timeout_s=0.5)
                halfway: Offsets = {}
                for r in seen[:6]:
                    p = r.position.partition
                    halfway[p] = max(halfway.get(p, 0), r.position.offset + 1)
                await reader.commit(halfway)
                assert await log.committed("projector") == halfway
                done = {p: max(o) + 1 for p, o in by_partition(positions).items()}
                await reader.commit(done)
                assert await log.committed("projector") == done
            finally:
                await reader.close()
            assert await log.committed("someone-else") == {}
            # Resuming from the committed offsets reads nothing more...
            assert await read_records(log, 0, await log.committed("projector")) == []
            # ...until something new arrives.
            new = await log.append([(b"key-1", b"after commit")])
            resumed = await read_records(log, 1, await log.committed("projector"))
            assert [r.position for r in resumed] == new

    run(scenario)


def test_reopening_sees_everything(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        sent = messages(30, keys=5)
        async with subject.open() as log:
            first = await log.append(sent)
            ends = await log.end_offsets()
            reader = await log.reader(group_id="g")
            try:
                await reader.commit({p: o for p, o in ends.items() if o > 0})
            finally:
                await reader.close()
        async with subject.open() as again:  # a new instance on the same dir / topic
            assert await again.end_offsets() == ends
            assert await again.committed("g") == {p: o for p, o in ends.items() if o > 0}
            records = await read_records(again, len(sent))
            assert {r.position: (r.key, r.value) for r in records} == dict(
                zip(first, sent, strict=True)
            )
            more = await again.append([(b"key-0", b"after reopen")])
            assert more[0].offset == ends[more[0].partition], "offsets continue after reopen"

    run(scenario)


def test_empty_batch(subject: LogUnderTest) -> None:
    async def scenario() -> None:
        async with subject.open() as log:
            assert await log.append([]) == []
            ends = await log.end_offsets()
            assert all(v == 0 for v in ends.values())
            assert await read_records(log, 0) == []
            await log.append([(b"k", b"v")])
            assert await log.append([]) == []
            assert sum((await log.end_offsets()).values()) == 1

    run(scenario)


def test_large_values_up_to_the_limit(subject: LogUnderTest) -> None:
    key = b"large"
    biggest = os.urandom(MAX_MESSAGE_BYTES - len(key))
    batch = [(key, b"small-1"), (key, biggest), (key, os.urandom(700_000)), (key, b"small-2")]

    async def scenario() -> None:
        async with subject.open() as log:
            positions = await log.append(batch)
            positions += await log.append([(key, biggest[::-1])])
            records = await read_records(log, 5)
        assert [r.position for r in records] == positions  # one key: one partition, in order
        assert [r.value for r in records] == [v for _, v in batch] + [biggest[::-1]]

    run(scenario)


def test_oversized_message_is_refused_and_nothing_of_the_batch_is_written(
    subject: LogUnderTest, request: pytest.FixtureRequest
) -> None:
    too_big = (b"k", b"x" * MAX_MESSAGE_BYTES)  # key + value = limit + 1

    async def scenario() -> None:
        async with subject.open() as log:
            with pytest.raises((ValidationError, LogUnavailableError)):
                await log.append([(b"k", b"fits"), too_big])
            assert all(v == 0 for v in (await log.end_offsets()).values())
            [pos] = await log.append([(b"k", b"still works")])
            assert pos.offset == 0
            records = await read_records(log, 1)
            assert [(r.key, r.value) for r in records] == [(b"k", b"still works")]

    run(scenario)


def test_concurrent_appends_from_many_tasks_lose_nothing(subject: LogUnderTest) -> None:
    tasks, per_task = 40, 25

    async def scenario() -> None:
        async with subject.open() as log:

            async def writer(t: int) -> list[Position]:
                out: list[Position] = []
                for b in range(per_task // 5):
                    msgs = [(f"task-{t}".encode(), f"{t}:{b}:{i}".encode()) for i in range(5)]
                    out += await log.append(msgs)
                return out

            results = await asyncio.gather(*(writer(t) for t in range(tasks)))
            records = await read_records(log, tasks * per_task)
        positions = [p for res in results for p in res]
        assert len(positions) == len(set(positions)) == tasks * per_task
        assert_partition_order(records)
        assert sorted(r.position for r in records) == sorted(positions)
        for t in range(tasks):  # each writer's own order survives the interleaving
            values = [r.value for r in records if r.key == f"task-{t}".encode()]
            assert values == [
                f"{t}:{b}:{i}".encode() for b in range(per_task // 5) for i in range(5)
            ]

    run(scenario)
