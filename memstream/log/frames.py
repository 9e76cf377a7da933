"""The file log's on-disk frames, and the one rule that tells a torn tail from corruption.

Two frame versions share an 8-byte header `u32 word | u32 crc32(payload)`:

- v1 (written before the hash chain existed): `word` = payload length (< 2**28), payload =
  `i64 timestamp_ms | u32 key length | key | value`;
- v2: `word` = `0x80000000 | payload length`, payload = `u8 kind | i64 timestamp_ms |
  u32 key length | prev[32] | hash[32] | key | value`, where `hash = sha256(prev | kind |
  timestamp | key length | key | value)` and `prev` is the `hash` of the log's previous v2
  frame (32 zero bytes for the first). `kind` 0 is an event; kind 1 is a quarantine marker
  that `memstream log repair` writes where it removed bad bytes (its value is JSON naming the
  side file that holds them).

Where parsing stops before the end of a segment, what follows is classified by `classify`:

- **torn** (a crash in the middle of an append that was never acknowledged): the bytes
  cannot be a complete frame -- fewer than a header, or a plausible header whose frame runs
  past the end of the file, or nothing but zero bytes (a file extended before its data
  reached the disk) -- AND no valid frame starts anywhere after them. Only such a tail may be
  cut off, and only at the end of the last segment.
- **corrupt**: anything else: a complete frame whose CRC fails, an impossible length
  (0, over the largest message, reserved bits set, 0x7fffffff...), a frame whose inner key
  length runs past its payload, or any damage followed by a valid frame. An fsynced,
  acknowledged record can only look like this, never like a torn tail, unless it was cut
  short by someone: that shortening is what the signed checkpoints (memstream.log.chain)
  detect.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from memstream.log.base import MAX_MESSAGE_BYTES

HEADER = struct.Struct("<II")
V1_HEAD = struct.Struct("<qI")  # timestamp, key length
V2_HEAD = struct.Struct("<BqI32s32s")  # kind, timestamp, key length, prev, hash
V2_FLAG = 0x80000000
RESERVED_BITS = 0x70000000
LENGTH_MASK = 0x0FFFFFFF
MAX_PAYLOAD = MAX_MESSAGE_BYTES + V2_HEAD.size
ZERO_HASH = bytes(32)

KIND_EVENT = 0
KIND_QUARANTINE = 1


@dataclass(frozen=True, slots=True)
class Frame:
    """One parsed frame. `head` is the raw v2 head (kind, timestamp, key length, prev,
    hash: 77 bytes), None for a v1 (unchained) frame."""

    start: int  # byte position in its segment
    end: int
    kind: int
    timestamp_ms: int
    key: bytes
    value: bytes
    head: bytes | None

    @property
    def prev(self) -> bytes | None:
        return None if self.head is None else self.head[13:45]

    @property
    def hash(self) -> bytes | None:
        return None if self.head is None else self.head[45:77]

    @property
    def chained(self) -> bool:
        return self.head is not None


@dataclass(frozen=True, slots=True)
class Stop:
    """Why parsing stopped before the end of the buffer."""

    position: int  # byte position where the bad or torn bytes start
    torn: bool  # True: a torn tail (see the module docstring); False: corruption
    reason: str
    resync: int | None  # where the next valid frame starts, if one does (corruption only)


def chain_hash(prev: bytes, kind: int, timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    h = hashlib.sha256(prev)
    h.update(struct.pack("<BqI", kind, timestamp_ms, len(key)))
    h.update(key)
    h.update(value)
    return h.digest()


def encode(
    prev: bytes, timestamp_ms: int, key: bytes, value: bytes, kind: int = KIND_EVENT
) -> tuple[bytes, bytes]:
    """A v2 frame chained to `prev`; returns (frame bytes, its hash)."""
    digest = chain_hash(prev, kind, timestamp_ms, key, value)
    payload = V2_HEAD.pack(kind, timestamp_ms, len(key), prev, digest) + key + value
    return HEADER.pack(V2_FLAG | len(payload), zlib.crc32(payload)) + payload, digest


def encode_v1(timestamp_ms: int, key: bytes, value: bytes) -> bytes:
    """A frame as memstream wrote them before the chain (tests of old logs use it)."""
    payload = V1_HEAD.pack(timestamp_ms, len(key)) + key + value
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _length(word: int) -> int | None:
    """The payload length a header word announces, or None if no valid frame has it."""
    if word & RESERVED_BITS:
        return None
    length = word & LENGTH_MASK
    least = V2_HEAD.size if word & V2_FLAG else V1_HEAD.size
    if length < least or length > MAX_PAYLOAD:
        return None
    return length


_UNPACK_HEADER = HEADER.unpack_from
_UNPACK_V1 = V1_HEAD.unpack_from
_UNPACK_V2 = struct.Struct("<BqI").unpack_from


def parse_one(buf: bytes | memoryview, pos: int) -> Frame | str | None:
    """The frame at `pos`; None if the buffer ends inside it; a reason string if it is bad.

    The reader's hot path (every record of a replay passes here): kept flat on purpose."""
    n = len(buf)
    if pos + 8 > n:
        return None
    word, crc = _UNPACK_HEADER(buf, pos)
    length = word & LENGTH_MASK
    v2 = word & V2_FLAG
    if word & RESERVED_BITS or length > MAX_PAYLOAD or length < (77 if v2 else 12):
        return f"impossible frame header 0x{word:08x}"
    start = pos + 8
    end = start + length
    if end > n:
        return None
    if zlib.crc32(buf[start:end]) != crc:
        return "checksum mismatch"
    if v2:
        kind, ts, klen = _UNPACK_V2(buf, start)
        if kind > KIND_QUARANTINE:
            return f"unknown frame kind {kind}"
        body = start + 77
        head: bytes | None = bytes(buf[start:body])
    else:
        ts, klen = _UNPACK_V1(buf, start)
        kind, body, head = KIND_EVENT, start + 12, None
    if body + klen > end:
        return "key length runs past the frame"
    return Frame(
        pos, end, kind, ts, bytes(buf[body : body + klen]), bytes(buf[body + klen : end]), head
    )


