"""The embedded log's crash and concurrency guarantees, with real files and real processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memstream.errors import LogCorruptError
from memstream.log.file import FileEventLog
from memstream.log.frames import ZERO_HASH, encode


def _frame(ts: int, key: bytes, value: bytes) -> bytes:
    return encode(ZERO_HASH, ts, key, value)[0]


async def read_all(log: FileEventLog, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    reader = await log.reader({0: start})
    out = []
    while batch := await reader.next_batch(500, timeout_s=0.05):
        out.extend((r.position.offset, r.key, r.value) for r in batch)
    await reader.close()
    return out


def test_torn_tail_is_never_read_and_is_truncated_by_the_next_writer(tmp_path: Path) -> None:
    async def go() -> None:
        log = FileEventLog(tmp_path)
        await log.append([(b"k", b"one"), (b"k", b"two")])
        segment = next(tmp_path.glob("*.seg"))
        whole = _frame(123, b"k", b"three")
        for cut in (1, 7, len(whole) - 1):  # every kind of torn write: header, crc, payload
            with open(segment, "ab") as f:
                f.write(whole[:cut])
            fresh = FileEventLog(tmp_path)
            assert [v for _, _, v in await read_all(fresh)] == [b"one", b"two"]
            assert await fresh.end_offsets() == {0: 2}
            assert (await fresh.append([(b"k", b"after")]))[0].offset == 2
            assert [v for _, _, v in await read_all(fresh)] == [b"one", b"two", b"after"]
            # reset for the next cut
            await fresh.close()
            segment.write_bytes(segment.read_bytes()[: -len(_frame(0, b"k", b"after"))])

    asyncio.run(go())


def test_a_corrupted_final_record_is_an_error_not_the_end_of_the_log(tmp_path: Path) -> None:
    """A complete last frame whose checksum fails cannot be a torn write: it is corruption."""

    async def go() -> None:
        log = FileEventLog(tmp_path)
        await log.append([(b"k", b"a" * 10), (b"k", b"b" * 10)])
        segment = next(tmp_path.glob("*.seg"))
        data = bytearray(segment.read_bytes())
        data[-3] ^= 0xFF  # flip a bit inside the last record's payload
        segment.write_bytes(bytes(data))
        with pytest.raises(LogCorruptError, match="log offset 0:1"):
            await read_all(FileEventLog(tmp_path))
        with pytest.raises(LogCorruptError, match="memstream log repair"):
            await FileEventLog(tmp_path).append([(b"k", b"c")])
        assert segment.read_bytes() == bytes(data)  # nothing was cut

    asyncio.run(go())


def _appender(directory: str, worker: int, batches: int) -> None:
    async def go() -> None:
        log = FileEventLog(directory)
        for i in range(batches):
            await log.append(
                [(f"w{worker}".encode(), f"{worker}:{i}:{j}".encode()) for j in range(3)]
            )

    asyncio.run(go())


def test_many_processes_appending_at_once_lose_nothing_and_keep_per_writer_order(
    tmp_path: Path,
) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = asyncio.run(read_all(FileEventLog(tmp_path)))
    assert [o for o, _, _ in records] == list(range(4 * 40 * 3))
    for w in range(4):
        mine = [v.decode() for _, k, v in records if k == f"w{w}".encode()]
        assert mine == [f"{w}:{i}:{j}" for i in range(40) for j in range(3)]


def test_segments_roll_and_reads_cross_them(tmp_path: Path) -> None:
    async def go() -> None:
        log = FileEventLog(tmp_path, segment_bytes=300)
        for i in range(30):
            await log.append([(b"k", f"v{i}".encode() * 5)])
        assert len(log.segments()) > 3
        records = await read_all(FileEventLog(tmp_path), start=17)
        assert [o for o, _, _ in records] == list(range(17, 30))
        assert records[0][2] == b"v17" * 5

    asyncio.run(go())


WRITER = """
import asyncio, sys
from memstream.log.file import FileEventLog
async def go():
    log = FileEventLog(sys.argv[1])
    i = 0
    while True:
        await log.append([(b"k", b"x" * 2000 + str(i).encode())])
        print(i, flush=True)
        i += 1
