"""The hash chain and signed checkpoints, against real files, real Kafka and the real CLI:
`memstream verify` names every altered, reordered, inserted or missing event and a truncated
tail, and exits non-zero; an untouched, erased or pre-chain log verifies."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from memstream.events import MemoryAdded, message_of, new_id, text_hash
from memstream.log.frames import HEADER, encode, encode_v1
from memstream.log.kafka import KafkaEventLog
from memstream.scope import Scope
from tests.integration.test_log_corruption import SEGMENT, frames_of, memstream, write_log
from tests.servers import start_server, stop_server

N = 60


def verify(data_dir: Path, *args: str) -> tuple[int, dict]:
    done = memstream(data_dir, "--json", *args, "verify")
    return done.returncode, json.loads(done.stdout)


def kinds(report: dict) -> dict[str, str]:
    return {f["position"]: f["kind"] for f in report["findings"]}


def frame_bytes(segment: Path) -> list[bytes]:
    data = segment.read_bytes()
    return [data[f.start : f.end] for f in frames_of(segment)]


def test_an_untouched_log_verifies_and_every_edit_is_named(tmp_path: Path) -> None:
    write_log(tmp_path, N)
    segment = tmp_path / "log" / SEGMENT
    code, report = verify(tmp_path)
    assert code == 0 and report["ok"] and report["chained"] == N and not report["findings"]
    pristine = frame_bytes(segment)

    # an event edited and its CRC recomputed: a CRC alone could not tell
    edited = bytearray(pristine[20])
    edited[-4] ^= 0x01
    struct.pack_into("<I", edited, 4, zlib.crc32(bytes(edited[HEADER.size :])))
    segment.write_bytes(b"".join([*pristine[:20], bytes(edited), *pristine[21:]]))
    code, report = verify(tmp_path)
    assert code == 1 and kinds(report) == {"0:20": "altered"}

    # two events swapped
    segment.write_bytes(b"".join([*pristine[:30], pristine[31], pristine[30], *pristine[32:]]))
    code, report = verify(tmp_path)
    assert code == 1 and kinds(report).get("0:30") == "reordered"
    assert set(kinds(report)) <= {"0:30", "0:31", "0:32"}

    # one event removed
    segment.write_bytes(b"".join([*pristine[:40], *pristine[41:]]))
    code, report = verify(tmp_path)
    assert code == 1 and kinds(report) == {"0:40": "missing"}

    # a forged event inserted, correctly chained to its predecessor
    segment.write_bytes(b"".join(pristine))
    prev_hash = frames_of(segment)[9].hash
    assert prev_hash is not None
    forged, _ = encode(prev_hash, 1, b"forged-key", b"forged-value")
    segment.write_bytes(b"".join([*pristine[:10], forged, *pristine[10:]]))
    code, report = verify(tmp_path)
    assert code == 1 and kinds(report) == {"0:11": "inserted"}


def test_a_signed_checkpoint_makes_a_cut_tail_detectable(tmp_path: Path) -> None:
    write_log(tmp_path, N)
    segment = tmp_path / "log" / SEGMENT
    code, report = verify(tmp_path)
    assert code == 0
    done = memstream(tmp_path, "--json", "verify", "--checkpoint")
    assert (
        done.returncode == 0 and json.loads(done.stdout)["checkpoint"]["heads"]["0"]["offset"] == N
    )
    whole = frame_bytes(segment)
    segment.write_bytes(b"".join(whole[:-3]))  # three whole events cut off cleanly
    code, report = verify(tmp_path)
    assert code == 1 and kinds(report) == {f"0:{N - 3}": "truncated"}
    # a checkpoint edited by hand fails its signature
    segment.write_bytes(b"".join(whole))
    cps = tmp_path / "checkpoints" / "checkpoints.jsonl"
    cp = json.loads(cps.read_text())
    cp["heads"]["0"]["offset"] = N - 3
    cps.write_text(json.dumps(cp) + "\n")
    code, report = verify(tmp_path)
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["checkpoint"]


def test_events_written_before_the_chain_verify_as_unchained(tmp_path: Path) -> None:
    scope = Scope("local", "default", user_id="u")
    events = [MemoryAdded(scope=scope, memory_id=new_id(), text=f"old {i}",
                          hash=text_hash(f"old {i}")) for i in range(5)]  # fmt: skip
    (tmp_path / "log").mkdir(parents=True)
    (tmp_path / "log" / SEGMENT).write_bytes(b"".join(encode_v1(1, *message_of(e)) for e in events))
    assert memstream(tmp_path, "add", "new one", "--user-id", "u").returncode == 0
    code, report = verify(tmp_path)
    assert code == 0, report
    assert (report["unchained"], report["chained"]) == (5, 1)
    assert any("written before memstream chained its log" in n for n in report["notes"])


def test_erasure_and_export_keep_the_chain_verifiable(tmp_path: Path) -> None:
    write_log(tmp_path, 10)
    assert memstream(tmp_path, "add", "private", "--user-id", "v").returncode == 0
    done = memstream(tmp_path, "erase", "--user-id", "v", "--yes")
    assert done.returncode == 0, done.stderr
    code, report = verify(tmp_path)
    assert code == 0, report
    out = tmp_path / "export.json"
    done = memstream(tmp_path, "export", "--user-id", "u", "-o", str(out))
    assert done.returncode == 0, done.stderr
    attestation = json.loads((tmp_path / "export.json.chain.json").read_text())
    assert attestation["count"] == 10
    assert attestation["checkpoint"]["heads"] == report["heads"]
    assert attestation["checkpoint"]["public_key"] == report["public_key"]


def test_serve_writes_signed_checkpoints_periodically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMSTREAM_CHECKPOINT_INTERVAL_S", "0.5")
    server = start_server(tmp_path, keys={"k": ("local", "default", None)})
    try:
        r = httpx.post(f"{server.base_url}/v1/memories/", timeout=60,
                       headers={"Authorization": f"Token {server.keys['k']}"},
                       json={"messages": [{"role": "user", "content": "x"}], "user_id": "u",
                             "infer": False})  # fmt: skip
        assert r.status_code == 200, r.text
        cps = tmp_path / "checkpoints" / "checkpoints.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = cps.read_text().splitlines() if cps.exists() else []
            if any(json.loads(x)["heads"].get("0", {}).get("offset") == 1 for x in lines):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no checkpoint of the add within 30 s:\n{server.log_tail()}")
    finally:
        stop_server(server)
    code, report = verify(tmp_path)
    assert code == 0 and report["checkpoints_checked"] >= 1


@pytest.mark.kafka
def test_kafka_producer_chains_name_altered_replayed_and_foreign_records(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: str
) -> None:
    scope = Scope("local", "default", user_id="u")
    events = [MemoryAdded(scope=scope, memory_id=new_id(), text=f"k {i}",
                          hash=text_hash(f"k {i}")) for i in range(30)]  # fmt: skip
    args = ("--kafka", kafka_bootstrap, "--topic", kafka_topic)

    async def write() -> None:
        for _ in range(2):  # two producers appending to the same partitions
            log = KafkaEventLog(kafka_bootstrap, topic=kafka_topic)
            await log.start()
            try:
                for i in range(0, 30, 10):
                    await log.append([message_of(e) for e in events[i : i + 10]])
            finally:
                await log.close()

    asyncio.run(write())
    code, report = verify(tmp_path, *args)
    assert code == 0 and report["chained"] == 60, report

    async def tamper() -> None:
        log = KafkaEventLog(kafka_bootstrap, topic=kafka_topic)
        await log.start()
        reader = await log.reader()
        first = (await reader.next_batch(1, timeout_s=5))[0]
        await reader.close()
        await log.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            p = first.position.partition
            # the same chain header on other bytes; a replayed copy; a record with no chain
            await producer.send_and_wait(kafka_topic, first.value + b"x", key=first.key,
                                         partition=p, headers=list(first.headers))  # fmt: skip
            await producer.send_and_wait(kafka_topic, first.value, key=first.key, partition=p,
                                         headers=list(first.headers))  # fmt: skip
            await producer.send_and_wait(kafka_topic, b"foreign", key=b"k", partition=p)
        finally:
            await producer.stop()

    asyncio.run(tamper())
    code, report = verify(tmp_path, *args)
    assert code == 1
    found = sorted(f["kind"] for f in report["findings"])
    assert found == ["altered", "inserted", "reordered", "reordered"], report["findings"]
    assert os.environ.get("MEMSTREAM_CHECKPOINT_KEY") is None