def find_next_frame(buf: bytes | memoryview, start: int) -> int | None:
    """The first position >= `start` where a whole valid frame starts (resynchronising)."""
    n = len(buf)
    mv = memoryview(buf)
    for q in range(start, n - HEADER.size + 1):
        b3 = mv[q + 3]
        # cheap pre-checks on the header word: v1 lengths are < 2**24 in practice (top byte
        # 0, the rest not all zero), v2 words have 0x8 in the top nibble
        if b3 == 0:
            if not (mv[q] or mv[q + 1] or mv[q + 2]):
                continue
        elif (b3 & 0xF0) != 0x80:
            continue
        frame = parse_one(mv, q)
        if isinstance(frame, Frame):
            return q
    return None


def classify(buf: bytes | memoryview, pos: int, at_eof: bool) -> Stop | None:
    """Classify what starts at `pos`, where whole valid frames stopped.

    None: nothing is wrong there (the buffer ends at `pos`, or it ends inside a frame and
    more of the file is still to be read: `at_eof` False).
    """
    n = len(buf)
    if pos >= n:
        return None
    found = parse_one(buf, pos)
    if isinstance(found, Frame):
        return None
    if found is None and not at_eof:
        return None  # the frame continues beyond this buffer: read more
    if found is None:
        reason = "a frame cut short at the end of the file"
    elif not any(bytes(buf[pos:])):
        reason, found = "zero bytes at the end of the file", None
    else:
        reason = found
    # the one exception to the frame at `pos` skipping exactly its own length: when its
    # header is intact, the next frame is where that length says
    resync: int | None = None
    if isinstance(found, str) and n >= pos + HEADER.size:
        length = _length(HEADER.unpack_from(buf, pos)[0])
        after = pos + HEADER.size + length if length is not None else None
        if (
            after is not None
            and after <= n
            and (after == n or isinstance(parse_one(buf, after), Frame))
        ):
            resync = after
    if resync is None:
        resync = find_next_frame(buf, pos + 1)
    if found is None and resync is None:
        return Stop(pos, True, reason, None)
    return Stop(pos, False, reason, resync)
