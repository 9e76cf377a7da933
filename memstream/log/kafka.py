"""`KafkaEventLog`: the event log on an Apache Kafka topic, through aiokafka.

- One topic (default `memstream.events`), created on `start()` if missing, with infinite
  retention (the log is the source of truth, nothing may age out of it).
- Producer with `acks=all` and idempotence on; the default partitioner hashes the key
  (murmur2, like the Java client), so one key -> one partition -> one order.
- Readers use manual assignment of every partition (no group rebalancing: each projector
  reads everything) and commit progress for their `group_id` only when told to.
- Every Kafka failure (unreachable broker, timeouts, broker errors) surfaces as
  `LogUnavailableError` naming the bootstrap servers, the topic and the cause; every network
  step is bounded by a timeout, so an unreachable broker is an error, not a hang.
- Concurrent appends are written together (memstream.log.group): the messages queued while
  one produce is in flight go as the next, one record batch per partition, each caller
  answered with its own positions once that produce is acknowledged (acks=all).
- An append not acknowledged within `append_timeout_s` (settings: MEMSTREAM_APPEND_TIMEOUT_S;
  counted from when its group is sent, so a caller queued behind a group may wait up to
  about twice that) fails with 503, and the producer is then dropped with everything still
  in its queue, so messages the broker never received are not delivered later behind the
  caller's back. A message the broker had already received (its acknowledgement lost) may
  still be in the log: the 503 says so, and a retry with the same request_id is a no-op
  then. The next append starts a new producer, so the service recovers when the broker
  returns.

Message size: one message's key + value may be at most `memstream.log.base.MAX_MESSAGE_BYTES`.
It then fits, with record-batch framing, under Kafka's default `message.max.bytes`
(1,048,588 bytes per record batch), so no broker or topic setting has to change. Larger
messages are refused with `ValidationError` before anything of the batch is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from memstream.errors import KeyStoreError, LogUnavailableError, ValidationError
from memstream.kafkautil import (
    bounded,
    consume_exception,
    ensure_topic,
    kafka_error,
    quietly,
    stop_producer,
)
from memstream.keystore.base import KeyStore
from memstream.keystore.kafka import KafkaKeyStore
from memstream.keystore.master import MasterKeys
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets, Position
from memstream.log.chain import KAFKA_CHAIN_HEADER, ProducerChain
from memstream.log.group import GroupCommit

__all__ = ["KafkaEventLog", "KafkaLogReader"]

log = logging.getLogger(__name__)

"""Largest key + value of one message, in bytes (see the module docstring)."""

BROKER_MAX_BATCH_BYTES = 1_048_588
"""Kafka's default `message.max.bytes`: the largest record batch a broker accepts."""

TOPIC_CONFIGS = {
    # The log is the only source of truth: nothing expires, nothing is compacted away.
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
}

GROUP_BATCH_BYTES = 512 * 1024
"""Bytes of records per record batch an append group fills before starting another one for
the same partition (a larger single record gets a batch of its own): under the broker's
limit per batch, and large enough that a group of many writers' events is one batch."""

PARTITION_CACHE_KEYS = 100_000
"""Scopes whose partition `_partition_of` remembers (then it starts over)."""

T = TypeVar("T")

UNCERTAIN = (
    ". Not acknowledged: the write was withdrawn from the producer's queue, but a message "
    "the broker had already received may still be in the log; retry with the same "
    "request_id (Idempotency-Key) to write it at most once"
)