asyncio.run(go())
"""


def test_sigkill_during_appends_leaves_every_acknowledged_record_readable(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = -1
    deadline = time.monotonic() + 60
    while acked < 200 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records = asyncio.run(read_all(FileEventLog(tmp_path)))
    assert len(records) >= acked + 1  # every acknowledged append is there
    assert all(v.startswith(b"x" * 2000) for _, _, v in records)
    assert [int(v[2000:]) for _, _, v in records] == list(range(len(records)))


def test_consumer_progress_is_durable(tmp_path: Path) -> None:
    async def go() -> None:
        log = FileEventLog(tmp_path)
        await log.append([(b"k", b"v")] * 5)
        reader = await log.reader({0: 0}, group_id="proj/1")
        await reader.commit({0: 5})
        assert await FileEventLog(tmp_path).committed("proj/1") == {0: 5}
        await reader.commit({})  # partitions not named keep their progress
        assert await FileEventLog(tmp_path).committed("proj/1") == {0: 5}
        with pytest.raises(ValueError, match="no group_id"):
            await (await log.reader({0: 0})).commit({0: 1})
        assert await FileEventLog(tmp_path).committed("other") == {}

    asyncio.run(go())


def test_a_repair_under_a_live_reader_and_writer_keeps_their_offsets(tmp_path: Path) -> None:
    """Another process repairs damage behind a reader and a writer that had cached where the
    segment ended: the rewritten file moved byte positions, never offsets."""

    async def go() -> None:
        live = FileEventLog(tmp_path)
        await live.append([(b"k", f"v{i}".encode() * 20) for i in range(10)])
        reader = await live.reader({0: 0})
        assert len(await reader.next_batch(100, timeout_s=0.05)) == 10
        segment = next(tmp_path.glob("*.seg"))
        data = bytearray(segment.read_bytes())
        data[len(data) // 3] ^= 0x04  # damage a record the reader has already read
        segment.write_bytes(bytes(data))
        report = FileEventLog(tmp_path).repair()
        assert len(report["quarantined"]) == 1 and report["quarantined"][0]["one_record"]
        assert (await live.append([(b"k", b"after repair")]))[0].offset == 10
        [record] = await reader.next_batch(100, timeout_s=0.05)
        assert (record.position.offset, record.value) == (10, b"after repair")
        values = [v for _, _, v in await read_all(FileEventLog(tmp_path))]
        # 9 intact records, the quarantine marker at the damaged one's offset, the new one
        assert len(values) == 11 and values[-1] == b"after repair"
        assert b"quarantine/" in values[3] and values[4] == b"v4" * 20

    asyncio.run(go())


def test_a_new_process_takes_the_tail_hint_and_never_a_torn_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last append leaves the tail (size, count, chain head) in a hint overwritten in
    place; the next process starts from it instead of parsing the segment. A hint whose
    fields do not match its CRC (half overwritten when read, or torn by a crash) is not
    trusted: taken, its wrong chain head would have broken the hash chain."""
    import json

    from memstream.log.chain import ChainVerifier
    from memstream.log.checkpoint import walk
    from memstream.log.file import HINT_BYTES, TAIL_HINT

    async def go() -> None:
        first = FileEventLog(tmp_path)
        await first.append([(b"k", b"one"), (b"k", b"two")])
        await first.close()
        hint = tmp_path / TAIL_HINT
        assert len(hint.read_bytes()) == HINT_BYTES
        hint.write_bytes(hint.read_bytes() + b" " * 100 + b"{}")  # longer than a hint is
        await FileEventLog(tmp_path).append([(b"k", b"two and a half")])
        assert len(hint.read_bytes()) == HINT_BYTES  # cut back: the next reader can parse it
        parsed: list[Path] = []
        real = FileEventLog._read_from

        def counting(self: FileEventLog, path: Path, start: int) -> bytes:
            parsed.append(path)
            return real(self, path, start)

        monkeypatch.setattr(FileEventLog, "_read_from", counting)
        second = FileEventLog(tmp_path)
        assert (await second.append([(b"k", b"three")]))[0].offset == 3
        await second.close()
        assert parsed == []  # the tail came from the hint
        torn = json.loads(hint.read_text())
        torn["head"] = "00" * 32  # the old CRC over new fields: a mix of two writes
        hint.write_bytes(json.dumps(torn).encode().ljust(HINT_BYTES))
        third = FileEventLog(tmp_path)
        assert (await third.append([(b"k", b"four")]))[0].offset == 4
        assert parsed  # not trusted: the segment was parsed instead
        verifier = ChainVerifier()
        await walk(third, verifier.feed)
        assert verifier.findings == []
        assert [v for _, _, v in await read_all(third)] == [
            b"one", b"two", b"two and a half", b"three", b"four",
        ]  # fmt: skip
        await third.close()

    asyncio.run(go())
