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

Message size: one message's key + value may be at most `memstream.log.base.MAX_MESSAGE_BYTES`.
It then fits, with record-batch framing, under Kafka's default `message.max.bytes`
(1,048,588 bytes per record batch), so no broker or topic setting has to change. Larger
messages are refused with `ValidationError` before anything of the batch is sent.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from memstream.errors import LogUnavailableError, ValidationError
from memstream.keystore.base import KeyStore
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets, Position

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

# Network errors that are not KafkaError subclasses.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, asyncio.TimeoutError)

T = TypeVar("T")


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
    ) -> None:
        if not bootstrap_servers or not bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty")
        if partitions < 1 or replication_factor < 1:
            raise ValueError("partitions and replication_factor must be >= 1")
        self.bootstrap_servers = bootstrap_servers.strip()
        self.topic = topic
        self.num_partitions = partitions
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._meta: AIOKafkaConsumer | None = None  # no group: end offsets only
        self._partitions: list[int] = []
        self._readers: weakref.WeakSet[KafkaLogReader] = weakref.WeakSet()
        self._start_lock = asyncio.Lock()

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

    def _require_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise LogUnavailableError(f"{self!r} is not started (call start() first)")
        return self._producer

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._producer is not None:
                return
            await self._bounded(
                "reach Kafka", self._ensure_topic(), self.connect_timeout_s + self.request_timeout_s
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                max_request_size=BROKER_MAX_BATCH_BYTES,
                request_timeout_ms=int(self.request_timeout_s * 1000),
                linger_ms=0,
            )
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
                await _stop_producer(producer, 5.0)
                await _quietly(meta.stop())
                raise
            self._partitions = sorted(parts)
            self._producer, self._meta = producer, meta
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

    async def close(self) -> None:
        for reader in list(self._readers):
            await _quietly(reader.close())
        producer, meta = self._producer, self._meta
        self._producer = self._meta = None
        if producer is not None:
            await _stop_producer(producer, min(10.0, self.request_timeout_s))
        if meta is not None:
            await _quietly(meta.stop())

    # ------------------------------------------------------------------ writes

    async def append(self, messages: Sequence[tuple[bytes, bytes]]) -> list[Position]:
        producer = self._require_started()
        if not messages:
            return []
        self.check_messages(messages)
        futures: list[asyncio.Future[Any]] = []

        async def send_all() -> list[Any]:
            # send() only enqueues, in call order (so same-key order holds); then await all.
            for key, value in messages:
                futures.append(await producer.send(self.topic, value=bytes(value), key=bytes(key)))
            return await asyncio.gather(*futures, return_exceptions=True)

        timeout_s = self.request_timeout_s * 2 + 0.01 * len(messages)
        try:
            results = await self._bounded("append", send_all(), timeout_s)
        except BaseException:
            for fut in futures:  # nobody will read these now: silence "never retrieved"
                fut.add_done_callback(_consume_exception)
            raise
        positions: list[Position] = []
        for res in results:
            if isinstance(res, BaseException):
                raise self._error(f"append {len(messages)} message(s)", res) from res
            positions.append(Position(res.partition, res.offset))
        return positions

    # ------------------------------------------------------------------ reads

    async def end_offsets(self) -> Offsets:
        self._require_started()
        assert self._meta is not None
        ends = await self._bounded(
            "read end offsets", self._meta.end_offsets(self._tps()), self.request_timeout_s
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
            await _quietly(consumer.stop())
            raise
        reader = KafkaLogReader(self, consumer, group_id)
        self._readers.add(reader)
        return reader

    def subject_keys(self) -> KeyStore:
        """Subject keys on the compacted topic `<topic>.subject-keys` (memstream.keystore.kafka)."""
        from memstream.keystore.kafka import KafkaKeyStore  # it imports this module

        return KafkaKeyStore(
            self.bootstrap_servers,
            f"{self.topic}.subject-keys",
            replication_factor=self.replication_factor,
            client_id=self.client_id,
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
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
            await _quietly(consumer.stop())


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
            await _quietly(consumer.stop())


def kafka_error(
    what: str, bootstrap_servers: str, topic: str, action: str, exc: BaseException | str
) -> LogUnavailableError:
    """`what` cannot `action`: the error names the bootstrap servers, the topic and the cause."""
    if isinstance(exc, asyncio.TimeoutError):
        cause = "timed out"
    elif isinstance(exc, BaseException):
        cause = str(exc) or type(exc).__name__
        if type(exc).__name__ not in cause:
            cause = f"{type(exc).__name__}: {cause}"
    else:
        cause = exc
    return LogUnavailableError(
        f"{what}: cannot {action} (bootstrap {bootstrap_servers}, topic {topic!r}): {cause}"
    )


async def bounded(
    aw: Awaitable[T], timeout_s: float, error: Callable[[BaseException], LogUnavailableError]
) -> T:
    """Await `aw` within `timeout_s`; any Kafka/network failure -> `error(exc)`."""
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except LogUnavailableError:
        raise
    except _NETWORK_ERRORS as exc:
        raise error(exc) from exc


def admin_client(
    bootstrap_servers: str, client_id: str, request_timeout_s: float
) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        request_timeout_ms=int(request_timeout_s * 1000),
    )


async def ensure_topic(
    bootstrap_servers: str,
    new: NewTopic,
    *,
    client_id: str,
    connect_timeout_s: float,
    request_timeout_s: float,
    error: Callable[[str, BaseException | str], LogUnavailableError],
) -> bool:
    """Create topic `new` unless it exists (a racing creator is fine); True if created here.

    Not bounded by a timeout itself: wrap it in `bounded`. `error(action, cause)` builds the
    LogUnavailableError for a broker that refuses to create it.
    """
    admin = admin_client(bootstrap_servers, client_id, request_timeout_s)
    try:
        await asyncio.wait_for(admin.start(), connect_timeout_s)
        if new.name in await admin.list_topics():
            return False
        try:
            resp = await admin.create_topics([new])
        except TopicAlreadyExistsError:
            return False
        for topic_error in resp.topic_errors:
            code = topic_error[1]
            if code == 0:
                continue
            if code == TopicAlreadyExistsError.errno:  # a racing creator won
                return False
            message = topic_error[2] if len(topic_error) > 2 else ""
            raise error(f"create topic (error code {code})", message or f"code {code}")
        return True
    finally:
        await _quietly(admin.close())


async def _quietly(aw: Awaitable[object], timeout_s: float = 10.0) -> None:
    try:
        await asyncio.wait_for(aw, timeout_s)
    except Exception as exc:  # closing must not mask the error that made us close
        log.debug("ignored while closing: %r", exc)


async def _stop_producer(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop a producer without hanging when the broker is gone.

    aiokafka's `stop()` first waits for every pending batch to be delivered, and with no
    broker its sender retries forever. Those batches belong to appends that have already
    failed (raised LogUnavailableError), so after `timeout_s` the sender task is cancelled,
    which lets `stop()` go on to close the connections.
    """
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    if not done:
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender is not None and not sender.done():
            log.warning(
                "Kafka producer could not flush within %.0fs; dropping its queue", timeout_s
            )
            sender.cancel()
    await _quietly(stopping, timeout_s)


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
