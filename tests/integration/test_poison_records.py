"""Poison records on the log (undecodable bytes, an unknown schema fingerprint, valid Avro
with impossible content): the projector sets each aside with its reason -- to
`<topic>.dead-letter` on real Kafka, to dead-letter.jsonl beside the file log -- counts it,
and projects every good event around them."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from memstream.avro import MAGIC
from memstream.events import MemoryAdded, encode_event, message_of, new_id, text_hash
from memstream.scope import Scope
from memstream.service import Memstream, open_log
from memstream.settings import Settings
from tests.servers import log_env

SCOPE = Scope("local", "default", user_id="poisoned")


def good(i: int) -> MemoryAdded:
    return MemoryAdded(scope=SCOPE, memory_id=new_id(), text=f"good {i}", hash=text_hash(f"g{i}"))


POISON = {
    b"\x00\x01 not avro at all": "undecodable",
    MAGIC + b"\xde\xad\xbe\xef\xde\xad\xbe\xef" + b"\x02\x04body": "undecodable",
    encode_event(MemoryAdded(scope=SCOPE, memory_id=new_id(), text="", hash="")): "impossible",
}


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "memstream.cli", "--data-dir", str(settings.data_dir),
            "--embedder", "hashing"]  # fmt: skip
    if settings.kafka_bootstrap:
        base += ["--kafka", settings.kafka_bootstrap, "--topic", settings.topic]
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, timeout=300, env=log_env()
    )


def test_poison_records_are_dead_lettered_counted_and_skipped(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    messages = []
    for i, value in enumerate(POISON):
        messages += [message_of(good(2 * i)), (SCOPE.key(), value), message_of(good(2 * i + 1))]

    async def write() -> None:
        log = open_log(settings)
        await log.start()
        try:
            await log.append(messages)
        finally:
            await log.close()

    asyncio.run(write())
    done = cli(settings, "--json", "project", "--once")
    assert done.returncode == 0, done.stderr
    poison = json.loads(done.stdout)["poison"]
    assert poison["dead_lettered"] == 3
    assert poison["by_kind"] == {"undecodable": 2, "impossible content": 1}
    listed = cli(settings, "--json", "get-all", "--user-id", "poisoned")
    assert json.loads(listed.stdout)["count"] == 6

    if settings.kafka_bootstrap:
        letters = asyncio.run(read_dead_letters(settings))
    else:
        lines = (settings.data_dir / "log" / "dead-letter.jsonl").read_text().splitlines()
        letters = [(base64.b64decode(d["value"]), d["reason"]) for d in map(json.loads, lines)]
        status = json.loads(cli(settings, "--json", "status").stdout)
        assert status["poison"]["dead_letter_total"] == 3
    assert sorted(v for v, _ in letters) == sorted(POISON)
    for value, reason in letters:
        assert reason.startswith(POISON[value]), reason
    # `memstream log` shows the undecodable ones for what they are instead of failing
    dumped = cli(settings, "--json", "log", "--limit", "0")
    assert dumped.returncode == 0, dumped.stderr
    types = [e["event_type"] for e in json.loads(dumped.stdout)["events"]]
    assert types.count("Undecodable") == 2 and types.count("MemoryAdded") == 7
    # a second run has nothing left to set aside: the checkpoint moved past the poison
    again = cli(settings, "--json", "project", "--once")
    assert json.loads(again.stdout)["poison"]["dead_lettered"] == 0


async def read_dead_letters(settings: Settings) -> list[tuple[bytes, str]]:
    assert settings.kafka_bootstrap
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        tp = TopicPartition(f"{settings.topic}.dead-letter", 0)
        consumer.assign([tp])
        out: list[tuple[bytes, str]] = []
        for _ in range(20):  # bounded: 20 polls of at most 1 s
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                headers = dict(record.headers)
                assert headers["dead-letter-topic"].decode() == settings.topic
                assert int(headers["dead-letter-offset"]) >= 0
                out.append((record.value, headers["dead-letter-reason"].decode()))
            if len(out) >= 3:
                break
        return out
    finally:
        await consumer.stop()


VICTIM = "victim-7f3a"


def test_erasure_removes_the_subjects_dead_letters(tmp_path: Path) -> None:
    """Dead letters are copies of log bytes: the key names the scope's ids in clear, and a
    record that is not sealed can hold text. Erasing a subject rewrites dead-letter.jsonl
    without the records it owns (by key, else by the decoded envelope, else any record that
    names nobody but contains the id), and keeps everyone else's."""
    settings = Settings(data_dir=tmp_path / "data", embedder="hashing")
    victim = Scope("local", "default", user_id=VICTIM)
    with_agent = Scope("local", "default", user_id=VICTIM, agent_id="bot")  # still the user's
    bystander = Scope("local", "default", user_id="bystander")
    namesake = Scope("local", "default", agent_id=VICTIM)  # an agent: another subject
    secret = MemoryAdded(scope=with_agent, memory_id=new_id(), text="the victim's secret",
                         hash="h", metadata="not json")  # fmt: skip
    letters = {
        "victim's undecodable": ((victim.key(), b"\x00\x01 garbage"), False),
        "victim's plaintext, impossible": ((b"", encode_event(secret)), False),
        "a foreign record naming the victim": ((b"k", f"note about {VICTIM}".encode()), False),
        "a foreign record naming nobody": ((b"k", b"\x00 other garbage"), True),
        "bystander's undecodable": ((bystander.key(), b"\x00\x01 garbage"), True),
        "the namesake agent's undecodable": ((namesake.key(), b"\x00\x02 garbage"), True),
    }

    async def go() -> None:
        log = open_log(settings)
        await log.start()
        try:
            await log.append([message_of(good(0))] + [m for m, _ in letters.values()])
        finally:
            await log.close()
        async with Memstream(settings) as ms:
            await ms.add("Lives in Porto", user_id=VICTIM)
            assert ms.log.dead_letter_count() == len(letters)
            await ms.erase(user_id=VICTIM, reason="DSR")
            assert ms.log.dead_letter_count() == sum(kept for _, kept in letters.values())

    asyncio.run(go())
    path = settings.data_dir / "log" / "dead-letter.jsonl"
    left = [
        (base64.b64decode(d["key"]), base64.b64decode(d["value"]))
        for d in map(json.loads, path.read_text().splitlines())
    ]
    assert sorted(left) == sorted(m for m, kept in letters.values() if kept)
    assert not any(b"secret" in value or VICTIM.encode() in value for _, value in left)
    assert not list(path.parent.glob(".dead-letter.jsonl*"))  # the rewrite left no temp file
