"""Issue 13's file-log rows, on real files and real `memstream` processes: damage is never
read as the end of the log, never destroys an acknowledged record, and `memstream log repair`
quarantines exactly the bad bytes while keeping every valid record after them."""

from __future__ import annotations

import asyncio
import json
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import memstream.log.file as file_log
from memstream.events import MemoryAdded, message_of, new_id, text_hash
from memstream.log.file import FileEventLog
from memstream.log.frames import Frame, parse_one
from memstream.scope import Scope
from tests.servers import log_env, start_server, stop_server

N = 1024
BAD = 500
SEGMENT = "00000000000000000000.seg"


def memstream(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on `data_dir`'s file log, unless `args` name a broker: a KAFKA_BOOTSTRAP_SERVERS
    or MEMSTREAM_TOPIC in the test run's environment (set for the Kafka tests) must not turn
    a file-log command into a Kafka one."""
    return subprocess.run(
        [sys.executable, "-m", "memstream.cli", "--data-dir", str(data_dir), "--embedder",
         "hashing", *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=log_env(),
    )  # fmt: skip


def write_log(data_dir: Path, n: int = N) -> list[MemoryAdded]:
    scope = Scope("local", "default", user_id="u")
    events = [
        MemoryAdded(scope=scope, memory_id=new_id(), text=f"fact {i}", hash=text_hash(f"fact {i}"))
        for i in range(n)
    ]

    async def go() -> None:
        async with FileEventLog(data_dir / "log") as log:
            await log.append([message_of(e) for e in events])

    asyncio.run(go())
    return events


def frames_of(segment: Path) -> list[Frame]:
    data = segment.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        frame = parse_one(data, pos)
        if not isinstance(frame, Frame):
            break
        out.append(frame)
        pos = frame.end
    return out


def flip_bit_in(segment: Path, index: int) -> tuple[bytes, Frame]:
    """Flip one bit in the payload of record `index`; returns the segment before."""
    data = segment.read_bytes()
    frame = frames_of(segment)[index]
    damaged = bytearray(data)
    damaged[frame.end - 5] ^= 0x10
    segment.write_bytes(bytes(damaged))
    return data, frame


def said(done: subprocess.CompletedProcess[str]) -> str:
    """stderr with its line breaks undone: rich wraps a message at 80 columns wherever the
    (tmp) path in it happens to end, e.g. between `memstream log` and `repair`."""
    return " ".join(done.stderr.split())


def count(data_dir: Path) -> int:
    done = memstream(data_dir, "--json", "get-all", "--user-id", "u", "--page-size", "10")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["count"])


def test_bit_flip_mid_log_stops_replay_with_the_place_and_cuts_nothing(tmp_path: Path) -> None:
    write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    flip_bit_in(segment, BAD)
    damaged = segment.read_bytes()
    done = memstream(tmp_path, "replay")
    assert done.returncode != 0
    assert SEGMENT in said(done) and f"0:{BAD}" in said(done), done.stderr
    assert "memstream log repair" in said(done), done.stderr
    assert segment.read_bytes() == damaged


def test_bit_flip_then_add_is_refused_and_repair_keeps_every_other_record(tmp_path: Path) -> None:
    events = write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    _, bad_frame = flip_bit_in(segment, BAD)
    damaged = segment.read_bytes()

    done = memstream(tmp_path, "add", "one more", "--user-id", "u")
    assert done.returncode != 0
    assert f"0:{BAD}" in said(done) and "memstream log repair" in said(done), done.stderr
    assert segment.read_bytes() == damaged  # nothing acknowledged was destroyed

    status = json.loads(memstream(tmp_path, "--json", "status").stdout)
    assert status["log_health"]["state"] == "corrupt"
    assert status["log_health"]["corruption"]["offset"] == f"0:{BAD}"

    done = memstream(tmp_path, "--json", "log", "repair")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [region] = report["quarantined"]
    assert region["offset"] == f"0:{BAD}" and region["one_record"]
    assert region["bytes"] == bad_frame.end - bad_frame.start
    side = tmp_path / "log" / region["side_file"]
    assert side.read_bytes() == damaged[bad_frame.start : bad_frame.end]
    assert not report["offsets_may_have_shifted"]

    # every other record is where it was: same offset, same bytes
    after = frames_of(segment)
    assert len(after) == N
    before = frames_of_bytes(damaged)
    for i in range(N):
        if i != BAD:
            assert (after[i].key, after[i].value) == (before[i].key, before[i].value)
    done = memstream(tmp_path, "replay")
    assert done.returncode == 0, done.stderr
    assert count(tmp_path) == N - 1
    # the chain names the hole the repair left, and nothing else
    done = memstream(tmp_path, "--json", "verify")
    assert done.returncode == 1
    findings = json.loads(done.stdout)["findings"]
    assert [(f["position"], f["kind"]) for f in findings] == [(f"0:{BAD}", "quarantined")]
    done = memstream(tmp_path, "--json", "add", "one more", "--user-id", "u")
    assert done.returncode == 0, done.stderr
    assert count(tmp_path) == N
    assert len(events) == N


def frames_of_bytes(data: bytes) -> list[Frame | None]:
    out: list[Frame | None] = []
    pos = 0
    while pos < len(data):
        frame = parse_one(data, pos)
        if isinstance(frame, Frame):
            out.append(frame)
            pos = frame.end
        else:  # skip a damaged frame by its (intact) length
            (length,) = struct.unpack_from("<I", data, pos)
            out.append(None)
            pos += 8 + (length & 0x0FFFFFFF)
    return out


def test_bit_flip_under_a_live_server_answers_503_and_destroys_nothing(tmp_path: Path) -> None:
    write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    flip_bit_in(segment, BAD)
    damaged = segment.read_bytes()
    server = start_server(tmp_path, keys={"k": ("local", "default", None)})
    try:
        headers = {"Authorization": f"Token {server.keys['k']}"}
        body = {"messages": [{"role": "user", "content": "added under damage"}], "user_id": "u",
                "infer": False}  # fmt: skip
        r = httpx.post(f"{server.base_url}/v1/memories/", json=body, headers=headers, timeout=60)
        assert r.status_code == 503, r.text
        assert f"0:{BAD}" in r.json()["detail"] and "memstream log repair" in r.json()["detail"]
        assert "retry-after" not in r.headers  # an operator must repair it first
        assert segment.read_bytes() == damaged
        repaired = server.cli("--json", "log", "repair")
        assert json.loads(repaired.stdout)["quarantined"][0]["offset"] == f"0:{BAD}"
        r = httpx.post(f"{server.base_url}/v1/memories/", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{server.base_url}/v2/memories/", params={"page_size": 1},
                       json={"filters": {"user_id": "u"}}, headers=headers, timeout=60)  # fmt: skip
        assert r.json()["count"] == N, r.text  # 1,023 survivors + the new one
    finally:
        stop_server(server)


def test_tail_cut_by_10_bytes_is_reported_as_torn_and_cut_by_the_next_append(
    tmp_path: Path,
) -> None:
    write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    segment.write_bytes(segment.read_bytes()[:-10])
    status = json.loads(memstream(tmp_path, "--json", "status").stdout)
    health = status["log_health"]
    assert health["state"] == "torn-tail"
    assert health["torn_tail"]["offset"] == f"0:{N - 1}"
    done = memstream(tmp_path, "--json", "add", "after the cut", "--user-id", "u")
    assert done.returncode == 0, done.stderr
    assert "torn tail" in said(done), done.stderr  # the warning
    health = json.loads(memstream(tmp_path, "--json", "status").stdout)["log_health"]
    assert health["state"] == "ok"
    [cut] = health["torn_tails_cut"]
    assert cut["offset"] == f"0:{N - 1}" and cut["bytes"] > 0


def test_random_bytes_appended_are_corruption_and_repair_quarantines_exactly_them(
    tmp_path: Path,
) -> None:
    write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    garbage = random.Random(13).randbytes(5000)
    with open(segment, "ab") as f:
        f.write(garbage)
    done = memstream(tmp_path, "replay")
    assert done.returncode != 0 and f"0:{N}" in said(done), done.stderr
    done = memstream(tmp_path, "add", "x", "--user-id", "u")
    assert done.returncode != 0 and "memstream log repair" in said(done), done.stderr
    report = json.loads(memstream(tmp_path, "--json", "log", "repair").stdout)
    [region] = report["quarantined"]
    assert region["bytes"] == 5000 and region["offset"] == f"0:{N}"
    assert (tmp_path / "log" / region["side_file"]).read_bytes() == garbage
    assert memstream(tmp_path, "replay").returncode == 0
    assert count(tmp_path) == N
    done = memstream(tmp_path, "--json", "add", "after the garbage", "--user-id", "u")
    assert done.returncode == 0, done.stderr
    assert count(tmp_path) == N + 1


def test_frame_length_0x7fffffff_is_corruption_at_that_record(tmp_path: Path) -> None:
    write_log(tmp_path)
    segment = tmp_path / "log" / SEGMENT
    data = bytearray(segment.read_bytes())
    frame = frames_of(segment)[BAD]
    original = bytes(data[frame.start : frame.end])
    struct.pack_into("<I", data, frame.start, 0x7FFFFFFF)
    segment.write_bytes(bytes(data))
    done = memstream(tmp_path, "replay")
    assert done.returncode != 0
    assert f"0:{BAD}" in said(done) and "0x7fffffff" in said(done), done.stderr
    report = json.loads(memstream(tmp_path, "--json", "log", "repair").stdout)
    [region] = report["quarantined"]
    assert region["bytes"] == len(original) and region["one_record"]
    assert memstream(tmp_path, "replay").returncode == 0
    assert count(tmp_path) == N - 1


def test_a_reader_that_meets_the_damage_as_repair_replaces_the_file_reads_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a live server's projector runs with `memstream log repair`: it opened the
    damaged segment, the repair replaced the file and cleared the CORRUPT marker, and only
    then did the projector parse what it had read. That damage is gone: marking the log
    corrupt again would make the repaired log read-only once more (every add 503)."""
    write_log(tmp_path)
    flip_bit_in(tmp_path / "log" / SEGMENT, BAD)
    real = file_log.parse_frames
    repairs: list[dict[str, Any]] = []

    def parse_then_repair(data: bytes, *args: Any, **kwargs: Any) -> Any:
        parsed = real(data, *args, **kwargs)
        stop = parsed[2]
        if stop is not None and not stop.torn and not repairs:  # between the read and the verdict
            repairs.append(log.repair())
        return parsed

    async def read_all() -> list[int]:
        reader = await log.reader({0: 0})
        offsets: list[int] = []
        for _ in range(100):
            batch = await reader.next_batch(1000, 0.1)
            if not batch:
                break
            offsets.extend(r.position.offset for r in batch)
        await reader.close()
        return offsets

    async def go() -> list[int]:
        async with log:
            monkeypatch.setattr(file_log, "parse_frames", parse_then_repair)
            return await read_all()

    log = FileEventLog(tmp_path / "log")
    offsets = asyncio.run(go())
    assert [r["offset"] for r in repairs[0]["quarantined"]] == [f"0:{BAD}"]
    assert not log.corrupt_marker.exists()
    assert offsets == list(range(N)), offsets[BAD - 2 : BAD + 2]  # the marker keeps 0:500
