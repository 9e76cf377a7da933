"""`KafkaKeyStore`: subject keys in a compacted Kafka topic beside the Kafka event log.

Topic `<log topic>.subject-keys` (see `KafkaEventLog.subject_keys`), created if missing with
ONE partition (so "the oldest key" is well defined: the lowest offset) and
`cleanup.policy=compact`. A topic that exists with another partition count or cleanup policy
is refused at `start()`: a retention policy would silently expire keys (and so data).

Records: key `"<subject digest>/<key id>"`, value the key's JSON `{subject, key_id, secret
(base64), created_at}` (the same JSON as the file store's key files) WRAPPED under the master
key (memstream.keystore.master): the topic holds neither key material nor subject ids in
clear. Plain (legacy) records written before wrapping are still read, and
`rotate_master` rewrites them wrapped. The record key is unique per key,
so compaction, which keeps the last value per record key, never drops a live key when two
writers race to create one. Destroying writes a tombstone (value None) for every live key of
the subject.

When do a destroyed key's bytes leave the broker's disks? Compaction removes a record only
from segments that are no longer active, so the record goes (1) when its segment has rolled
(`segment.ms`, 1 hour here: Kafka rolls on the first append after that age) and (2) the log
cleaner has cleaned that segment (`min.cleanable.dirty.ratio` 0.01: almost any new record
makes the log eligible; `max.compaction.lag.ms` 1 day forces it at the latest). The broker then
deletes the old segment files after `file.delete.delay.ms` (60 s default). Replicas are cleaned
the same way on each broker; backups, tiered storage or disk snapshots of the broker are
outside Kafka's reach. The trade-off: a short `segment.ms` means more, smaller segment files
(harmless for a topic of a few hundred bytes per subject); a long one keeps destroyed keys on
disk longer. Tombstones (no secret in them) stay for `delete.retention.ms` (1 day), so a
reader that is behind still sees the destruction; a store that has not refreshed for half of
that reloads the topic from the beginning instead of reading on, so it cannot miss one.

Reading: one consumer (no group) assigned to partition 0 keeps an in-memory map, read up to
the end offset fetched at the start of each `refresh`. `lookup` reads only that map.
`key_for` answers from the map while it is younger than `max_staleness_s` (default 1 s);
otherwise it refreshes first. So a key destroyed by ANOTHER process less than
`max_staleness_s` before the call can still be returned; `max_staleness_s=0` closes that
window at the price of one end-offsets request per call. A destroy in this same store
instance is seen at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from memstream.errors import KeyStoreError, LogUnavailableError
from memstream.kafkautil import (
    admin_client,
    bounded,
    consume_exception,
    ensure_topic,
    kafka_error,
    quietly,
    stop_producer,
)
from memstream.keystore.base import KeyStore, Subject, SubjectKey
from memstream.keystore.file import decode_key, encode_key, new_key
from memstream.keystore.master import MasterKeys

__all__ = ["KafkaKeyStore", "KEY_TOPIC_CONFIGS"]

log = logging.getLogger(__name__)

DELETE_RETENTION_MS = 24 * 3600 * 1000
UNKNOWN_TOPIC_OR_PARTITION = 3  # Kafka's error code


class _TopicNotKnownYet(LogUnavailableError):
    """The broker does not know the topic (yet): retried by `_configs_once_known`."""

    def __init__(self, action: str, cause: str) -> None:
        super().__init__(f"Kafka key store: cannot {action}: {cause}")


KEY_TOPIC_CONFIGS = {
    # Keys live as long as their subject: compaction only, never time or size retention.
    "cleanup.policy": "compact",
    # Roll segments hourly so that destroyed keys become cleanable (the active segment never is).
    "segment.ms": str(3600 * 1000),
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": str(24 * 3600 * 1000),
    "delete.retention.ms": str(DELETE_RETENTION_MS),
}

_Entry = tuple[int, SubjectKey]  # (offset, key)
T = TypeVar("T")


class KafkaKeyStore(KeyStore):
    """Subject keys on a one-partition compacted topic. See the module docstring."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        replication_factor: int = 1,
        client_id: str = "memstream",
        connect_timeout_s: float = 15.0,
        request_timeout_s: float = 30.0,
        max_staleness_s: float = 1.0,
        master_keys: MasterKeys,
    ) -> None:
        if not bootstrap_servers or not bootstrap_servers.strip():
            raise ValueError("bootstrap_servers is empty")
        if replication_factor < 1:
            raise ValueError("replication_factor must be >= 1")
        if max_staleness_s < 0:
            raise ValueError("max_staleness_s must be >= 0")
        self.bootstrap_servers = bootstrap_servers.strip()
        self.topic = topic
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_staleness_s = max_staleness_s
        self.master_keys = master_keys
        # the master key id each live key's record is wrapped with (None: legacy, plain)
        self._wrapped_with: dict[tuple[str, str], str | None] = {}
        self._unopened: dict[bytes, KeyStoreError] = {}  # record key -> why it cannot be read
        self._tp = TopicPartition(topic, 0)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None  # reads partition 0
        # End offsets through a client that never fetches: on the reader's connection the
        # request would queue behind its long-polling fetch (up to fetch_max_wait_ms).
        self._meta: AIOKafkaConsumer | None = None
        self._start_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._mutex = threading.Lock()  # guards _keys: lookup runs in other threads
        self._keys: dict[str, dict[str, _Entry]] = {}  # digest -> key_id -> (offset, key)
        self._loaded = False  # a full read of the topic has completed since start
        self._position = 0  # next offset the consumer reads
        self._refreshed_at = float("-inf")  # monotonic start of the last successful refresh
        self._reload_after_s = DELETE_RETENTION_MS / 1000 / 2
        self._creating: dict[str, tuple[asyncio.Lock, int]] = {}  # digest -> (lock, users)

    def __repr__(self) -> str:
        return f"KafkaKeyStore({self.bootstrap_servers!r}, topic={self.topic!r})"

    def _error(self, action: str, exc: BaseException | str) -> LogUnavailableError:
        return kafka_error("Kafka key store", self.bootstrap_servers, self.topic, action, exc)

    async def _bounded(self, action: str, aw: Awaitable[T], timeout_s: float) -> T:
        return await bounded(aw, timeout_s, lambda exc: self._error(action, exc))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._producer is not None:
                return
            new = NewTopic(
                self.topic,
                num_partitions=1,
                replication_factor=self.replication_factor,
                topic_configs=dict(KEY_TOPIC_CONFIGS),
            )
            await self._bounded(
                "reach Kafka",
                ensure_topic(
                    self.bootstrap_servers,
                    new,
                    client_id=self.client_id,
                    connect_timeout_s=self.connect_timeout_s,
                    request_timeout_s=self.request_timeout_s,
                    error=self._error,
                ),
                self.connect_timeout_s + self.request_timeout_s,
            )
            configs = await self._bounded(
                "describe the topic",
                self._configs_once_known(),
                self.connect_timeout_s + self.request_timeout_s,
            )
            policy = configs.get("cleanup.policy")
            if policy != "compact":
                raise self._error(
                    "use the topic",
                    f"its cleanup.policy is {policy!r}, not 'compact' (keys would expire)",
                )
            retention = int(configs.get("delete.retention.ms") or DELETE_RETENTION_MS)
            self._reload_after_s = retention / 1000 / 2
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(self.request_timeout_s * 1000),
                linger_ms=0,
            )
            consumer, meta = self._new_consumer(), self._new_consumer()
            try:
                await self._bounded("reach Kafka", producer.start(), self.connect_timeout_s)
                parts = await self._bounded(
                    "read topic metadata",
                    producer.partitions_for(self.topic),
                    self.request_timeout_s,
                )
                if set(parts) != {0}:
                    raise self._error(
                        "use the topic", f"it has {len(parts)} partitions; subject keys need 1"
                    )
                await self._bounded("reach Kafka", consumer.start(), self.connect_timeout_s)
                await self._bounded("reach Kafka", meta.start(), self.connect_timeout_s)
                consumer.assign([self._tp])
            except BaseException:
                await stop_producer(producer, 5.0)
                await quietly(consumer.stop())
                await quietly(meta.stop())
                raise
            self._producer, self._consumer, self._meta = producer, consumer, meta
            try:
                await self.refresh()
            except BaseException:
                await self.close()
                raise

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self.request_timeout_s * 1000),
            fetch_max_wait_ms=100,
            isolation_level="read_uncommitted",
        )

    async def _configs_once_known(self) -> dict[str, str]:
        """`topic_configs`, retried while the broker does not know the topic yet.

        Just after a topic is created, a broker may answer UNKNOWN_TOPIC_OR_PARTITION (error
        code 3) until the new metadata reaches it (seen under load with KRaft). The caller
        bounds the whole wait.
        """
        delay = 0.05
        while True:
            try:
                return await self.topic_configs()
            except _TopicNotKnownYet:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def topic_configs(self) -> dict[str, str]:
        """The topic's effective configuration (name -> value), as the broker describes it."""
        admin = admin_client(self.bootstrap_servers, self.client_id, self.request_timeout_s)
        try:
            await asyncio.wait_for(admin.start(), self.connect_timeout_s)
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)]
            )
        finally:
            await quietly(admin.close())
        out: dict[str, str] = {}
        for response in responses:
            for error_code, error_message, _type, _name, entries in response.resources:
                if error_code == UNKNOWN_TOPIC_OR_PARTITION:
                    raise _TopicNotKnownYet(
                        f"describe the topic (error code {error_code})", error_message or ""
                    )
                if error_code:
                    raise self._error(
                        f"describe the topic (error code {error_code})", error_message or ""
                    )
                for entry in entries:
                    out[str(entry[0])] = str(entry[1]) if entry[1] is not None else ""
        return out

    async def close(self) -> None:
        producer, consumer, meta = self._producer, self._consumer, self._meta
        self._producer = self._consumer = self._meta = None
        if producer is not None:
            await stop_producer(producer, min(10.0, self.request_timeout_s))
        for client in (consumer, meta):
            if client is not None:
                await quietly(client.stop())
        with self._mutex:
            self._keys = {}
        self._loaded = False
        self._position = 0
        self._refreshed_at = float("-inf")

    def _started(self) -> tuple[AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaConsumer]:
        if self._producer is None or self._consumer is None or self._meta is None:
            raise LogUnavailableError(f"{self!r} is not started (call start() first)")
        return self._producer, self._consumer, self._meta

    # ------------------------------------------------------------------ reading

    async def refresh(self) -> None:
        self._started()
        called = time.monotonic()
        async with self._refresh_lock:
            if self._loaded and self._refreshed_at > called:
                # a refresh that began after this call did finish while we queued: it saw
                # everything this one would (many writers going stale at once share it)
                return
            began = time.monotonic()
            await self._bounded(
                "read subject keys", self._catch_up(began), self.request_timeout_s * 2
            )
            self._refreshed_at = began

    async def _catch_up(self, now: float) -> None:
        _, consumer, meta = self._started()
        # A reader idle for long could miss tombstones the cleaner has removed meanwhile:
        # then read everything again instead of reading on.
        full = not self._loaded or now - self._refreshed_at > self._reload_after_s
        end = int((await meta.end_offsets([self._tp]))[self._tp])
        if full:
            self._unopened = {}
            consumer.seek(self._tp, 0)  # below the log start offset: "earliest" applies
            self._loaded = False  # until this read completes, the map is not trusted
            keys: dict[str, dict[str, _Entry]] = {}
        else:
            keys = self._keys
        position = await consumer.position(self._tp)
        while position < end:
            batches = await consumer.getmany(self._tp, timeout_ms=200, max_records=10_000)
            with self._mutex:
                for record in batches.get(self._tp, []):
                    self._apply(keys, record.offset, record.key, record.value)
            position = await consumer.position(self._tp)
        if self._unopened:  # loud: never treat a key we cannot read as destroyed
            raise next(iter(self._unopened.values()))
        with self._mutex:
            self._keys = keys
        self._position = position
        self._loaded = True

    def _apply(
        self,
        keys: dict[str, dict[str, _Entry]],
        offset: int,
        record_key: bytes | None,
        value: bytes | None,
    ) -> None:
        digest, _, key_id = (record_key or b"").decode(errors="replace").partition("/")
        if value is None:
            held = keys.get(digest)
            if held is not None:
                held.pop(key_id, None)
                if not held:
                    del keys[digest]
            self._wrapped_with.pop((digest, key_id), None)
            self._unopened.pop(record_key or b"", None)
            return
        kek = MasterKeys.wrapped_with(value)
        if kek is not None:
            try:
                value = self.master_keys.unwrap(
                    value, record_key or b"", f"{self.topic} offset {offset}"
                )
            except KeyStoreError as exc:
                # fatal unless a later record of the same key (a rewrap after a rotation,
                # or a tombstone) supersedes it, as compaction eventually would
                self._unopened[record_key or b""] = exc
                return
            self._unopened.pop(record_key or b"", None)
        try:
            key = decode_key(value)
        except ValueError as exc:
            log.warning("%r: skipping record at offset %d: %s", self, offset, exc)
            return
        if key.subject.digest() != digest or key.key_id != key_id:
            log.warning("%r: skipping record at offset %d: key does not match", self, offset)
            return
        keys.setdefault(digest, {}).setdefault(key_id, (offset, key))
        self._wrapped_with[(digest, key_id)] = kek

    def lookup(self, subject: Subject, key_id: str) -> SubjectKey | None:
        if not self._loaded:
            raise self._error("look up a key", "the keys are not loaded (start() first)")
        with self._mutex:
            entry = self._keys.get(subject.digest(), {}).get(key_id)
        if entry is None or entry[1].subject != subject:
            return None
        return entry[1]

    def _oldest(self, subject: Subject) -> SubjectKey | None:
        with self._mutex:
            held = self._keys.get(subject.digest())
            if not held:
                return None
            return min(held.values(), key=lambda entry: entry[0])[1]

    def _live_ids(self, subject: Subject) -> list[str]:
        with self._mutex:
            held = self._keys.get(subject.digest(), {})
            return [key_id for key_id, _ in sorted(held.items(), key=lambda kv: kv[1][0])]

    # ------------------------------------------------------------------ writing

    async def _send(self, records: Sequence[tuple[bytes, bytes | None]], action: str) -> int:
        """Produce to partition 0 (acks=all); return the offset of the last record."""
        producer, _, _ = self._started()
        futures: list[asyncio.Future[Any]] = []

        async def send_all() -> list[Any]:
            for key, value in records:
                futures.append(await producer.send(self.topic, value=value, key=key, partition=0))
            return await asyncio.gather(*futures, return_exceptions=True)

        try:
            results = await self._bounded(action, send_all(), self.request_timeout_s * 2)
        except BaseException:
            for fut in futures:
                fut.add_done_callback(consume_exception)
            raise
        last = -1
        for res in results:
            if isinstance(res, BaseException):
                raise self._error(action, res) from res
            last = max(last, int(res.offset))
        return last

    async def key_for(self, subject: Subject) -> SubjectKey:
        self._started()
        began = time.monotonic()
        if began - self._refreshed_at <= self.max_staleness_s:
            cached = self._oldest(subject)
            if cached is not None:
                return cached
        # One creator per subject in this process; other processes may race (and converge).
        digest = subject.digest()
        lock, users = self._creating.get(digest, (asyncio.Lock(), 0))
        self._creating[digest] = (lock, users + 1)
        try:
            async with lock:
                if self._refreshed_at >= began:  # refreshed since we began: its answer holds
                    oldest = self._oldest(subject)
                    if oldest is not None:
                        return oldest
                return await self._get_or_create(subject)
        finally:
            lock, users = self._creating[digest]
            if users == 1:
                del self._creating[digest]
            else:
                self._creating[digest] = (lock, users - 1)

    async def _get_or_create(self, subject: Subject) -> SubjectKey:
        for _ in range(3):
            await self.refresh()
            oldest = self._oldest(subject)
            if oldest is not None:
                return oldest  # racing creators all converge on the lowest offset
            key = new_key(subject)
            record_key = f"{subject.digest()}/{key.key_id}".encode()
            offset = await self._send(
                [(record_key, self.master_keys.wrap(encode_key(key), record_key))],
                f"create a key for {subject}",
            )
            deadline = time.monotonic() + self.request_timeout_s
            while self._position <= offset and time.monotonic() < deadline:
                await self.refresh()  # acks=all: the first refresh normally sees it
            oldest = self._oldest(subject)
            if oldest is not None:
                return oldest
            # destroyed by a concurrent erasure before we saw it: make another
        raise self._error(f"create a key for {subject}", "its new keys keep being destroyed")

    def unwrapped_count(self) -> int:
        """Live keys not wrapped under the current master key (legacy plain, or an old one)."""
        current = self.master_keys.current_id
        with self._mutex:
            return sum(
                1
                for digest, held in self._keys.items()
                for key_id in held
                if self._wrapped_with.get((digest, key_id)) != current
            )

    async def rotate_master(self) -> int:
        """Rewrite every live key not wrapped under the current master key (plain legacy
        records, or ones under a previous master key) wrapped under it, with the same record
        key, so compaction drops the old record. Returns how many were rewritten. Once it
        returns, the previous master key is needed only by readers that have not refreshed."""
        await self.refresh()
        current = self.master_keys.current_id
        with self._mutex:
            todo = [
                entry[1]
                for digest, held in self._keys.items()
                for key_id, entry in sorted(held.items(), key=lambda kv: kv[1][0])
                if self._wrapped_with.get((digest, key_id)) != current
            ]
        records = []
        for key in todo:
            record_key = f"{key.subject.digest()}/{key.key_id}".encode()
            records.append((record_key, self.master_keys.wrap(encode_key(key), record_key)))
        for start in range(0, len(records), 500):
            await self._send(records[start : start + 500], "rewrap subject keys")
        await self.refresh()
        return len(records)

    async def destroy(self, subject: Subject) -> list[str]:
        self._started()
        digest = subject.digest()
        destroyed: list[str] = []
        for _ in range(2):  # the second sweep catches a key created during the first
            await self.refresh()
            live = [key_id for key_id in self._live_ids(subject) if key_id not in destroyed]
            if not live:
                break
            await self._send(
                [(f"{digest}/{key_id}".encode(), None) for key_id in live],
                f"destroy the keys of {subject}",
            )
            destroyed += live
        await self.refresh()
        return destroyed