class KafkaEventLog(EventLog):
    """The event log on a Kafka topic. See the module docstring for the guarantees."""

    name = "kafka"

    @property
    def identity(self) -> str:
        return f"kafka:{self.topic}"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "memstream.events",
        partitions: int = 3,
        replication_factor: int = 1,
        client_id: str = "memstream",
        *,
        connect_timeout_s: float = 15.0,
        request_timeout_s: float = 30.0,
        append_timeout_s: float = 10.0,
        master_keys: MasterKeys | None = None,
    ) -> None:
        if not bootstrap_servers or not bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty")
        if append_timeout_s <= 0:
            raise ValueError("append_timeout_s must be > 0")
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be >= 1")
        self.bootstrap_servers = bootstrap_servers.strip()
        self.topic = topic
        self.num_partitions = partitions
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.append_timeout_s = append_timeout_s
        self.master_keys = master_keys  # wraps the subject keys (memstream.keystore.master)
        self._started = False
        self._producer_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._meta: AIOKafkaConsumer | None = None  # no group: end offsets only
        self._partitions: list[int] = []
        self._readers: weakref.WeakSet[KafkaLogReader] = weakref.WeakSet()
        self._start_lock = asyncio.Lock()
        self._chain = ProducerChain()  # memstream.log.chain: this producer's hash chains
        self._chain_lock = asyncio.Lock()
        self._group = GroupCommit(self._write_group)  # concurrent appends share a produce
        self._dead_letter_ready = False
        self._partitioner = DefaultPartitioner()  # murmur2, as the client would pick
        self._partition_cache: dict[bytes, int] = {}  # see _partition_of

    def __repr__(self) -> str:
        return f"KafkaEventLog({self.bootstrap_servers!r}, topic={self.topic!r})"

    # ------------------------------------------------------------------ helpers

    def _error(self, action: str, exc: BaseException | str) -> LogUnavailableError:
        return kafka_error("Kafka event log", self.bootstrap_servers, self.topic, action, exc)

    async def _bounded(self, action: str, aw: Awaitable[T], timeout_s: float) -> T:
        """Await `aw` within `timeout_s`; any Kafka/network failure -> LogUnavailableError."""
        return await bounded(aw, timeout_s, lambda exc: self._error(action, exc))

    def _consumer(self, group_id: str | None) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="none",  # a position outside the log is an error, not a skip
            request_timeout_ms=int(self.request_timeout_s * 1000),
            isolation_level="read_uncommitted",
        )

    @property
    def partitions(self) -> list[int]:
        """The topic's partitions (known after `start()`)."""
        return list(self._partitions)

    def _tps(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in self._partitions]

    def _require_started(self) -> None:
        if not self._started:
            raise LogUnavailableError(f"{self!r} is not started (call start() first)")

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            max_request_size=BROKER_MAX_BATCH_BYTES,
            max_batch_size=GROUP_BATCH_BYTES,
            request_timeout_ms=int(min(self.request_timeout_s, self.append_timeout_s) * 1000),
            linger_ms=0,
        )

    async def _live_producer(self) -> AIOKafkaProducer:
        """The producer; a new one when the last was dropped after a failed append (so the
        service recovers when the broker returns, within the append's own time bound)."""
        self._require_started()
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            producer = self._new_producer()
            try:
                await self._bounded(
                    "reach Kafka",
                    producer.start(),
                    min(self.connect_timeout_s, self.append_timeout_s),
                )
            except BaseException:
                await stop_producer(producer, 0.5)
                raise
            log.info("Kafka producer reconnected to %s", self.bootstrap_servers)
            self._producer = producer
            return producer

    async def _drop_producer(self, producer: AIOKafkaProducer) -> None:
        """Discard `producer` and every message still queued in it (see the module docstring)."""
        async with self._producer_lock:
            if self._producer is producer:
                self._producer = None
        log.warning(
            "Kafka append to %s not acknowledged within %.1fs: dropping the producer and its queue",
            self.bootstrap_servers,
            self.append_timeout_s,
        )
        await stop_producer(producer, 0.1)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self._bounded(
                "reach Kafka", self._ensure_topic(), self.connect_timeout_s + self.request_timeout_s
            )
            producer = self._new_producer()
            meta = self._consumer(None)
            try:
                await self._bounded("reach Kafka", producer.start(), self.connect_timeout_s)
                parts = await self._bounded(
                    "read topic metadata",
                    producer.partitions_for(self.topic),
                    self.request_timeout_s,
                )
                await self._bounded("reach Kafka", meta.start(), self.connect_timeout_s)
            except BaseException:
                await stop_producer(producer, 5.0)
                await quietly(meta.stop())
                raise
            self._partitions = sorted(parts)
            self._partition_cache.clear()  # keyed by the partitions it was computed for
            self._producer, self._meta = producer, meta
            self._started = True
            if len(self._partitions) != self.num_partitions:
                log.warning(
                    "topic %s has %d partitions, not the configured %d; using the topic as is",
                    self.topic,
                    len(self._partitions),
                    self.num_partitions,
                )

    async def _ensure_topic(self) -> None:
        await ensure_topic(
            self.bootstrap_servers,
            NewTopic(
                self.topic,
                num_partitions=self.num_partitions,
                replication_factor=self.replication_factor,
                topic_configs=dict(TOPIC_CONFIGS),
            ),
            client_id=self.client_id,
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            error=self._error,
        )

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dead-letter"

    async def dead_letter(self, items: Sequence[tuple[LogRecord, str]]) -> None:
        """Each record to `<topic>.dead-letter` (created on first use, kept forever), with
        its key and value as they were and the reason and source position in headers."""
        self._require_started()
        if not items:
            return
        producer = await self._live_producer()
        if not self._dead_letter_ready:
            await self._bounded("create the dead-letter topic", ensure_topic(
                self.bootstrap_servers,
                NewTopic(self.dead_letter_topic, num_partitions=1,
                         replication_factor=self.replication_factor,
                         topic_configs=dict(TOPIC_CONFIGS)),
                client_id=self.client_id, connect_timeout_s=self.connect_timeout_s,
                request_timeout_s=self.request_timeout_s, error=self._error,
            ), self.connect_timeout_s + self.request_timeout_s)  # fmt: skip
            self._dead_letter_ready = True

        async def send_all() -> None:
            futures = []
            for record, reason in items:
                headers = [
                    ("dead-letter-reason", reason.encode()),
                    ("dead-letter-topic", self.topic.encode()),
                    ("dead-letter-partition", str(record.position.partition).encode()),
                    ("dead-letter-offset", str(record.position.offset).encode()),
                    *record.headers,
                ]
                futures.append(await producer.send(
                    self.dead_letter_topic, value=record.value, key=record.key or None,
                    headers=headers,
                ))  # fmt: skip
            await asyncio.gather(*futures)

        await self._bounded("dead-letter records", send_all(), self.request_timeout_s * 2)

    async def close(self) -> None:
        await self._group.drain()  # appends already queued are written (or fail) first
        for reader in list(self._readers):
            await quietly(reader.close())
        producer, meta = self._producer, self._meta
        self._producer = self._meta = None
        self._started = False
        if producer is not None:
            await stop_producer(producer, min(10.0, self.request_timeout_s))
        if meta is not None:
            await quietly(meta.stop())

    # ------------------------------------------------------------------ writes

    async def append(self, messages: Sequence[tuple[bytes, bytes]]) -> list[Position]:
        self._require_started()
        if not messages:
            return []
        self.check_messages(messages)
        return await self._group.append(messages)

    def _partition_of(self, key: bytes) -> int:
        """The partition the client's partitioner picks for `key` (murmur2, as the Java
        client would), remembered per key: aiokafka's murmur2 is pure Python (~20 us a
        call), and a key is a scope, written to again and again."""
        partition = self._partition_cache.get(key)
        if partition is None:
            if len(self._partition_cache) >= PARTITION_CACHE_KEYS:
                self._partition_cache.clear()
            partition = self._partitioner(key, self._partitions, self._partitions)
            self._partition_cache[key] = partition
        return partition

    async def _write_group(self, messages: list[tuple[bytes, bytes]]) -> list[Position]:
        """One group of concurrent appends (memstream.log.group) as one record batch per
        partition (more when one fills up), each record chained as it is added; returns
        once every batch is acknowledged (acks=all).

        Batches built here cost one C-level `append` per record, where `producer.send()`
        costs a coroutine, a metadata check, an accumulator lookup and a future per record:
        that per-message Python work, not the broker, was what bounded appends."""
        producer = await self._live_producer()
        futures: list[asyncio.Future[Any]] = []
        ts = int(time.time() * 1000)

        async def send_all() -> list[Position | BaseException]:
            # Under the chain lock, so each partition's chain links in the order it is sent.
            async with self._chain_lock:
                batches: list[tuple[int, BatchBuilder]] = []  # (partition, batch), in order
                counts: list[int] = []  # records in each batch
                open_: dict[int, int] = {}  # partition -> index of its batch being filled
                slots: list[tuple[int, int]] = []  # per message: (batch index, record index)
                for key, value in messages:
                    k, v = bytes(key), bytes(value)
                    partition = self._partition_of(k)
                    headers = [(KAFKA_CHAIN_HEADER, self._chain.link(partition, k, v))]
                    at = open_.get(partition)
                    if (
                        at is None
                        or batches[at][1].append(timestamp=ts, key=k, value=v, headers=headers)
                        is None
                    ):  # none yet, or it is full: a new batch for this partition
                        batch = producer.create_batch()
                        # the first record of a batch always fits (check_messages bounds it)
                        if batch.append(timestamp=ts, key=k, value=v, headers=headers) is None:
                            raise ValidationError(f"a message of {len(k) + len(v)} bytes does "
                                                  "not fit a Kafka record batch")  # fmt: skip
                        at = open_[partition] = len(batches)
                        batches.append((partition, batch))
                        counts.append(0)
                    slots.append((at, counts[at]))
                    counts[at] += 1
                # in creation order: a partition's second batch goes after its first
                for part, batch in batches:
                    futures.append(await producer.send_batch(batch, self.topic, partition=part))
            acked: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
            out: list[Position | BaseException] = []
            for at, i in slots:  # a batch's result is its first record's position
                res = acked[at]
                out.append(res if isinstance(res, BaseException)
                           else Position(res.partition, res.offset + i))  # fmt: skip
            return out

        timeout_s = self.append_timeout_s + 0.01 * len(messages)
        try:
            results = await self._bounded("append", send_all(), timeout_s)
        except LogUnavailableError as exc:
            for fut in futures:  # nobody will read these now: silence "never retrieved"
                fut.add_done_callback(consume_exception)
            self._chain.restart()  # which of them landed is unknown: chain nothing to them
            await self._drop_producer(producer)
            raise LogUnavailableError(exc.message + UNCERTAIN) from exc
        except BaseException:
            for fut in futures:
                fut.add_done_callback(consume_exception)
            self._chain.restart()
            raise
        positions: list[Position] = []
        for res in results:
            if isinstance(res, BaseException):
                self._chain.restart()
                await self._drop_producer(producer)
                raise self._error(f"append {len(messages)} message(s)", res) from res
            positions.append(res)
        return positions

    # ------------------------------------------------------------------ reads

    async def end_offsets(self) -> Offsets:
        self._require_started()
        assert self._meta is not None
        ends = await self._bounded(
            "read end offsets",
            self._meta.end_offsets(self._tps()),
            min(self.request_timeout_s, self.append_timeout_s),
        )
        return {tp.partition: int(off) for tp, off in ends.items()}

    async def reader(
        self, start: Offsets | None = None, *, group_id: str | None = None
    ) -> KafkaLogReader:
        self._require_started()
        start = dict(start or {})
        unknown = set(start) - set(self._partitions)
        if unknown:
            raise ValidationError(
                f"no such partition(s) in topic {self.topic!r}: {sorted(unknown)}"
            )
        consumer = self._consumer(group_id)
        try:
            await self._bounded("start a reader", consumer.start(), self.connect_timeout_s)
            tps = self._tps()
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(0, int(start.get(tp.partition, 0))))
        except BaseException:
            await quietly(consumer.stop())
            raise
        reader = KafkaLogReader(self, consumer, group_id)
        self._readers.add(reader)
        return reader

    def subject_keys(self) -> KeyStore:
        """Subject keys on the compacted topic `<topic>.subject-keys` (memstream.keystore.kafka)."""
        if self.master_keys is None:
            raise KeyStoreError(
                f"{self!r}: no master key to wrap subject keys with (see "
                "memstream.keystore.master: MEMSTREAM_MASTER_KEY or MEMSTREAM_MASTER_KEY_FILE)"
            )
        return KafkaKeyStore(
            self.bootstrap_servers,
            f"{self.topic}.subject-keys",
            replication_factor=self.replication_factor,
            client_id=self.client_id,
            connect_timeout_s=min(self.connect_timeout_s, self.append_timeout_s),
            request_timeout_s=min(self.request_timeout_s, self.append_timeout_s),
            master_keys=self.master_keys,
        )

    async def committed(self, group_id: str) -> Offsets:
        self._require_started()
        consumer = self._consumer(group_id)
        try:
            await self._bounded("read committed offsets", consumer.start(), self.connect_timeout_s)
            out: Offsets = {}
            for tp in self._tps():
                off = await self._bounded(
                    f"read committed offsets of group {group_id!r}",
                    consumer.committed(tp),
                    self.request_timeout_s,
                )
                if off is not None and off >= 0:
                    out[tp.partition] = int(off)
            return out
        finally:
            await quietly(consumer.stop())


