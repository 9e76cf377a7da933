"""The KeyStore contract: one suite, run against the file store and the Kafka store.

Each test is parametrized over `FileKeyStore` (beside a file log) and `KafkaKeyStore` (beside
a Kafka log, on a real broker from tests/kafka_broker.py: `-k file` / `-k kafka`, or `-m kafka`).
Two store instances on the same storage stand for two processes sharing one log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from memstream.errors import KeyStoreError, LogUnavailableError
from memstream.keystore.base import KEY_BYTES, KeyStore, Subject, SubjectKey
from memstream.keystore.master import MasterKeys

pytestmark = pytest.mark.timeout(300)  # the first Kafka case may include a cold broker start

MASTER = MasterKeys(bytes(range(32)), source="the test's master key")


@dataclass
class StoreUnderTest:
    """`open()` gives a new, unstarted instance on the same storage (another "process");
    `open(strict=True)` one whose `key_for` never answers from a stale cache."""

    kind: str
    open: Callable[..., KeyStore]
    directory: Path | None = None  # the file store's directory
    topic: str | None = None  # the Kafka store's topic
    bootstrap: str | None = None


@pytest.fixture(
    params=[
        pytest.param("file", id="file"),
        pytest.param("kafka", id="kafka", marks=pytest.mark.kafka),
    ]
)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    if request.param == "file":
        from memstream.log.file import FileEventLog

        log = FileEventLog(tmp_path / "log")
        directory = tmp_path / "log" / "subject-keys"
        return StoreUnderTest("file", lambda strict=False: log.subject_keys(), directory=directory)

    from memstream.keystore.kafka import KafkaKeyStore
    from memstream.log.kafka import KafkaEventLog

    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topic: str = request.getfixturevalue("kafka_topic")
    kafka_log = KafkaEventLog(
        bootstrap, topic=topic, client_id="keystore-contract", master_keys=MASTER
    )

    def open_kafka(strict: bool = False) -> KeyStore:
        store = kafka_log.subject_keys()
        assert isinstance(store, KafkaKeyStore)
        if strict:
            store.max_staleness_s = 0.0
        return store

    return StoreUnderTest("kafka", open_kafka, topic=f"{topic}.subject-keys", bootstrap=bootstrap)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=240))


def alice(field: str = "user_id", value: str = "alice", project: str = "p1") -> Subject:
    return Subject("org1", project, field, value)


async def started(*stores: KeyStore) -> None:
    for store in stores:
        await store.start()


async def closed(*stores: KeyStore) -> None:
    for store in stores:
        await store.close()


# ------------------------------------------------------------------------------- tests


def test_key_for_is_stable_and_holds_32_random_bytes(stores: StoreUnderTest) -> None:
    async def scenario() -> None:
        store = stores.open()
        await store.start()
        await store.start()  # idempotent
        try:
            subject = alice()
            first = await store.key_for(subject)
            assert isinstance(first, SubjectKey)
            assert first.subject == subject
            assert isinstance(first.secret, bytes) and len(first.secret) == KEY_BYTES
            assert first.secret != bytes(KEY_BYTES)
            assert first.created_at > 1_600_000_000_000  # ms, not s
            assert base64.b64encode(first.secret).decode() not in repr(first)
            for _ in range(5):
                assert await store.key_for(subject) == first
            await store.refresh()
            assert store.lookup(subject, first.key_id) == first
            assert store.lookup(subject, "no-such-key") is None
            assert store.lookup(alice(value="bob"), first.key_id) is None
        finally:
            await store.close()
        # a new instance (a restart) finds the same key
        again = stores.open()
        await again.start()
        try:
            assert await again.key_for(subject) == first
            assert again.lookup(subject, first.key_id) == first
        finally:
            await again.close()

    run(scenario)


def test_different_subjects_get_different_keys(stores: StoreUnderTest) -> None:
    async def scenario() -> None:
        store = stores.open()
        await store.start()
        try:
            subjects = [
                alice(),
                alice(value="bob"),
                alice(field="agent_id"),  # same value, another kind of entity
                alice(project="p2"),
                Subject("org2", "p1", "user_id", "alice"),
            ]
            keys = [await store.key_for(s) for s in subjects]
            assert len({k.key_id for k in keys}) == len(subjects)
            assert len({k.secret for k in keys}) == len(subjects)
            await store.refresh()
            for s, k in zip(subjects, keys, strict=True):
                assert store.lookup(s, k.key_id) == k
                others = [o for o in subjects if o != s]
                assert all(store.lookup(o, k.key_id) is None for o in others)
        finally:
            await store.close()

    run(scenario)


def test_two_processes_racing_key_for_both_open_both_and_converge(
    stores: StoreUnderTest,
) -> None:
    async def scenario() -> None:
        a, b = stores.open(), stores.open()
        await started(a, b)
        try:
            for round_ in range(5):
                subject = alice(value=f"racer-{round_}")
                got = await asyncio.gather(
                    a.key_for(subject), b.key_for(subject), a.key_for(subject), b.key_for(subject)
                )
                await asyncio.gather(a.refresh(), b.refresh())
                for key in got:
                    assert key.subject == subject
                    for store in (a, b):
                        assert store.lookup(subject, key.key_id) == key, (round_, store)
                later = {(await s.key_for(subject)).key_id for s in (a, b, a, b)}
                assert len(later) == 1, f"round {round_}: no convergence: {later}"
        finally:
            await closed(a, b)

    run(scenario)


def test_destroy_makes_the_key_unreadable_everywhere_and_key_for_makes_a_new_one(
    stores: StoreUnderTest,
) -> None:
    async def scenario() -> None:
        a, b = stores.open(), stores.open(strict=True)
        await started(a, b)
        try:
            subject = alice()
            key = await a.key_for(subject)
            assert await b.key_for(subject) == key
            await b.refresh()
            assert b.lookup(subject, key.key_id) == key

            assert await a.destroy(subject) == [key.key_id]
            assert a.lookup(subject, key.key_id) is None  # at once in the destroying instance
            # another process: key_for never hands out the destroyed key (b is strict: the
            # Kafka store's default allows max_staleness_s, see memstream.keystore.kafka)
            fresh_b = await b.key_for(subject)
            assert fresh_b.key_id != key.key_id and fresh_b.secret != key.secret
            await b.refresh()
            assert b.lookup(subject, key.key_id) is None
            fresh_a = await a.key_for(subject)
            assert fresh_a == fresh_b
            await a.refresh()
            assert a.lookup(subject, fresh_b.key_id) == fresh_b
            assert a.lookup(subject, key.key_id) is None
        finally:
            await closed(a, b)
        # a restarted process does not resurrect it either
        c = stores.open()
        await c.start()
        try:
            assert c.lookup(subject, key.key_id) is None
            assert c.lookup(subject, fresh_a.key_id) == fresh_a
        finally:
            await c.close()

    run(scenario)


def test_destroy_is_idempotent_and_spares_other_subjects(stores: StoreUnderTest) -> None:
    async def scenario() -> None:
        a, b = stores.open(), stores.open()
        await started(a, b)
        try:
            victim, bystander = alice(), alice(value="bob")
            assert await a.destroy(alice(value="never-keyed")) == []
            doomed = await a.key_for(victim)
            kept = await b.key_for(bystander)
            destroyed = await b.destroy(victim)
            assert destroyed == [doomed.key_id]
            assert await b.destroy(victim) == []
            assert await a.destroy(victim) == []
            await asyncio.gather(a.refresh(), b.refresh())
            for store in (a, b):
                assert store.lookup(victim, doomed.key_id) is None
                assert store.lookup(bystander, kept.key_id) == kept
                assert await store.key_for(bystander) == kept
        finally:
            await closed(a, b)

    run(scenario)


def test_destroy_takes_every_key_two_racing_creators_made(stores: StoreUnderTest) -> None:
    async def scenario() -> None:
        a, b = stores.open(), stores.open()
        await started(a, b)
        try:
            subject = alice(value="raced")
            made = await asyncio.gather(a.key_for(subject), b.key_for(subject))
            ids = {k.key_id for k in made}
            destroyed = await a.destroy(subject)
            assert ids <= set(destroyed) and len(set(destroyed)) == len(destroyed)
            await asyncio.gather(a.refresh(), b.refresh())
            for store in (a, b):
                assert all(store.lookup(subject, i) is None for i in destroyed)
        finally:
            await closed(a, b)

    run(scenario)


def test_lookup_before_start_raises_rather_than_answering_none(stores: StoreUnderTest) -> None:
    store = stores.open()
    with pytest.raises(LogUnavailableError):
        store.lookup(alice(), "any")


# ------------------------------------------------------------------ file store specifics


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def test_file_destroy_leaves_no_copy_of_the_secret(tmp_path: Path) -> None:
    from memstream.keystore.file import FileKeyStore

    async def scenario() -> None:
        directory = tmp_path / "subject-keys"
        store = FileKeyStore(directory)
        await store.start()
        try:
            subject = alice()
            key = await store.key_for(subject)
            b64 = base64.b64encode(key.secret)
            blobs = [p.read_bytes() for p in _files(directory)]
            assert any(b64 in blob for blob in blobs), "the grep below would prove nothing"
            await store.key_for(alice(value="bob"))  # a neighbour that stays

            assert await store.destroy(subject) == [key.key_id]
            for path in _files(directory):
                blob = path.read_bytes()
                assert key.secret not in blob, path
                assert b64 not in blob, path
                assert base64.urlsafe_b64encode(key.secret) not in blob, path
            assert not (directory / subject.digest()).exists()
            journal = (directory / "ERASURES").read_text().splitlines()
            assert [json.loads(line)["key_ids"] for line in journal] == [[key.key_id]]
        finally:
            await store.close()

    run(scenario)


def test_file_a_destroy_cut_short_after_zeroing_reads_as_destroyed(tmp_path: Path) -> None:
    from memstream.keystore.file import FileKeyStore

    async def scenario() -> None:
        directory = tmp_path / "subject-keys"
        store = FileKeyStore(directory)
        await store.start()
        try:
            subject = alice()
            key = await store.key_for(subject)
            key_file = directory / subject.digest() / "key"
            key_file.write_bytes(bytes(key_file.stat().st_size))  # zeroed, never unlinked
            other = FileKeyStore(directory)
            await other.start()
            try:
                assert other.lookup(subject, key.key_id) is None
                fresh = await other.key_for(subject)
                assert fresh.key_id != key.key_id
                assert other.lookup(subject, fresh.key_id) == fresh
            finally:
                await other.close()
        finally:
            await store.close()

    run(scenario)


def test_file_lookup_raises_when_the_directory_is_gone(tmp_path: Path) -> None:
    from memstream.keystore.file import FileKeyStore

    async def scenario() -> None:
        directory = tmp_path / "subject-keys"
        store = FileKeyStore(directory)
        await store.start()
        try:
            (directory / "ERASURES").unlink()
            (directory / ".lock").unlink(missing_ok=True)
            directory.rmdir()
            with pytest.raises(LogUnavailableError):
                store.lookup(alice(), "any")
        finally:
            await store.close()

    run(scenario)


_RACER = """
import asyncio, sys
from memstream.keystore.base import Subject
from memstream.keystore.file import FileKeyStore

