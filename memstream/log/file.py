"""The embedded event log: append-only segment files in the data directory.

Frames are described in memstream.log.frames: each carries a CRC32 and (since the hash
chain) the sha256 chain link to the log's previous event. Appends from any process are
serialised by an flock on `log.lock` and fsynced per batch before `append` returns; that
return is what "acknowledged" means. Within a process, concurrent appends are written
together (memstream.log.group): one lock, one write and one fsync per group, each caller
answered with its own positions only after that fsync. Offsets are record numbers; a segment file is named by
its first offset.

What damage does (docs/guarantees.md, "Durability and corruption"):

- A torn tail (a crash in the middle of an unacknowledged append; see frames.classify for the
  exact rule) at the end of the last segment is invisible to readers, and the next writer cuts
  it off, logging a warning and recording it in `torn-tails.jsonl` (`memstream status`).
- Anything else that is not a valid frame is corruption. A reader that meets it raises
  `LogCorruptError` naming the segment, byte and log offset (never "end of the log"), and
  writes the `CORRUPT` marker; while the marker exists, or when a writer's own scan finds the
  damage, every append is refused with `LogCorruptError` (HTTP 503, CLI exit 1).
- `repair()` (`memstream log repair`) moves exactly the bad bytes into `quarantine/` and puts
  one quarantine marker frame in their place, so every valid record after them keeps its
  offset when the damage was one record (a flipped bit, a bad length), and is kept in any case.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.errors import LogCorruptError, LogUnavailableError
from memstream.fsutil import fsync_dir
from memstream.keystore.base import Subject
from memstream.keystore.file import FileKeyStore
from memstream.log.base import (
    QUARANTINE_HEADER,
    EventLog,
    LogReader,
    LogRecord,
    Offsets,
    Position,
)
from memstream.log.chain import FILE_CHAIN_HEADER
from memstream.log.dead_letters import belongs_to
from memstream.log.frames import (
    HEADER,
    KIND_QUARANTINE,
    LENGTH_MASK,
    ZERO_HASH,
    Frame,
    Stop,
    classify,
    encode,
    parse_one,
)
from memstream.log.group import GroupCommit

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
POLL_S = 0.02
CORRUPT_MARKER = "CORRUPT"
TORN_REPORT = "torn-tails.jsonl"
QUARANTINE_DIR = "quarantine"
DEAD_LETTER_FILE = "dead-letter.jsonl"
TAIL_HINT = "tail.json"  # the last append's Tail, so a new process need not parse the segment
HINT_BYTES = 512  # the hint is overwritten in place, always this long (one disk sector)


def _segment_name(base: int) -> str:
    return f"{base:020d}.seg"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def parse_frames(
    buf: bytes | memoryview, limit: int | None = None, *, at_eof: bool = True
) -> tuple[list[Frame], int, Stop | None]:
    """Whole valid frames from the start of `buf` (at most `limit`), where they end, and why
    parsing stopped early (None: the buffer or the limit was reached, or more must be read)."""
    frames: list[Frame] = []
    pos = 0
    while limit is None or len(frames) < limit:
        found = parse_one(buf, pos)
        if not isinstance(found, Frame):
            return frames, pos, classify(buf, pos, at_eof)
        frames.append(found)
        pos = found.end
    return frames, pos, None


def to_record(frame: Frame, offset: int) -> LogRecord:
    headers: tuple[tuple[str, bytes], ...] = ()
    if frame.head is not None:
        headers = ((FILE_CHAIN_HEADER, frame.head),)
        if frame.kind == KIND_QUARANTINE:
            headers += ((QUARANTINE_HEADER, frame.value),)
    return LogRecord(Position(0, offset), frame.key, frame.value, frame.timestamp_ms, headers)


@dataclass(frozen=True, slots=True)
class Tail:
    base: int  # first offset of the last segment
    size: int  # bytes of whole valid frames in it
    count: int  # records in it
    head: bytes  # hash of the last chained frame of the log (ZERO_HASH if none)
    torn: int = 0  # bytes of a torn tail after `size` (cut by the next append)
    ino: int = 0  # the segment file's inode: `repair` replaces the file, and a cache of
    # the old one must not be trusted (its byte positions moved)


@dataclass(frozen=True, slots=True)
class QuarantinedRegion:
    """One run of bad bytes that `repair` moved out of a segment."""

    segment: str
    byte_offset: int
    length: int
    offset: int  # log offset of the marker that took its place
    reason: str
    side_file: str
    sha256: str
    one_record: bool  # the region was exactly one frame: later offsets are unchanged

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "byte_offset": self.byte_offset,
            "bytes": self.length,
            "offset": f"0:{self.offset}",
            "reason": self.reason,
            "side_file": self.side_file,
            "sha256": self.sha256,
            "one_record": self.one_record,
        }


def _dead_letter_of(subject: Subject, line: bytes) -> bool:
    """Whether one line of `dead-letter.jsonl` holds a record of `subject`."""
    try:
        entry = json.loads(line)
        key, value = base64.b64decode(entry["key"]), base64.b64decode(entry["value"])
        headers = [base64.b64decode(v) for v in (entry.get("headers") or {}).values()]
        reason = str(entry.get("reason", "")).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return belongs_to(subject, key, value, reason, *headers)


def _hint_crc(fields: dict[str, Any]) -> int:
    """The CRC-32 of the tail hint's fields (everything but the CRC itself)."""
    return zlib.crc32(json.dumps(fields, sort_keys=True).encode())


