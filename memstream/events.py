"""Everything that can happen to a memory, as immutable facts named in the past tense.

Each class mirrors one record in `schemas/`; `encode_event`/`decode_event` turn them into
log messages (Avro single-object encoding) and back. Events never hold commands: a
delete_all is recorded as the concrete MemoryDeleted events it resolved to, plus an audit
record, so replay never re-evaluates a filter against a different state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from memstream.avro import AvroCodec
from memstream.scope import Scope

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Actor:
    key_id: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    event_type: ClassVar[str] = "Event"

    scope: Scope
    memory_id: str | None = None
    actor: Actor = field(default_factory=Actor)
    request_id: str | None = None
    event_id: str = field(default_factory=new_id)
    occurred_at: int = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryAdded(Event):
    event_type: ClassVar[str] = "MemoryAdded"

    text: str
    hash: str
    metadata: str = "{}"
    categories: tuple[str, ...] = ()
    expiration_date: str | None = None
    immutable: bool = False
    source_hash: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryUpdated(Event):
    event_type: ClassVar[str] = "MemoryUpdated"

    text: str | None = None
    metadata: str | None = None
    categories: tuple[str, ...] | None = None
    hash: str | None = None
    previous_hash: str | None = None
    expiration_date: str | None = None
    set_expiration_date: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryDeleted(Event):
    event_type: ClassVar[str] = "MemoryDeleted"

    reason: str = "api"  # api | delete_all | expired | erased
    cause_event_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAllRequested(Event):
    event_type: ClassVar[str] = "DeleteAllRequested"

    filters: str  # JSON
    count: int
    memory_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackGiven(Event):
    """A caller rated a memory (Mem0's POST /v1/feedback/); the memory itself is unchanged."""

    event_type: ClassVar[str] = "FeedbackGiven"

    feedback: str | None = None  # POSITIVE | NEGATIVE | VERY_NEGATIVE
    feedback_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryExpired(Event):
    event_type: ClassVar[str] = "MemoryExpired"

    reason: str  # expiration_date | policy
    policy_id: str | None = None
    expiration_date: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicySet(Event):
    event_type: ClassVar[str] = "RetentionPolicySet"

    policy_id: str
    field: str  # run_id | app_id | agent_id | user_id
    pattern: str  # exact id, 'prefix*', or '*'
    ttl_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicyRemoved(Event):
    event_type: ClassVar[str] = "RetentionPolicyRemoved"

    policy_id: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        MemoryAdded,
        MemoryUpdated,
        MemoryDeleted,
        DeleteAllRequested,
        FeedbackGiven,
        MemoryExpired,
        RetentionPolicySet,
        RetentionPolicyRemoved,
    )
}


@lru_cache(maxsize=1)
def codec() -> AvroCodec:
    return AvroCodec()


def to_record(event: Event) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if isinstance(value, Scope | Actor):
            value = {f: getattr(value, f) for f in _field_names(type(value))}
        elif isinstance(value, tuple):
            value = list(value)
        record[name] = value
    return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FIELD_SETS: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, computed once per class (dataclasses.fields is slow)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def from_record(event_type: str, record: dict[str, Any]) -> Event:
    cls = EVENT_TYPES[event_type]
    values: dict[str, Any] = {}
    names = _FIELD_SETS.get(cls)
    if names is None:
        names = _FIELD_SETS[cls] = frozenset(_field_names(cls))
    for key, value in record.items():
        if key not in names:
            continue  # a field this version does not know (written by a newer minor version)
        if key == "scope":
            value = Scope(**value)
        elif key == "actor":
            value = Actor(**value)
        elif key == "event_id":
            value = str(value)
        elif key == "occurred_at" and isinstance(value, dt.datetime):
            value = (value - EPOCH) // dt.timedelta(milliseconds=1)  # exact, no float rounding
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def encode_event(event: Event) -> bytes:
    return codec().encode(f"memstream.{event.event_type}", to_record(event))


def decode_event(data: bytes) -> Event:
    name, record = codec().decode(data)
    return from_record(name.removeprefix("memstream."), record)


def message_of(event: Event) -> tuple[bytes, bytes]:
    """The (key, value) log message: keyed by scope so each scope's events stay in order."""
    return event.scope.key(), encode_event(event)