async def main():
    store = FileKeyStore(sys.argv[1])
    await store.start()
    key = await store.key_for(Subject("org1", "p1", "user_id", "many"))
    print(key.key_id)
    await store.close()

asyncio.run(main())
"""


def test_file_real_processes_racing_converge_on_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "subject-keys"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(directory)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    ids = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids.add(out.strip())
    assert len(ids) == 1, ids
    leftovers = [p.name for p in (directory / alice(value="many").digest()).iterdir()]
    assert leftovers == ["key"], leftovers


# ----------------------------------------------------------------- Kafka store specifics


@pytest.mark.kafka
def test_kafka_topic_is_compacted_with_one_partition_and_destroy_writes_tombstones(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from memstream.keystore.kafka import KafkaKeyStore

    topic = f"{kafka_topic}.subject-keys"

    async def scenario() -> None:
        store = KafkaKeyStore(
            kafka_bootstrap, topic, client_id="keystore-contract", master_keys=MASTER
        )
        await store.start()
        try:
            configs = await store.topic_configs()
            assert configs["cleanup.policy"] == "compact"
            assert int(configs["segment.ms"]) <= 24 * 3600 * 1000
            assert float(configs["min.cleanable.dirty.ratio"]) <= 0.1
            assert int(configs["delete.retention.ms"]) <= 7 * 24 * 3600 * 1000
            subject, bystander = alice(), alice(value="bob")
            key = await store.key_for(subject)
            kept = await store.key_for(bystander)
            assert await store.destroy(subject) == [key.key_id]
        finally:
            await store.close()

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        assert [p["partition"] for p in described["partitions"]] == [0]

        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            records = []
            deadline = time.monotonic() + 20
            while await consumer.position(tp) < end and time.monotonic() < deadline:
                records += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
        finally:
            await consumer.stop()
        doomed = f"{subject.digest()}/{key.key_id}".encode()
        history = [r.value for r in records if r.key == doomed]
        assert len(history) == 2 and history[0] is not None and history[1] is None, history
        # stored wrapped: neither the secret nor the subject nor the key id in clear
        for needle in (key.secret, base64.b64encode(key.secret), b"alice", key.key_id.encode()):
            assert needle not in history[0]
        assert MASTER.wrapped_with(history[0]) == MASTER.current_id
        assert json.loads(MASTER.unwrap(history[0], doomed, "test"))["key_id"] == key.key_id
        live = [r for r in records if r.key == f"{bystander.digest()}/{kept.key_id}".encode()]
        assert len(live) == 1 and live[0].value is not None

    run(scenario)


@pytest.mark.kafka
def test_kafka_refuses_a_topic_that_would_expire_keys(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from memstream.keystore.kafka import KafkaKeyStore

    async def scenario() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(kafka_topic, 1, 1, topic_configs={"cleanup.policy": "delete"})]
            )
        finally:
            await admin.close()
        store = KafkaKeyStore(
            kafka_bootstrap, kafka_topic, connect_timeout_s=10, master_keys=MASTER
        )
        with pytest.raises(LogUnavailableError, match="cleanup.policy"):
            await store.start()
        await store.close()

    run(scenario)


async def _raw_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the topic, read with a plain consumer (what any cluster reader sees)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 20
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            for r in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                out.append((r.key, r.value))
        return out
    finally:
        await consumer.stop()


@pytest.mark.kafka
def test_kafka_wrong_master_key_fails_loudly_at_start(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    from memstream.keystore.kafka import KafkaKeyStore

    async def scenario() -> None:
        store = KafkaKeyStore(kafka_bootstrap, kafka_topic, master_keys=MASTER)
        await store.start()
        try:
            await store.key_for(alice())
        finally:
            await store.close()
        wrong = MasterKeys(b"\x07" * 32, source="MEMSTREAM_MASTER_KEY")
        other = KafkaKeyStore(kafka_bootstrap, kafka_topic, master_keys=wrong)
        with pytest.raises(KeyStoreError, match=f"master key {MASTER.current_id}"):
            await other.start()
        await other.close()

    run(scenario)


@pytest.mark.kafka
def test_kafka_legacy_plain_keys_stay_readable_and_rotation_rewraps_them(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """Migration: keys written in clear by an older version are read as before, and
    `rotate_master` rewrites them (and keys under a previous master key) wrapped."""
    from aiokafka import AIOKafkaProducer

    from memstream.keystore.file import encode_key, new_key
    from memstream.keystore.kafka import KafkaKeyStore

    async def scenario() -> None:
        store = KafkaKeyStore(kafka_bootstrap, kafka_topic, master_keys=MASTER)
        await store.start()
        wrapped_old = await store.key_for(alice(value="carol"))
        await store.close()
        legacy = new_key(alice())
        legacy_record = f"{legacy.subject.digest()}/{legacy.key_id}".encode()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                kafka_topic, encode_key(legacy), key=legacy_record, partition=0
            )
        finally:
            await producer.stop()

        new_master = MasterKeys(b"\x42" * 32, previous=(MASTER.current,))
        store = KafkaKeyStore(kafka_bootstrap, kafka_topic, master_keys=new_master)
        await store.start()
        try:
            got = store.lookup(legacy.subject, legacy.key_id)
            assert got is not None and got.secret == legacy.secret
            carol = store.lookup(wrapped_old.subject, wrapped_old.key_id)
            assert carol is not None and carol.secret == wrapped_old.secret
            assert store.unwrapped_count() == 2
            assert await store.rotate_master() == 2
            assert store.unwrapped_count() == 0
        finally:
            await store.close()
        latest: dict[bytes | None, bytes | None] = dict(
            await _raw_records(kafka_bootstrap, kafka_topic)
        )
        for record_key, key in ((legacy_record, legacy), (None, wrapped_old)):
            record_key = record_key or f"{key.subject.digest()}/{key.key_id}".encode()
            value = latest[record_key]
            assert value is not None and MasterKeys.wrapped_with(value) == new_master.current_id
            assert base64.b64encode(key.secret) not in value and key.secret not in value
        # after rotation the previous master key is no longer needed
        only_new = MasterKeys(new_master.current)
        store = KafkaKeyStore(kafka_bootstrap, kafka_topic, master_keys=only_new)
        await store.start()
        try:
            got = store.lookup(legacy.subject, legacy.key_id)
            assert got is not None and got.secret == legacy.secret
        finally:
            await store.close()

    run(scenario)