class KafkaLogReader(LogReader):
    """Reads every partition of the topic from given offsets; commits for its group."""

    def __init__(self, log_: KafkaEventLog, consumer: AIOKafkaConsumer, group_id: str | None):
        self._log = log_
        self._consumer: AIOKafkaConsumer | None = consumer
        self.group_id = group_id

    async def next_batch(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[LogRecord]:
        if self._consumer is None:
            raise LogUnavailableError("reader is closed")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        batches = await self._log._bounded(
            "read",
            self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records),
            timeout_s + self._log.request_timeout_s,
        )
        out: list[LogRecord] = []
        for tp, records in batches.items():
            for r in records:
                out.append(
                    LogRecord(
                        position=Position(tp.partition, r.offset),
                        key=r.key if r.key is not None else b"",
                        value=r.value if r.value is not None else b"",
                        timestamp_ms=int(r.timestamp),
                        headers=tuple((h, bytes(v)) for h, v in (r.headers or ())),
                    )
                )
        return out

    async def commit(self, offsets: Offsets) -> None:
        if self._consumer is None:
            raise LogUnavailableError("reader is closed")
        if self.group_id is None:
            raise ValueError("this reader has no group_id: nothing to commit progress for")
        if not offsets:
            return
        topic = self._log.topic
        await self._log._bounded(
            f"commit offsets for group {self.group_id!r}",
            self._consumer.commit({TopicPartition(topic, p): int(o) for p, o in offsets.items()}),
            self._log.request_timeout_s,
        )

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await quietly(consumer.stop())
