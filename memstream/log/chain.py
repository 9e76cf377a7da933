"""The hash chain that makes the log tamper-evident, and the walk that checks it.

Two kinds of link (docs/guarantees.md, "Tamper evidence", says why each is sound):

- **File log** (one writer at a time, under the log's flock): every frame carries
  `prev | hash`, `hash = sha256(prev | kind | timestamp | key length | key | value)` and
  `prev` = the hash of the log's previous frame (memstream.log.frames). Exposed to readers as
  the `ms-file-chain` record header.
- **Kafka** (many producer processes append to one partition, and none can know the
  partition's previous record): each producer keeps its own chain per partition, in a record
  header `ms-chain` = `producer id (16) | seq (u64) | prev (32) | hash (32)`, with
  `hash = sha256(prev | producer id | seq | key length | key | value)`. Kafka's idempotent
  producer writes one producer's records of one partition in send order without gaps, so the
  chain of (producer, partition) is gap-free; a producer that saw a failed append starts a new
  chain under a new producer id, since it cannot know which of that batch's records landed.

On top of both, readers compute a **head** per partition: `R = sha256(R_prev | offset |
key length | value length | key | value)` over every record in offset order. Heads are what
signed checkpoints (memstream.log.checkpoint) and audit exports record: a later walk that
reaches a different head at the same offset, or ends before it, proves the log was changed.

Every hash covers the bytes as stored: sealed texts, never plaintext, so erasing a subject
(destroying its key) leaves every link verifiable.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memstream.log.base import QUARANTINE_HEADER, LogRecord
from memstream.log.frames import KIND_QUARANTINE, ZERO_HASH, chain_hash

FILE_CHAIN_HEADER = "ms-file-chain"
"""The raw head of a file log v2 frame: kind (u8) | timestamp (i64) | key length (u32) |
prev (32) | hash (32), on every record read from one (memstream.log.frames)."""
KAFKA_CHAIN_HEADER = "ms-chain"
"""producer id (16) | seq (u64 LE) | prev (32) | hash (32), on records written to Kafka."""

_SEQ = struct.Struct("<QI")
_HEAD = struct.Struct("<QII")


def kafka_hash(prev: bytes, producer_id: bytes, seq: int, key: bytes, value: bytes) -> bytes:
    h = hashlib.sha256(prev)
    h.update(producer_id)
    h.update(_SEQ.pack(seq, len(key)))
    h.update(key)
    h.update(value)
    return h.digest()


class ProducerChain:
    """One Kafka producer's chains, one per partition (see the module docstring)."""

    def __init__(self) -> None:
        self.producer_id = b""
        self._state: dict[int, tuple[int, bytes]] = {}
        self.restart()

    def restart(self) -> None:
        """A new producer id: after a failed append nothing may chain to what may be missing."""
        self.producer_id = uuid.uuid4().bytes
        self._state = {}

    def link(self, partition: int, key: bytes, value: bytes) -> bytes:
        """The `ms-chain` header value of the next record sent to `partition`."""
        seq, prev = self._state.get(partition, (-1, ZERO_HASH))
        seq += 1
        digest = kafka_hash(prev, self.producer_id, seq, key, value)
        self._state[partition] = (seq, digest)
        return self.producer_id + struct.pack("<Q", seq) + prev + digest


def head_step(head: bytes, record: LogRecord) -> bytes:
    h = hashlib.sha256(head)
    h.update(_HEAD.pack(record.position.offset, len(record.key), len(record.value)))
    h.update(record.key)
    h.update(record.value)
    return h.digest()


