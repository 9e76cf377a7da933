"""The embedded event log: append-only segment files in the data directory.

Frame = u32 length | u32 crc32(payload) | payload, payload = i64 timestamp_ms | u32 key length |
key | value. Appends from any process are serialised by an flock on `log.lock` and fsynced per
batch before `append` returns. A crash mid-write leaves a torn tail: readers stop at the first
frame that is short or fails its CRC, and the next writer truncates it, so a torn record is
never read as data. Offsets are record numbers; a segment file is named by its first offset.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from memstream.errors import LogUnavailableError
from memstream.fsutil import fsync_dir
from memstream.keystore.file import FileKeyStore
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets, Position

HEADER = struct.Struct("<II")
PAYLOAD_HEAD = struct.Struct("<qI")
SEGMENT_BYTES = 64 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
POLL_S = 0.02


def _segment_name(base: int) -> str:
    return f"{base:020d}.seg"


def _parse_frames(
    buf: bytes, limit: int | None = None
) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """Parse up to `limit` whole, valid frames; return (records, end of the last one parsed)."""
    out: list[tuple[int, bytes, bytes]] = []
    pos = 0
    n = len(buf)
    while pos + HEADER.size <= n and (limit is None or len(out) < limit):
        length, crc = HEADER.unpack_from(buf, pos)
        end = pos + HEADER.size + length
        if length < PAYLOAD_HEAD.size or end > n:
            break
        payload = bytes(buf[pos + HEADER.size : end])
        if zlib.crc32(payload) != crc:
            break
        ts, klen = PAYLOAD_HEAD.unpack_from(payload, 0)
        if PAYLOAD_HEAD.size + klen > length:
            break
        key = payload[PAYLOAD_HEAD.size : PAYLOAD_HEAD.size + klen]
        value = payload[PAYLOAD_HEAD.size + klen :]
        out.append((ts, key, value))
        pos = end
    return out, pos


def _frame(ts: int, key: bytes, value: bytes) -> bytes:
    payload = PAYLOAD_HEAD.pack(ts, len(key)) + key + value
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class FileEventLog(EventLog):
    """Single-partition log (partition 0) in `directory`; safe for many processes at once."""

    name = "file"

    def __init__(self, directory: Path | str, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        # cached tail: (segment base, valid byte size, record count in that segment)
        self._tail: tuple[int, int, int] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "groups").mkdir(exist_ok=True)
            self._lock_fd = os.open(self.directory / "log.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LogUnavailableError(
                f"cannot open the event log in {self.directory}: {exc}"
            ) from exc

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- segments ------------------------------------------------------------------------
    def segments(self) -> list[int]:
        return sorted(int(p.name[:-4]) for p in self.directory.glob("*.seg"))

    def _scan_tail(self) -> tuple[int, int, int]:
        """Find the last segment's valid size and record count (called under the lock)."""
        bases = self.segments()
        if not bases:
            return (0, 0, 0)
        base = bases[-1]
        path = self.directory / _segment_name(base)
        start_size, start_count = 0, 0
        if self._tail is not None and self._tail[0] == base:
            _, start_size, start_count = self._tail
        with open(path, "rb") as f:
            f.seek(start_size)
            data = f.read()
        records, end = _parse_frames(data)
        return (base, start_size + end, start_count + len(records))

    # -- writing -------------------------------------------------------------------------
    async def append(self, messages: Sequence[tuple[bytes, bytes]]) -> list[Position]:
        if not messages:
            return []
        self.check_messages(messages)
        if self._lock_fd is None:
            await self.start()
        return await asyncio.to_thread(self._append_sync, list(messages))

    def _append_sync(self, messages: list[tuple[bytes, bytes]]) -> list[Position]:
        assert self._lock_fd is not None
        ts = int(time.time() * 1000)
        blob = b"".join(_frame(ts, k, v) for k, v in messages)
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                base, size, count = self._scan_tail()
                path = self.directory / _segment_name(base)
                new_file = not path.exists()
                if size >= self.segment_bytes:
                    base, size, count = base + count, 0, 0
                    path = self.directory / _segment_name(base)
                    new_file = True
                with open(path, "r+b" if not new_file else "w+b") as f:
                    f.truncate(size)  # drop a torn tail left by a crashed writer
                    f.seek(size)
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                if new_file:
                    fsync_dir(self.directory)
                first = base + count
                self._tail = (base, size + len(blob), count + len(messages))
            except OSError as exc:
                self._tail = None
                raise LogUnavailableError(
                    f"could not durably append to the event log in {self.directory}: {exc}"
                ) from exc
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return [Position(0, first + i) for i in range(len(messages))]

    # -- reading -------------------------------------------------------------------------
    async def end_offsets(self) -> Offsets:
        base, _, count = await asyncio.to_thread(self._read_tail_unlocked)
        return {0: base + count}

    def _read_tail_unlocked(self) -> tuple[int, int, int]:
        with self._thread_lock:
            tail = self._scan_tail()
            self._tail = tail
            return tail

    async def reader(
        self, start: Offsets | None = None, *, group_id: str | None = None
    ) -> LogReader:
        if self._lock_fd is None:
            await self.start()
        return FileLogReader(self, (start or {}).get(0, 0), group_id)

    def subject_keys(self) -> FileKeyStore:
        """Subject keys in `<log directory>/subject-keys` (see memstream.keystore.file)."""
        return FileKeyStore(self.directory / "subject-keys")

    async def committed(self, group_id: str) -> Offsets:
        path = self._group_path(group_id)
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        return {int(p): int(o) for p, o in data.items()}

    def _group_path(self, group_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in group_id)
        return self.directory / "groups" / f"{safe}.json"


