"""Group commit (memstream.log.group) on the real logs: real files and a real Kafka broker.

Many concurrent appenders share one write, and each must still get exactly its own
positions, only once its events are durable; the log's hash chain must link the events in
the order they are stored; a failed group write must reach every caller of that group and
acknowledge nothing; a caller cancelled while queued writes nothing, one cancelled after
its group began is written whole (memstream.cancellation's `committing()` contract).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from memstream.errors import LogCorruptError, LogUnavailableError
from memstream.kafkautil import admin_client
from memstream.log.base import EventLog, LogRecord, Position
from memstream.log.chain import ChainVerifier
from memstream.log.checkpoint import walk
from memstream.log.file import CORRUPT_MARKER, FileEventLog
from memstream.log.kafka import KafkaEventLog

pytestmark = pytest.mark.timeout(300)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=240))


@pytest.fixture(params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], EventLog]:
    if request.param == "file":
        return lambda: FileEventLog(tmp_path / "log")
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topic: str = request.getfixturevalue("kafka_topic")
    return lambda: KafkaEventLog(bootstrap, topic=topic, partitions=3, client_id="group-test")


async def everything(log: EventLog) -> tuple[list[LogRecord], ChainVerifier]:
    """Every record of the log, walked in offset order per partition through the chain
    check `memstream verify` runs."""
    records: list[LogRecord] = []
    verifier = ChainVerifier()

    def feed(record: LogRecord) -> None:
        records.append(record)
        verifier.feed(record)

    await walk(log, feed)
    verifier.finish()
    return records, verifier


def test_many_concurrent_appenders_each_get_exactly_their_own_positions(
    open_log: Callable[[], EventLog],
) -> None:
    writers, rounds = 64, 6
    rng = random.Random(16)
    sizes = {(w, r): rng.randint(1, 6) for w in range(writers) for r in range(rounds)}
    keys = [f"scope-{k}".encode() for k in range(7)]  # scopes shared across writers

    def batch(w: int, r: int) -> list[tuple[bytes, bytes]]:
        return [(keys[(w + i) % len(keys)], f"w{w}:r{r}:i{i}".encode() + b"." * rng.randint(0, 300))
                for i in range(sizes[(w, r)])]  # fmt: skip

    async def scenario() -> None:
        async with open_log() as log:
            got: dict[Position, bytes] = {}
            calls = 0

            async def writer(w: int) -> None:
                nonlocal calls
                for r in range(rounds):
                    messages = batch(w, r)
                    positions = await log.append(messages)
                    calls += 1
                    assert len(positions) == len(messages)
                    for pos, (_, value) in zip(positions, messages, strict=True):
                        assert pos not in got, f"{pos} given to two messages"
                        got[pos] = value

            await asyncio.gather(*(writer(w) for w in range(writers)))
            groups = log._group.groups  # type: ignore[attr-defined]
            records, verifier = await everything(log)

        assert calls == writers * rounds
        assert groups < calls  # appenders did share writes (else this tests nothing new)
        # every record is where its appender was told it is, and nothing else is in the log
        assert {r.position: r.value for r in records} == got
        assert verifier.findings == [] and verifier.chained == len(records) == sum(sizes.values())
        # a writer's own appends keep their order per scope (each returned before the next)
        for w in range(writers):
            for key in keys:
                mine = [r.value.split(b".")[0] for r in records
                        if r.key == key and r.value.startswith(f"w{w}:".encode())]  # fmt: skip
                order = [(int(v.split(b":")[1][1:]), int(v.split(b":")[2][1:])) for v in mine]
                assert order == sorted(order)

    run(scenario)


def test_every_file_log_caller_of_a_failed_group_is_told_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """Another process holds the log's lock, so one group is in flight (waiting for the
    lock) while the next queues behind it; then the log is marked corrupt: both groups'
    appends are refused, every caller hears it, and the log holds none of their events."""
    directory = tmp_path / "log"

    async def scenario() -> None:
        async with FileEventLog(directory) as log:
            await log.append([(b"k", b"before")])
            fd = os.open(directory / "log.lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" appending
            try:
                first = asyncio.create_task(log.append([(b"k", b"first")]))
                while log._group._queue or log._group.groups < 2:  # taken: in flight
                    await asyncio.sleep(0.01)
                rest = [asyncio.create_task(log.append([(b"k", f"q{i}".encode())] * 2))
                        for i in range(10)]  # fmt: skip
                await asyncio.sleep(0.05)
                assert not any(t.done() for t in [first, *rest])  # all waiting on the lock
                (directory / CORRUPT_MARKER).write_text(json.dumps({"reason": "test"}))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
            assert log._group.groups == 3  # "before", [first], then the ten queued as one
            assert all(isinstance(o, LogCorruptError) for o in outcomes), outcomes
            assert len({id(o) for o in outcomes}) == len(outcomes)  # one error object each
            (directory / CORRUPT_MARKER).unlink()
            assert await log.end_offsets() == {0: 1}
            records, verifier = await everything(log)
            assert [r.value for r in records] == [b"before"] and not verifier.findings
            # the log takes appends again once the marker is gone
            after = await asyncio.gather(*(log.append([(b"k", f"a{i}".encode())])
                                           for i in range(5)))  # fmt: skip
            assert sorted(p.offset for [p] in after) == [1, 2, 3, 4, 5]

    run(scenario)


def test_a_file_log_caller_cancelled_while_queued_writes_nothing_one_in_flight_writes_all(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "log"

    async def scenario() -> None:
        async with FileEventLog(directory) as log:
            fd = os.open(directory / "log.lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                in_flight = asyncio.create_task(log.append([(b"k", b"in-flight")] * 3))
                while log._group._queue or log._group.groups < 1:
                    await asyncio.sleep(0.01)
                queued = [asyncio.create_task(log.append([(b"k", f"queued-{i}".encode())]))
                          for i in range(3)]  # fmt: skip
                await asyncio.sleep(0.05)
                in_flight.cancel()  # its write has begun: it runs to its end
                queued[1].cancel()  # still queued: dropped whole
                await asyncio.sleep(0.05)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            outcomes = await asyncio.gather(in_flight, *queued, return_exceptions=True)
            assert isinstance(outcomes[0], asyncio.CancelledError)
            assert isinstance(outcomes[2], asyncio.CancelledError)
            assert outcomes[1] == [Position(0, 3)] and outcomes[3] == [Position(0, 4)]
            records, verifier = await everything(log)
            assert [r.value for r in records] == [b"in-flight"] * 3 + [b"queued-0", b"queued-2"]
            assert not verifier.findings and verifier.chained == 5

    run(scenario)


@pytest.mark.kafka
def test_every_kafka_caller_of_a_refused_group_is_told_and_nothing_is_acknowledged(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """The topic takes record batches of at most 2,000 bytes (`max.message.bytes`): one
    small append fits, but thirty callers' events grouped into one batch do not, so the
    broker refuses the group's produce. Every caller of the group gets the error, none is
    told its event is written, the log holds none of them, and the log goes on (a new
    producer, a new chain) with every chain link verifiable."""
    value = b"v" * 300

    async def scenario() -> None:
        admin = admin_client(kafka_bootstrap, "group-test", 30)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(kafka_topic, num_partitions=3,
                replication_factor=1, topic_configs={"max.message.bytes": "2000"})])  # fmt: skip
        finally:
            await admin.close()
        log = KafkaEventLog(kafka_bootstrap, topic=kafka_topic, client_id="group-test")
        async with log:
            [alone] = await log.append([(b"one-scope", value)])
            outcomes = await asyncio.gather(
                *(log.append([(b"one-scope", value)]) for _ in range(30)),
                return_exceptions=True,
            )
            assert log._group.groups == 2  # the thirty went as one group
            assert all(isinstance(o, LogUnavailableError) for o in outcomes), outcomes
            end = await log.end_offsets()
            assert end[alone.partition] == alone.offset + 1  # nothing of the group landed
            [after] = await log.append([(b"one-scope", b"after")])
            assert after.offset == alone.offset + 1
            records, verifier = await everything(log)
        assert [r.value for r in records] == [value, b"after"]
        assert not verifier.findings and verifier.chained == 2

    run(scenario)