@dataclass
class Heads:
    """The reader-computed heads: partition -> (next offset, head hash)."""

    heads: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    def update(self, record: LogRecord) -> bytes:
        p = record.position.partition
        _, head = self.heads.get(p, (0, ZERO_HASH))
        head = head_step(head, record)
        self.heads[p] = (record.position.offset + 1, head)
        return head

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {str(p): {"offset": o, "hash": h.hex()} for p, (o, h) in sorted(self.heads.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, Any]]) -> Heads:
        return cls({int(p): (int(v["offset"]), bytes.fromhex(v["hash"])) for p, v in data.items()})


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing `memstream verify` found wrong, at a log position."""

    position: str  # "p:o"
    kind: str  # altered | reordered | inserted | missing | quarantined | truncated | checkpoint
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"position": self.position, "kind": self.kind, "detail": self.detail}


@dataclass
class _Pending:
    position: str
    offset: int
    partition: int
    prev: bytes


class ChainVerifier:
    """Feed it every record of the log in offset order per partition; then `finish()`."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.heads = Heads()
        self.events = 0
        self.chained = 0
        self.unchained = 0
        self.quarantined = 0
        self.notes: list[str] = []
        # file log: the running chain head per partition, whether the last record was a
        # quarantine marker, and every hash seen (to tell reordered from inserted/missing)
        self._file_head: dict[int, bytes | None] = {}
        self._after_marker: dict[int, bool] = defaultdict(bool)
        self._seen: dict[tuple[int, bytes], int] = {}
        self._pending: list[_Pending] = []
        # kafka: (partition, producer id) -> (seq, hash)
        self._producers: dict[tuple[int, bytes], tuple[int, bytes]] = {}
        self._kafka_started: set[int] = set()
        self._first_unchained_after: dict[int, int] = {}

    def _find(self, record: LogRecord, kind: str, detail: str) -> None:
        pos = f"{record.position.partition}:{record.position.offset}"
        self.findings.append(Finding(pos, kind, detail))

    def feed(self, record: LogRecord) -> None:
        self.heads.update(record)
        headers = dict(record.headers)
        if FILE_CHAIN_HEADER in headers:
            self._feed_file(record, headers[FILE_CHAIN_HEADER], headers)
        elif KAFKA_CHAIN_HEADER in headers:
            self._feed_kafka(record, headers[KAFKA_CHAIN_HEADER])
        else:
            self.events += 1
            self.unchained += 1
            p = record.position.partition
            if self._file_head.get(p) is not None or p in self._kafka_started:
                self._find(record, "inserted", "an unchained event after the chain began: new "
                           "writers never write one (inserted, or written by an old memstream)")  # fmt: skip

    # -- the file log's single chain --------------------------------------------------
    def _feed_file(self, record: LogRecord, raw: bytes, headers: dict[str, bytes]) -> None:
        p, offset = record.position.partition, record.position.offset
        kind, prev, digest = raw[0], raw[13:45], raw[45:77]
        if kind == KIND_QUARANTINE:
            self.quarantined += 1
            self._find(record, "quarantined", "missing: damaged bytes were quarantined here by "
                       f"`memstream log repair` ({headers.get(QUARANTINE_HEADER, b'').decode()})")  # fmt: skip
        else:
            self.events += 1
            self.chained += 1
        expected = chain_hash(prev, kind, record.timestamp_ms, record.key, record.value)
        if expected != digest:
            self._find(record, "altered", "the event's bytes do not match its hash (edited "
                       "after it was written; a recomputed CRC does not hide it)")  # fmt: skip
        head = self._file_head.get(p)
        if head is None and prev != ZERO_HASH and p not in self._file_head:
            self.notes.append(f"the chain of partition {p} starts at {p}:{offset} from a head "
                              "that is not in the log (earlier events were removed?)")  # fmt: skip
            self._pending.append(_Pending(f"{p}:{offset}", offset, p, prev))
        elif (
            head is None
            and prev != ZERO_HASH
            or head is not None
            and prev != head
            and not self._after_marker[p]
        ):
            self._pending.append(_Pending(f"{p}:{offset}", offset, p, prev))
        self._seen[(p, digest)] = offset
        self._file_head[p] = digest
        self._after_marker[p] = kind == KIND_QUARANTINE

    # -- Kafka: one chain per (producer, partition) -------------------------------------
    def _feed_kafka(self, record: LogRecord, raw: bytes) -> None:
        self.events += 1
        self.chained += 1
        p = record.position.partition
        self._kafka_started.add(p)
        if len(raw) != 16 + 8 + 32 + 32:
            self._find(record, "altered", "its chain header is malformed")
            return
        pid, (seq,), prev, digest = raw[:16], struct.unpack("<Q", raw[16:24]), raw[24:56], raw[56:]
        who = f"producer {uuid.UUID(bytes=pid)}"
        if kafka_hash(prev, pid, seq, record.key, record.value) != digest:
            self._find(record, "altered", f"the event's bytes do not match its hash ({who}, "
                       f"seq {seq})")  # fmt: skip
        last = self._producers.get((p, pid))
        if last is None:
            if seq != 0 or prev != ZERO_HASH:
                self._find(record, "missing", f"{who}'s first {seq} event(s) in partition {p} "
                           "are not in the log")  # fmt: skip
        else:
            last_seq, last_hash = last
            if seq <= last_seq:
                self._find(record, "reordered", f"{who} seq {seq} comes after its seq "
                           f"{last_seq}: reordered or replayed (an inserted copy)")  # fmt: skip
            elif seq > last_seq + 1:
                self._find(record, "missing", f"{who} seq {last_seq + 1}..{seq - 1} are not "
                           "in the log")  # fmt: skip
            elif prev != last_hash:
                self._find(record, "altered", f"{who} seq {seq} does not chain to its seq "
                           f"{last_seq}: one of them was altered or replaced")  # fmt: skip
        if last is None or seq > last[0]:
            self._producers[(p, pid)] = (seq, digest)

    def finish(self) -> None:
        """Classify the broken links of the file chain, now that every hash is known."""
        for item in self._pending:
            where = self._seen.get((item.partition, item.prev))
            if where is None:
                kind, detail = (
                    "missing",
                    (
                        "the event this one chains to is not in the log (removed, or the event "
                        "before it was altered and its hash recomputed)"
                    ),
                )
            elif where > item.offset:
                kind, detail = (
                    "reordered",
                    (f"it chains to {item.partition}:{where}, which comes after it"),
                )
            else:
                kind, detail = (
                    "inserted",
                    (
                        f"it chains to {item.partition}:{where}: the events between were "
                        "inserted or moved"
                    ),
                )
            self.findings.append(Finding(item.position, kind, detail))
        self._pending = []
        self.findings.sort(key=lambda f: tuple(int(x) for x in f.position.split(":")))