class FileLogReader(LogReader):
    def __init__(self, log: FileEventLog, offset: int, group_id: str | None) -> None:
        self.log = log
        self.group_id = group_id
        self.next_offset = offset
        self._segment: int | None = None  # base of the segment we are in
        self._pos = 0  # byte position in that segment of record `next_offset`

    def _locate(self) -> bool:
        """Position (segment, byte offset) at self.next_offset; False if not written yet."""
        bases = self.log.segments()
        candidates = [b for b in bases if b <= self.next_offset]
        if not candidates:
            return False
        base = candidates[-1]
        path = self.log.directory / _segment_name(base)
        with open(path, "rb") as f:
            data = f.read()
        pos, index = 0, base
        while index < self.next_offset:
            if pos + HEADER.size > len(data):
                return False
            length, _ = HEADER.unpack_from(data, pos)
            pos += HEADER.size + length
            index += 1
        self._segment, self._pos = base, pos
        return True

    def _read_sync(self, max_records: int) -> list[LogRecord]:
        if self._segment is None and not self._locate():
            return []
        assert self._segment is not None
        out: list[LogRecord] = []
        while len(out) < max_records:
            path = self.log.directory / _segment_name(self._segment)
            with open(path, "rb") as f:
                f.seek(self._pos)
                data = f.read(READ_CHUNK)
            take, end = _parse_frames(data, max_records - len(out))
            if not take and len(data) >= READ_CHUNK:
                with open(path, "rb") as f:  # a single frame larger than the chunk
                    f.seek(self._pos)
                    data = f.read()
                take, end = _parse_frames(data, max_records - len(out))
            for ts, key, value in take:
                out.append(LogRecord(Position(0, self.next_offset), key, value, ts))
                self.next_offset += 1
            self._pos += end
            if take:
                continue
            # nothing more here: move on if a later segment starts exactly at our offset
            if (self.log.directory / _segment_name(self.next_offset)).exists() and (
                self.next_offset != self._segment
            ):
                self._segment, self._pos = self.next_offset, 0
                continue
            break
        return out

    async def next_batch(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[LogRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = await asyncio.to_thread(self._read_sync, max_records)
            if records or time.monotonic() >= deadline:
                return records
            await asyncio.sleep(POLL_S)

    async def commit(self, offsets: Offsets) -> None:
        if self.group_id is None:
            raise ValueError("this reader has no group_id: nothing to commit progress for")
        merged = {**await self.log.committed(self.group_id), **offsets}
        path = self.log._group_path(self.group_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): o for p, o in merged.items()}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def close(self) -> None:
        return None
