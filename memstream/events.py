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
import json
import operator
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from memstream import crypto
from memstream.avro import AvroCodec
from memstream.keystore.base import Subject, SubjectKey
from memstream.scope import Scope

KeyLookup = Callable[[Subject, str], SubjectKey | None]
"""(subject, key_id) -> the key, or None once it is destroyed (KeyStore.lookup)."""

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def now_ms() -> int:
    return int(time.time() * 1000)


# uuid4's version (4) and variant (RFC 4122) bits, as uuid.UUID(version=4) sets them
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random (version 4) UUID string, as `str(uuid.uuid4())` gives it: the same 122
    random bits from os.urandom, formatted without building a UUID object (~1.5 us less;
    three of these per add)."""
    h = (int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def text_hash(text: str) -> str:
    """Plain sha256: the embedding cache's key. Events carry `crypto.keyed_hash` instead."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Actor:
    key_id: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    event_type: ClassVar[str] = "Event"
    # fields that hold a subject's data: sealed under its key when the event is encoded
    SEALED: ClassVar[tuple[str, ...]] = ()

    scope: Scope
    memory_id: str | None = None
    actor: Actor = field(default_factory=Actor)
    request_id: str | None = None
    event_id: str = field(default_factory=new_id)
    occurred_at: int = field(default_factory=now_ms)
    key_id: str | None = None  # set when read from a sealed message
    # True when the message was sealed under a key that no longer exists (the subject was
    # erased): the SEALED fields then hold placeholders, never the data. Not in the log.
    erased: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryAdded(Event):
    event_type: ClassVar[str] = "MemoryAdded"
    SEALED: ClassVar[tuple[str, ...]] = ("text", "metadata", "categories")

    text: str
    hash: str
    metadata: str = "{}"
    categories: tuple[str, ...] = ()
    expiration_date: str | None = None
    immutable: bool = False
    source_hash: str | None = None
    decision_id: str | None = None  # the InferenceDecided that decided it (inference)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryUpdated(Event):
    event_type: ClassVar[str] = "MemoryUpdated"
    SEALED: ClassVar[tuple[str, ...]] = ("text", "metadata", "categories")

    text: str | None = None
    metadata: str | None = None
    categories: tuple[str, ...] | None = None
    hash: str | None = None
    previous_hash: str | None = None
    expiration_date: str | None = None
    set_expiration_date: bool = False
    # backdating (the platform's update(timestamp=...)): created_at and updated_at become
    # this time, ms UTC; None = the update does not touch the timestamps
    timestamp: int | None = None
    decision_id: str | None = None  # the InferenceDecided that decided it (inference)
    expected_offset: int | None = None  # the version the LLM read: else CONFLICT, not applied


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryDeleted(Event):
    event_type: ClassVar[str] = "MemoryDeleted"

    reason: str = "api"  # api | delete_all | expired | erased | inference
    cause_event_id: str | None = None
    decision_id: str | None = None  # the InferenceDecided that decided it (inference)
    expected_offset: int | None = None  # the version the LLM read: else CONFLICT, not applied


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAllRequested(Event):
    event_type: ClassVar[str] = "DeleteAllRequested"
    SEALED: ClassVar[tuple[str, ...]] = ("filters",)

    filters: str  # JSON
    count: int
    memory_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackGiven(Event):
    """A caller rated a memory (Mem0's POST /v1/feedback/); the memory itself is unchanged."""

    event_type: ClassVar[str] = "FeedbackGiven"
    SEALED: ClassVar[tuple[str, ...]] = ("feedback_reason",)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectErased(Event):
    """The subject named by `scope` + `subject_field` was erased; `key_ids` were destroyed."""

    event_type: ClassVar[str] = "SubjectErased"

    subject_field: str
    key_ids: tuple[str, ...] = ()
    reason: str | None = None

    def subject(self) -> Subject:
        value = getattr(self.scope, self.subject_field)
        return Subject(self.scope.org_id, self.scope.project_id, self.subject_field, value)


