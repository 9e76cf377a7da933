"""Poison records: messages the projector cannot apply, set aside instead of stopping it.

A record is poison when its bytes do not decode (not Avro single-object encoding, a writer
schema fingerprint nobody registered, a body that does not parse, a sealed text that does not
open) or when it decodes to an event that cannot have been written by memstream (`impossible`).
The projector hands each to the log's dead-letter sink (`<topic>.dead-letter` on Kafka,
`dead-letter.jsonl` beside the file log) with the reason, counts it, and goes on: the record
stays in the log (nothing is deleted), and the projection simply does not contain it.
A file-log quarantine marker (left by `memstream log repair`) is skipped and counted, not
dead-lettered: the bytes it stands for are already in the quarantine side file.

Delivery to the dead-letter sink is at-least-once: a batch retried after a crash may
dead-letter the same record twice (its source position, in the headers, tells them apart).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from memstream.errors import SchemaError
from memstream.events import (
    DeleteAllRequested,
    Event,
    FeedbackGiven,
    KeyLookup,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    decode_record,
    event_of,
)
from memstream.log.base import QUARANTINE_HEADER, LogRecord

_MEMORY_EVENTS = (MemoryAdded, MemoryUpdated, MemoryDeleted, MemoryExpired, FeedbackGiven)


def impossible(event: Event) -> str | None:
    """Why a decoded event cannot be a real one (None if it can)."""
    if not event.scope.org_id or not event.scope.project_id:
        return "no org_id or project_id"
    if not event.event_id:
        return "no event_id"
    if event.occurred_at < 0:
        return f"occurred_at {event.occurred_at} is before 1970"
    if isinstance(event, _MEMORY_EVENTS) and not event.memory_id:
        return f"a {event.event_type} without a memory_id"
    if isinstance(event, MemoryAdded) and not event.erased:
        if not event.text or not event.hash:
            return "a MemoryAdded without text or hash"
        try:
            metadata = json.loads(event.metadata)
        except ValueError:
            return "metadata is not JSON"
        if not isinstance(metadata, dict):
            return "metadata is not a JSON object"
    if isinstance(event, DeleteAllRequested) and event.count < 0:
        return f"a DeleteAllRequested with count {event.count}"
    return None


def open_record(record: LogRecord, keys: KeyLookup | None) -> tuple[Event | None, str | None]:
    """(event, None) for a record to apply; (None, reason) for poison; (None, None) for a
    quarantine marker (skip it)."""
    decoded, reason = decode_opened(record, keys)
    if decoded is None:
        return None, reason
    return checked(*decoded)


def decode_opened(
    record: LogRecord, keys: KeyLookup | None, memo: dict[tuple[Any, ...], Any] | None = None
) -> tuple[tuple[str, dict[str, Any], bool] | None, str | None]:
    """The first half of `open_record`: the record decoded and opened (`decode_record`,
    `memo` its batch's keys), not yet an `Event`; (None, reason) for undecodable bytes,
    (None, None) for a marker."""
    if any(name == QUARANTINE_HEADER for name, _ in record.headers):
        return None, None
    try:
        return decode_record(record.value, keys, memo), None
    except SchemaError as exc:
        return None, f"undecodable: {exc.message}"
    except Exception as exc:  # a body fastavro rejects, a sealed text that does not open...
        return None, f"undecodable: {type(exc).__name__}: {exc}"


def checked(name: str, record: dict[str, Any], erased: bool) -> tuple[Event | None, str | None]:
    """The second half of `open_record`: the `Event` of a decoded record, or why it is poison."""
    try:
        event = event_of(name, record, erased)
    except SchemaError as exc:
        return None, f"undecodable: {exc.message}"
    except Exception as exc:  # a field of the wrong kind for the event's constructor
        return None, f"undecodable: {type(exc).__name__}: {exc}"
    reason = impossible(event)
    if reason is not None:
        return None, f"impossible content: {reason}"
    return event, None


class PoisonCounts:
    """What this process set aside: poison records by reason kind, quarantine markers."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.quarantined = 0

    def add(self, reason: str) -> None:
        self.by_kind[reason.split(":", 1)[0]] += 1

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def to_dict(self) -> dict[str, object]:
        return {"dead_lettered": self.total, "by_kind": dict(self.by_kind),
                "quarantine_markers_skipped": self.quarantined}  # fmt: skip
