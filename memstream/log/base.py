"""The EventLog interface: the one source of truth, behind one small abstract class.

Two implementations pass the same contract suite (tests/integration/test_eventlog_contract.py):
`FileEventLog` (embedded default) and `KafkaEventLog` (aiokafka). Positions are
(partition, offset); the file log has a single partition 0. A consumer's progress is a map
partition -> next offset to read, exactly like Kafka's committed offsets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memstream.errors import ValidationError

if TYPE_CHECKING:
    from memstream.keystore.base import KeyStore, Subject

MAX_MESSAGE_BYTES = 1_048_000
"""Largest key + value of one message, on every log: it fits Kafka's default broker limit
(1,048,588 bytes with record overhead), so the file log cannot accept what Kafka would refuse."""

QUARANTINE_HEADER = "ms-quarantined"
"""LogRecord header of a file-log quarantine marker: the place of bytes that `memstream log
repair` removed (its value is the JSON description of the region). Not an event: every
consumer skips it (and counts it)."""

Offsets = dict[int, int]
"""partition -> next offset to read (Kafka's meaning of a committed offset)."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    position: Position
    key: bytes
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    """Log-level metadata beside the message: the hash chain (memstream.log.chain) and the
    file log's quarantine markers. Never part of the event itself."""


class LogReader(ABC):
    """A cursor over the log from given offsets; one per consumer (projector, replay, dump)."""

    @abstractmethod
    async def next_batch(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[LogRecord]:
        """Return the next records in log order per partition (may be empty after timeout_s).

        Records of one partition come in offset order; partitions may interleave.
        A torn or corrupt tail is never returned as data.
        """

    @abstractmethod
    async def commit(self, offsets: Offsets) -> None:
        """Record consumer progress. Call only after the projection of those records is written.

        Partitions not named keep their previous progress (a merge). Raises ValueError on a
        reader opened without a group_id.
        """

    @abstractmethod
    async def close(self) -> None: ...


class EventLog(ABC):
    """Append-only, ordered per key, durable on return."""

    name: str = "log"

    @property
    def identity(self) -> str:
        """Which log this is, stable across restarts and hosts; a projection records it so
        one data directory can never mix events from two logs."""
        return self.name

    @abstractmethod
    async def start(self) -> None:
        """Connect / open files; create the topic if missing. Idempotent."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def append(self, messages: Sequence[tuple[bytes, bytes]]) -> list[Position]:
        """Durably append (key, value) messages and return their positions, in input order.

        Messages with the same key keep their relative order. Returns only once every message
        is durable (fsync / acks=all). A malformed or oversized message raises ValidationError
        before anything is written (see `check_messages`); a failure of the log itself raises
        LogUnavailableError, and the caller must treat the whole batch as not written
        (at-least-once retries are made safe by event ids and request ids downstream).
        """

    @abstractmethod
    async def end_offsets(self) -> Offsets:
        """Next offset to be written, per partition: reading up to here is 'caught up'."""

    @abstractmethod
    async def reader(
        self, start: Offsets | None = None, *, group_id: str | None = None
    ) -> LogReader:
        """A reader positioned at `start` (missing partitions start at 0).

        `group_id` names the consumer group whose progress `LogReader.commit` records
        (Kafka consumer group; a progress file for the file log).
        """

    @staticmethod
    def check_messages(messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Refuse a batch with a non-bytes or oversized message, before any of it is written."""
        for i, (key, value) in enumerate(messages):
            if not isinstance(key, bytes | bytearray) or not isinstance(value, bytes | bytearray):
                raise ValidationError(f"message {i}: key and value must be bytes")
            if len(key) + len(value) > MAX_MESSAGE_BYTES:
                raise ValidationError(
                    f"message {i}: key + value is {len(key) + len(value)} bytes, over the "
                    f"event log limit of {MAX_MESSAGE_BYTES} bytes"
                )

    async def committed(self, group_id: str) -> Offsets:
        """The progress last committed by `group_id` (empty if none)."""
        return {}

    def health(self) -> dict[str, Any]:
        """The log's own integrity, for `memstream status`: `state` is ok, torn-tail or
        corrupt (see memstream.log.file). A log kept by a broker reports ok."""
        return {"state": "ok"}

    async def dead_letter(self, items: Sequence[tuple[LogRecord, str]]) -> None:
        """Set aside records a consumer cannot apply, each with the reason (see
        projector/poison.py). Durable on return; at-least-once."""
        raise NotImplementedError(f"{type(self).__name__} has no dead-letter sink")

    def dead_letter_count(self) -> int | None:
        """How many records were dead-lettered so far (None: not known without a scan)."""
        return None

    async def erase_dead_letters(self, subject: Subject) -> int:
        """Remove what the dead-letter sink holds of `subject` (an erasure; whose a record
        is: memstream.log.dead_letters); how many records were removed. A sink that cannot
        remove single records (a Kafka topic: docs/erasure.md) removes nothing."""
        return 0

    def repair(self) -> dict[str, Any]:
        """Quarantine damaged bytes so the log is readable and writable again."""
        raise ValidationError(
            f"the {self.name} log keeps no local files: there is nothing to repair here"
        )

    def subject_keys(self) -> KeyStore:
        """A new, not yet started store of the per-subject keys that live beside this log
        (crypto-shredding, see memstream.keystore): shared by every process using the log,
        and never under `projections/`. The caller starts and closes it."""
        raise NotImplementedError(f"{type(self).__name__} has no subject key store")

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