# -- inference (docs/inference.md): the input, the decision, the project's settings ---------
@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesRecorded(Event):
    """The conversation an inferred add was given (the input the LLM decided on).

    `pending`: recorded alone by an async add before the LLM was asked; its decision is
    owed, and any server settles it (producers/resume.py). `options` then holds the add's
    other fields (JSON: metadata, categories, expiration_date, immutable)."""

    event_type: ClassVar[str] = "MessagesRecorded"
    SEALED: ClassVar[tuple[str, ...]] = ("messages", "options")

    messages: str  # JSON list of {role, content}
    source_hash: str | None = None
    pending: bool = False
    options: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceDecided(Event):
    """What the LLM decided about one MessagesRecorded, with what model, prompt and cost."""

    event_type: ClassVar[str] = "InferenceDecided"
    SEALED: ClassVar[tuple[str, ...]] = ("output",)

    messages_event_id: str
    model: str
    llm_host: str
    prompt_version: str
    prompt_hash: str
    temperature: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    output: str = "{}"  # JSON: facts, memories shown (temporary ids), decisions
    # answers a pending MessagesRecorded: only the first settling event in log order applies
    settles: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceFailed(Event):
    """An async add's inference failed for good: its pending MessagesRecorded is settled as
    FAILED with `reason`, and nothing else is written for it (producers/resume.py)."""

    event_type: ClassVar[str] = "InferenceFailed"
    SEALED: ClassVar[tuple[str, ...]] = ("reason",)  # an LLM's bad answer may quote facts

    messages_event_id: str
    model: str
    llm_host: str
    reason: str = ""
    attempts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectSettingsUpdated(Event):
    """A project's custom instructions and/or categories changed (`fields_set` says which)."""

    event_type: ClassVar[str] = "ProjectSettingsUpdated"

    custom_instructions: str | None = None
    custom_categories: str | None = None  # JSON list
    fields_set: tuple[str, ...] = ()


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
        SubjectErased,
        MessagesRecorded,
        InferenceDecided,
        InferenceFailed,
        ProjectSettingsUpdated,
    )
}

# Placeholders a sealed message carries in its SEALED fields (valid for every schema).
_PLACEHOLDER: dict[str, Any] = {
    "text": "",
    "metadata": "{}",
    "categories": [],
    "filters": "{}",
    "feedback_reason": None,
    "messages": "[]",
    "output": "{}",
    "options": "{}",
    "reason": "",
}
_UNSEEN: Any = object()
_MAY_BE_NONE = {"MemoryUpdated": ("text", "metadata", "categories")}
_NOT_IN_LOG = ("erased",)


@lru_cache(maxsize=1)
def codec() -> AvroCodec:
    return AvroCodec()