class FileEventLog(EventLog):
    """Single-partition log (partition 0) in `directory`; safe for many processes at once."""

    name = "file"

    def __init__(self, directory: Path | str, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._tail: Tail | None = None
        # readers of this process waiting for the next append (see `appended`): woken at
        # once instead of at their next poll; other processes' appends are still polled
        self._waiters: list[asyncio.Future[None]] = []
        self._group = GroupCommit(self._write_group)

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
        await self._group.drain()  # appends already queued are written (or fail) first
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- segments ------------------------------------------------------------------------
    def segments(self) -> list[int]:
        return sorted(int(p.name[:-4]) for p in self.directory.glob("*.seg"))

    def segment_path(self, base: int) -> Path:
        return self.directory / _segment_name(base)

    # -- corruption ----------------------------------------------------------------------
    @property
    def corrupt_marker(self) -> Path:
        return self.directory / CORRUPT_MARKER

    def corruption(
        self, base: int, byte_offset: int, offset: int | None, reason: str
    ) -> LogCorruptError:
        """Record damage found at (segment, byte) in the CORRUPT marker (so every process
        refuses to append) and return the error to raise."""
        where = f"segment {_segment_name(base)}, byte {byte_offset}"
        if offset is not None:
            where += f" (log offset 0:{offset})"
        detail = {
            "segment": _segment_name(base), "byte_offset": byte_offset,
            "offset": None if offset is None else f"0:{offset}", "reason": reason,
            "detected_at": _now_iso(),
        }  # fmt: skip
        try:
            if not self.corrupt_marker.exists():
                tmp = self.corrupt_marker.with_suffix(".tmp")
                tmp.write_text(json.dumps(detail))
                os.replace(tmp, self.corrupt_marker)
                log.error("event log %s corrupt at %s: %s", self.directory, where, reason)
        except OSError:  # a read-only directory: the error itself still reaches the caller
            log.exception("could not write %s", self.corrupt_marker)
        return LogCorruptError(self._corrupt_message(where, reason))

    def _corrupt_message(self, where: str, reason: str) -> str:
        return (
            f"the event log in {self.directory} is corrupt at {where}: {reason}. Reading stops "
            "there and the log is read-only; `memstream log repair` quarantines the bad bytes "
            "and keeps every valid record after them"
        )

    def _check_marker(self) -> None:
        try:
            detail = json.loads(self.corrupt_marker.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            detail = {}
        where = f"segment {detail.get('segment', '?')}, byte {detail.get('byte_offset', '?')}"
        if detail.get("offset"):
            where += f" (log offset {detail['offset']})"
        raise LogCorruptError(self._corrupt_message(where, str(detail.get("reason", "unknown"))))

    # -- the tail ------------------------------------------------------------------------
    def _read_from(self, path: Path, start: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read()

    def _head_before(self, base: int) -> bytes:
        """The chain head at the end of the segments before `base`."""
        for b in reversed([b for b in self.segments() if b < base]):
            frames, _, _ = parse_frames(self._read_from(self.segment_path(b), 0))
            for frame in reversed(frames):
                if frame.hash is not None:
                    return frame.hash
        return ZERO_HASH

    def _scan_tail(self) -> Tail:
        """The last segment's valid size, record count and chain head (called under the
        lock). Raises LogCorruptError on damage that is not a torn tail.

        Only the bytes after what this process already knows are parsed. A process that
        knows nothing yet (each CLI command) takes the tail hint the last append in any
        process left (`TAIL_HINT`) when the segment file is exactly as that append left it
        (same inode, size and mtime); otherwise, as without a hint, it parses the whole
        segment (up to 64 MB, ~1 s at 50k events), which also finds damage done to it since."""
        bases = self.segments()
        if not bases:
            return Tail(0, 0, 0, ZERO_HASH)
        base = bases[-1]
        st = os.stat(self.segment_path(base))
        cached = self._tail
        if cached is None or cached.base != base or cached.ino != st.st_ino:
            cached = None
            if (hint := self._hinted(base, st)) is not None:
                return hint
        start = cached.size if cached else 0
        data = self._read_from(self.segment_path(base), start)
        frames, end, stop = parse_frames(data)
        count = (cached.count if cached else 0) + len(frames)
        if stop is not None and not stop.torn:
            raise self.corruption(base, start + stop.position, base + count, stop.reason)
        head = next((f.hash for f in reversed(frames) if f.hash is not None), None)
        if head is None:
            head = cached.head if cached else None
        if head is None:
            prior = [f for f in frames if f.hash is None]
            head = ZERO_HASH if prior or start else self._head_before(base)
        torn = len(data) - end if stop is not None else 0
        return Tail(base, start + end, count, head, torn, st.st_ino)

    def _hinted(self, base: int, st: os.stat_result) -> Tail | None:
        """The tail hint, if the segment file is unchanged since the append that wrote it."""
        try:
            data = json.loads((self.directory / TAIL_HINT).read_text())
            if "crc" in data and data.pop("crc") != _hint_crc(data):
                return None  # torn: read while an append overwrote it, or cut by a crash
            hint = Tail(int(data["base"]), int(data["size"]), int(data["count"]),
                        bytes.fromhex(data["head"]), 0, int(data["ino"]))  # fmt: skip
            mtime_ns = int(data["mtime_ns"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        same = (hint.base, hint.ino, hint.size, mtime_ns) == (
            base, st.st_ino, st.st_size, st.st_mtime_ns,
        )  # fmt: skip
        return hint if same else None

    def _write_hint(self, tail: Tail, mtime_ns: int) -> None:
        """Leave the tail for the next process (under the append lock, after the fsync).

        Overwritten in place, HINT_BYTES long, with a CRC of its fields, rather than written
        to a new file renamed over the old one: on ext4 a rename over an existing file makes
        the kernel write the new file's data out first, which cost as much as the append's
        own fsync (p50 0.49 ms vs 0.94 ms for the fsync, 5 us in place; one durable append
        1.83 -> 0.95 ms). A reader that catches the hint half-written (a process reading the
        tail without the append lock) or a crash that tore it sees a wrong CRC or no JSON,
        and scans the segment as it would without a hint."""
        body: dict[str, Any] = {"base": tail.base, "size": tail.size, "count": tail.count,
                                "head": tail.head.hex(), "ino": tail.ino, "mtime_ns": mtime_ns}  # fmt: skip
        body["crc"] = _hint_crc(body)
        data = json.dumps(body).encode()
        if len(data) > HINT_BYTES:  # never with these fields; a hint is only ever a shortcut
            (self.directory / TAIL_HINT).unlink(missing_ok=True)
            return
        try:
            fd = os.open(self.directory / TAIL_HINT, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data.ljust(HINT_BYTES), 0)
                if os.fstat(fd).st_size > HINT_BYTES:  # a longer file left by anything else
                    os.ftruncate(fd, HINT_BYTES)
            finally:
                os.close(fd)
        except OSError:
            return

    def _cut_torn(self, tail: Tail) -> None:
        """Cut a torn tail off the last segment and say so (a warning and torn-tails.jsonl)."""
        path = self.segment_path(tail.base)
        with open(path, "r+b") as f:
            f.truncate(tail.size)
            os.fsync(f.fileno())
        entry = {"segment": _segment_name(tail.base), "byte_offset": tail.size,
                 "bytes": tail.torn, "offset": f"0:{tail.base + tail.count}", "cut_at": _now_iso()}  # fmt: skip
        log.warning(
            "event log %s: cut a torn tail of %d bytes at %s byte %d (an append that a crash "
            "interrupted before it was acknowledged)",
            self.directory, tail.torn, _segment_name(tail.base), tail.size,
        )  # fmt: skip
        with open(self.directory / TORN_REPORT, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- writing -------------------------------------------------------------------------
    async def append(self, messages: Sequence[tuple[bytes, bytes]]) -> list[Position]:
        if not messages:
            return []
        self.check_messages(messages)
        if self._lock_fd is None:
            await self.start()
        return await self._group.append(messages)

    async def _write_group(self, messages: list[tuple[bytes, bytes]]) -> list[Position]:
        """One group of concurrent appends (memstream.log.group): one lock, one write, one
        fsync for all of them, in a worker thread; then this process's waiting readers
        are woken (see `appended`)."""
        try:
            return await asyncio.to_thread(self._append_sync, messages)
        finally:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                with contextlib.suppress(RuntimeError):  # its loop has closed
                    w.get_loop().call_soon_threadsafe(_wake, w)

    async def appended(self, timeout_s: float) -> None:
        """Until this process appends again, or `timeout_s` passes. Why: a reader polling
        every POLL_S (20 ms) added ~10 ms on average to every synchronous write's wait for
        its own projection (issue 16, section 6); an append in this process wakes it now."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout_s)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _append_sync(self, messages: list[tuple[bytes, bytes]]) -> list[Position]:
        assert self._lock_fd is not None
        ts = int(time.time() * 1000)
        with self._locked():
            try:
                self._check_marker()
                tail = self._scan_tail()
                if tail.torn:
                    self._cut_torn(tail)
                base, size, count = tail.base, tail.size, tail.count
                path = self.segment_path(base)
                new_file = not path.exists()
                if size >= self.segment_bytes:
                    base, size, count = base + count, 0, 0
                    path = self.segment_path(base)
                    new_file = True
                head = tail.head
                parts: list[bytes] = []
                for k, v in messages:
                    frame, head = encode(head, ts, bytes(k), bytes(v))
                    parts.append(frame)
                blob = b"".join(parts)
                with open(path, "r+b" if not new_file else "w+b") as f:
                    f.seek(size)
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                    written = os.fstat(f.fileno())
                    ino = written.st_ino
                if new_file:
                    fsync_dir(self.directory)
                first = base + count
                self._tail = Tail(base, size + len(blob), count + len(messages), head, 0, ino)
                self._write_hint(self._tail, written.st_mtime_ns)
            except LogCorruptError:
                self._tail = None
                raise
            except OSError as exc:
                self._tail = None
                raise LogUnavailableError(
                    f"could not durably append to the event log in {self.directory}: {exc}"
                ) from exc
        return [Position(0, first + i) for i in range(len(messages))]

    # -- reading -------------------------------------------------------------------------
    async def end_offsets(self) -> Offsets:
        tail = await asyncio.to_thread(self._read_tail_unlocked)
        return {0: tail.base + tail.count}

    def _read_tail_unlocked(self) -> Tail:
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

    # -- dead letters --------------------------------------------------------------------
    @property
    def dead_letter_path(self) -> Path:
        return self.directory / DEAD_LETTER_FILE

    async def dead_letter(self, items: Sequence[tuple[LogRecord, str]]) -> None:
        """One JSON line per record in `dead-letter.jsonl`: position, reason, key and value
        (base64), the record's headers; fsynced before returning."""
        if not items:
            return
        lines = []
        for record, reason in items:
            lines.append(json.dumps({
                "position": f"{record.position.partition}:{record.position.offset}",
                "reason": reason, "timestamp_ms": record.timestamp_ms,
                "key": base64.b64encode(record.key).decode(),
                "value": base64.b64encode(record.value).decode(),
                "headers": {h: base64.b64encode(v).decode() for h, v in record.headers},
                "dead_lettered_at": _now_iso(),
            }))  # fmt: skip

        def write() -> None:
            with self._locked(), open(self.dead_letter_path, "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(write)

    def dead_letter_count(self) -> int | None:
        try:
            with open(self.dead_letter_path, "rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    async def erase_dead_letters(self, subject: Subject) -> int:
        """Rewrite `dead-letter.jsonl` without the subject's records (memstream.log.
        dead_letters): a new file written beside it, fsynced and renamed over it, under the
        log's lock, so a reader sees the old file or the new one and no dead letter written
        meanwhile is lost. A line that is not JSON is kept as it is (it names nobody)."""

        def rewrite() -> int:
            path = self.dead_letter_path
            with self._locked():
                try:
                    lines = path.read_bytes().splitlines(keepends=True)
                except FileNotFoundError:
                    return 0
                kept = [line for line in lines if not _dead_letter_of(subject, line)]
                removed = len(lines) - len(kept)
                if removed:
                    tmp = path.with_name(f".{path.name}.tmp")
                    with open(tmp, "wb") as f:
                        f.write(b"".join(kept))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                    fsync_dir(self.directory)
                return removed

        return await asyncio.to_thread(rewrite)

    # -- health and repair ---------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What `memstream status` shows of the log itself: corrupt or not (and where), a torn
        tail waiting to be cut, the torn tails cut so far, the regions quarantined so far."""
        problem: dict[str, Any] | None = None
        torn: dict[str, Any] | None = None
        try:
            self._check_marker()
            with self._thread_lock:
                tail = self._scan_tail()
            if tail.torn:
                torn = {"segment": _segment_name(tail.base), "byte_offset": tail.size,
                        "bytes": tail.torn, "offset": f"0:{tail.base + tail.count}"}  # fmt: skip
        except LogCorruptError as exc:
            problem = {"message": exc.message}
            with contextlib.suppress(OSError, ValueError):
                problem.update(json.loads(self.corrupt_marker.read_text()))
        cut: list[dict[str, Any]] = []
        report = self.directory / TORN_REPORT
        if report.exists():
            cut = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
        quarantined = sorted(p.name for p in (self.directory / QUARANTINE_DIR).glob("*.bad"))
        state = "corrupt" if problem else ("torn-tail" if torn else "ok")
        return {"state": state, "corruption": problem, "torn_tail": torn,
                "torn_tails_cut": cut[-10:], "quarantined": quarantined}  # fmt: skip

    def repair(self) -> dict[str, Any]:
        """Quarantine every run of bad bytes into `quarantine/`, keep every valid record, and
        make the log writable again. Idempotent; a clean log is left untouched."""
        with self._locked():
            # the segments may be rewritten: no process may start from the old tail
            (self.directory / TAIL_HINT).unlink(missing_ok=True)
            try:
                return self._repair_locked()
            finally:
                self._tail = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The log's lock, against this process's threads and every other process."""
        if self._lock_fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "log.lock", os.O_RDWR | os.O_CREAT, 0o644)
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _repair_locked(self) -> dict[str, Any]:
        regions: list[QuarantinedRegion] = []
        torn_cut: dict[str, Any] | None = None
        bases = self.segments()
        head = ZERO_HASH
        for i, base in enumerate(bases):
            path = self.segment_path(base)
            data = path.read_bytes()
            last = i == len(bases) - 1
            pieces: list[bytes] = []
            pos, offset, changed = 0, base, False
            while pos < len(data):
                found = parse_one(data, pos)
                if isinstance(found, Frame):
                    pieces.append(data[pos : found.end])
                    head = found.hash if found.hash is not None else head
                    pos, offset = found.end, offset + 1
                    continue
                stop = classify(data, pos, at_eof=True)
                assert stop is not None
                changed = True
                if stop.torn and last:
                    torn_cut = {"segment": path.name, "byte_offset": pos,
                                "bytes": len(data) - pos, "offset": f"0:{offset}"}  # fmt: skip
                    break
                end = stop.resync if stop.resync is not None else len(data)
                region = self._quarantine(base, data, pos, end, offset, stop.reason, head)
                frame, head = region[1], region[2]
                pieces.append(frame)
                regions.append(region[0])
                pos, offset = end, offset + 1
            if changed:
                tmp = path.with_name(f".{path.name}.repair")
                with open(tmp, "wb") as f:
                    f.write(b"".join(pieces))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                fsync_dir(self.directory)
        if torn_cut is not None:
            torn_cut["cut_at"] = _now_iso()
            with open(self.directory / TORN_REPORT, "a") as f:
                f.write(json.dumps(torn_cut) + "\n")
        was_corrupt = self.corrupt_marker.exists()
        if was_corrupt:
            self.corrupt_marker.unlink()
            fsync_dir(self.directory)
        for r in regions:
            log.warning(
                "event log %s: quarantined %d bad bytes at %s byte %d into %s (marker at %s)",
                self.directory, r.length, r.segment, r.byte_offset, r.side_file, r.offset,
            )  # fmt: skip
        return {
            "quarantined": [r.to_dict() for r in regions],
            "torn_tail_cut": torn_cut,
            "was_marked_corrupt": was_corrupt,
            "offsets_may_have_shifted": any(not r.one_record for r in regions),
        }

    def _quarantine(
        self, base: int, data: bytes, start: int, end: int, offset: int, reason: str, head: bytes
    ) -> tuple[QuarantinedRegion, bytes, bytes]:
        """Write data[start:end] to a side file; return the region, its marker frame and the
        chain head after the marker."""
        bad = data[start:end]
        qdir = self.directory / QUARANTINE_DIR
        qdir.mkdir(exist_ok=True)
        side = qdir / f"{_segment_name(base)[:-4]}-{start:012d}.bad"
        with open(side, "wb") as f:
            f.write(bad)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(qdir)
        one = False
        if len(bad) >= HEADER.size:  # one record: its header's length spans exactly the
            word, crc = HEADER.unpack_from(bad, 0)  # region, or its CRC matches the region
            one = HEADER.size + (word & LENGTH_MASK) == len(bad) or zlib.crc32(bad[8:]) == crc
        region = QuarantinedRegion(
            segment=_segment_name(base), byte_offset=start, length=len(bad), offset=offset,
            reason=reason, side_file=str(side.relative_to(self.directory)),
            sha256=hashlib.sha256(bad).hexdigest(), one_record=one,
        )  # fmt: skip
        marker = json.dumps({**region.to_dict(), "repaired_at": _now_iso()}).encode()
        frame, new_head = encode(head, int(time.time() * 1000), b"", marker, KIND_QUARANTINE)
        return region, frame, new_head


def _replaced(path: Path, ino: int) -> bool:
    """Has `memstream log repair` put a new file at `path` since we opened inode `ino`? A
    reader that finds damage in the file a repair has just replaced must not mark the log
    corrupt again (the marker would make the repaired log read-only once more)."""
    try:
        return os.stat(path).st_ino != ino
    except FileNotFoundError:
        return True


class FileLogReader(LogReader):
    def __init__(self, log: FileEventLog, offset: int, group_id: str | None) -> None:
        self.log = log
        self.group_id = group_id
        self.next_offset = offset
        self._segment: int | None = None  # base of the segment we are in
        self._pos = 0  # byte position in that segment of record `next_offset`
        self._ino: int | None = None  # that segment file's inode (a repair replaces it)

    def _locate(self) -> bool:
        """Position (segment, byte offset) at self.next_offset; False if not written yet."""
        bases = self.log.segments()
        candidates = [b for b in bases if b <= self.next_offset]
        if not candidates:
            later = [b for b in bases if b > self.next_offset]
            if not later:
                return False
            candidates = [later[0]]
            self.next_offset = later[0]
        base = candidates[-1]
        path = self.log.segment_path(base)
        with open(path, "rb") as f:
            ino, data = os.fstat(f.fileno()).st_ino, f.read()
        pos, index = 0, base
        while index < self.next_offset:
            found = parse_one(data, pos)
            if isinstance(found, Frame):
                pos, index = found.end, index + 1
                continue
            stop = classify(data, pos, at_eof=True)
            if stop is None or stop.torn:
                return False  # not written yet
            if _replaced(path, ino):  # repaired meanwhile: look again at the new file
                return self._locate()
            raise self.log.corruption(base, pos, index, stop.reason)
        self._segment, self._pos = base, pos
        return True

    def _read_sync(self, max_records: int) -> list[LogRecord]:
        if self._segment is None and not self._locate():
            return []
        assert self._segment is not None
        out: list[LogRecord] = []
        rechecked = False
        while len(out) < max_records:
            assert self._segment is not None
            segment = self._segment
            path = self.log.segment_path(segment)
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                if self._ino is not None and stat.st_ino != self._ino:
                    # rewritten by `memstream log repair`: find our offset again
                    self._ino = self._segment = None
                    if not self._locate():
                        break
                    continue
                self._ino, size = stat.st_ino, stat.st_size
                f.seek(self._pos)
                data = f.read(READ_CHUNK)
                at_eof = self._pos + len(data) >= size
                frames, end, stop = parse_frames(data, max_records - len(out), at_eof=at_eof)
                if not frames and stop is None and end < len(data) and not at_eof:
                    f.seek(self._pos)  # a single frame larger than the chunk
                    data = f.read()
                    frames, end, stop = parse_frames(data, max_records - len(out))
            for frame in frames:
                out.append(to_record(frame, self.next_offset))
                self.next_offset += 1
            if stop is not None and not stop.torn:
                if _replaced(path, stat.st_ino):
                    # repaired while we read the file it replaced: not damage, read the new one
                    self._ino = self._segment = None
                    if not self._locate():
                        break
                    continue
                raise self.log.corruption(segment, self._pos + end, self.next_offset, stop.reason)
            self._pos += end
            if frames:
                continue
            # nothing more here: move on to the next segment if one exists
            later = [b for b in self.log.segments() if b > segment]
            if not later:
                break
            if stop is not None:  # a torn tail in a segment that is no longer the last:
                if not rechecked:  # read it once more (a writer may have just finished it)
                    rechecked = True
                    continue
                raise self.log.corruption(
                    segment, self._pos, self.next_offset,
                    f"{stop.reason}, in a segment that is not the last",
                )  # fmt: skip
            if later[0] < self.next_offset:
                raise self.log.corruption(
                    later[0], 0, self.next_offset,
                    f"segment {_segment_name(later[0])} starts at offset {later[0]}, inside "
                    f"the previous segment (which ends at {self.next_offset})",
                )  # fmt: skip
            self._segment, self._pos, self.next_offset = later[0], 0, later[0]
            self._ino = None
        return out

    async def next_batch(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[LogRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = await asyncio.to_thread(self._read_sync, max_records)
            left = deadline - time.monotonic()
            if records or left <= 0:
                return records
            await self.log.appended(min(POLL_S, left))

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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