def to_record(event: Event) -> dict[str, Any]:
    """The event's Avro record: its fields in order (not `erased`), Scope and Actor as
    dicts, tuples as lists."""
    names, get, nested, tuples = _record_plan(type(event))
    record = dict(zip(names, get(event), strict=True))
    for name in nested:
        value = record[name]
        if isinstance(value, Scope | Actor):
            record[name] = {f: getattr(value, f) for f in _field_names(type(value))}
    for name in tuples:
        value = record[name]
        if isinstance(value, tuple):
            record[name] = list(value)
    return record


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_RECORD_PLANS: dict[type, tuple[tuple[str, ...], Any, tuple[str, ...], tuple[str, ...]]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, computed once per class (dataclasses.fields is slow)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _record_plan(
    cls: type,
) -> tuple[tuple[str, ...], Any, tuple[str, ...], tuple[str, ...]]:
    """Per event class, once: the logged field names, one attrgetter fetching them all (a
    single C call instead of a getattr and two isinstance checks per field), and which of
    them may hold a Scope/Actor or a tuple, by their declared types."""
    plan = _RECORD_PLANS.get(cls)
    if plan is None:
        hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        names = tuple(n for n in _field_names(cls) if n not in _NOT_IN_LOG)
        nested = tuple(n for n in names if "Scope" in hints[n] or "Actor" in hints[n])
        tuples = tuple(n for n in names if "tuple" in hints[n])
        getter = operator.attrgetter(*names)
        plan = _RECORD_PLANS[cls] = (names, getter, nested, tuples)
    return plan


def _identity(value: Any) -> Any:
    return value


def _scope(value: Any) -> Scope:
    return value if isinstance(value, Scope) else Scope(**value)


def _actor(value: Any) -> Actor:
    return Actor(**value)


def _millis(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(milliseconds=1)  # exact, no float rounding
    return value


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "scope": _scope,
    "actor": _actor,
    "event_id": str,
    "occurred_at": _millis,
    "timestamp": _millis,
}
_FIELD_CONVERTERS: dict[type, dict[str, Callable[[Any], Any]]] = {}


def _converters(cls: type) -> dict[str, Callable[[Any], Any]]:
    """Per field of `cls` found in the log: how a decoded value becomes the field's value."""
    found = _FIELD_CONVERTERS.get(cls)
    if found is None:
        hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        found = _FIELD_CONVERTERS[cls] = {
            name: _CONVERTERS.get(name, _tuple if "tuple" in hints[name] else _identity)
            for name in _field_names(cls)
            if name not in _NOT_IN_LOG
        }
    return found


def from_record(event_type: str, record: dict[str, Any]) -> Event:
    cls = EVENT_TYPES[event_type]
    # fields this version does not know (written by a newer minor version) are dropped
    values = {
        name: convert(record[name]) for name, convert in _converters(cls).items() if name in record
    }
    return cls(**values)


def encode_event(event: Event, key: SubjectKey | None = None) -> bytes:
    """The Avro message; with `key`, the event's SEALED fields are encrypted under it."""
    record = to_record(event)
    name, placeholders = _sealing_plan(type(event))
    if key is not None and placeholders:
        secret = {field: record[field] for field in placeholders}
        record.update(placeholders)
        record["key_id"] = key.key_id
        record["sealed"] = crypto.seal(key, event.event_id, json.dumps(secret).encode())
    else:
        record["key_id"] = None
    return AvroCodec.encode_with(codec().registry.current[name], record)


_SEALING_PLANS: dict[type, tuple[str, dict[str, Any]]] = {}


def _sealing_plan(cls: type[Event]) -> tuple[str, dict[str, Any]]:
    """Per event class, once: its record name and what its SEALED fields hold in a sealed
    message (None where the schema allows it, else the placeholder; the empty list is
    shared by every record, as `_PLACEHOLDER`'s always was: nothing writes to it)."""
    plan = _SEALING_PLANS.get(cls)
    if plan is None:
        may_be_none = cls.event_type in _MAY_BE_NONE
        placeholders = {f: None if may_be_none else _PLACEHOLDER[f] for f in cls.SEALED}
        plan = _SEALING_PLANS[cls] = (f"memstream.{cls.event_type}", placeholders)
    return plan


def decode_event(data: bytes, keys: KeyLookup | None = None) -> Event:
    """The event; a sealed one is opened with `keys`. Without the key (destroyed, or no
    `keys` given) the event comes back with `erased=True` and placeholders."""
    name, record, erased = decode_record(data, keys)
    return event_of(name, record, erased)


def decode_record(
    data: bytes, keys: KeyLookup | None = None, memo: dict[tuple[Any, ...], Any] | None = None
) -> tuple[str, dict[str, Any], bool]:
    """The first half of `decode_event`: (record name, the Avro record with its sealed
    fields opened, erased). The projector's column-wise path (projector/columnar.py) reads
    runs of new memories from these records without building an `Event` for each.
    `memo`: the keys already looked up for this batch, by (scope values, key_id) -- a
    batch's events share few subjects, and building each one's Scope and Subject to look
    its key up again cost ~5 us an event."""
    name, record = codec().decode(data, logical=False)
    sealed = record.pop("sealed", None)
    erased = False
    if sealed is not None:
        raw = record["scope"]
        if memo is not None and isinstance(raw, dict):
            found = (*raw.items(), record["key_id"])
            key = memo.get(found, _UNSEEN)
            if key is _UNSEEN:
                subject = Subject.of_scope(Scope(**raw))
                key = keys(subject, record["key_id"]) if keys is not None and subject else None
                memo[found] = key
        else:
            scope = record["scope"] = Scope(**record["scope"])
            subject = Subject.of_scope(scope)
            key = keys(subject, record["key_id"]) if keys is not None and subject else None
        if key is None:
            erased = True
        else:
            record.update(json.loads(crypto.unseal(key, str(record["event_id"]), sealed)))
    return name, record, erased


def event_of(name: str, record: dict[str, Any], erased: bool) -> Event:
    """The second half of `decode_event`: the `Event` of a `decode_record` result."""
    event = from_record(name.removeprefix("memstream."), record)
    return dataclasses.replace(event, erased=True) if erased else event


def subject_of(event: Event) -> Subject | None:
    return Subject.of_scope(event.scope)


def message_of(event: Event, key: SubjectKey | None = None) -> tuple[bytes, bytes]:
    """The (key, value) log message: keyed by scope so each scope's events stay in order."""
    return event.scope.key(), encode_event(event, key)
