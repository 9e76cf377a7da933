"""Pure state transitions: how each event changes the live set, decided in log order.

No I/O here (the eventsourcing 'policy' style): `BatchState` holds the rows a batch touches,
`apply_event` mutates it and returns the event's audit row. Idempotence comes from positions:
a row remembers the offset that created it and the last offset applied to it, so replaying a
batch after a crash changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from memstream.events import (
    DeleteAllRequested,
    Event,
    FeedbackGiven,
    InferenceDecided,
    InferenceFailed,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    MessagesRecorded,
    ProjectSettingsUpdated,
    RetentionPolicyRemoved,
    RetentionPolicySet,
    SubjectErased,
)
from memstream.keystore.base import Subject
from memstream.log.base import Position
from memstream.scope import Scope

ERASED_PAYLOAD = json.dumps({"erased": True})  # the details of an audit row whose subject is gone


def scope_of_row(row: dict[str, Any]) -> Scope:
    return Scope(
        row["org_id"],
        row["project_id"],
        row["user_id"],
        row["agent_id"],
        row["app_id"],
        row["run_id"],
    )


@dataclass
class BatchState:
    """The rows touched by one batch: id -> row (None = absent), and the live hash index."""

    rows: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    # several live rows can share a text (an update may make two equal), so a set per key
    by_hash: dict[tuple[Scope, str], set[str]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    needs_vector: set[str] = field(default_factory=set)
    # retention rules set (row) or removed (None) by this batch, by policies-table key
    policies: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    # subjects erased by this batch: the tables are scrubbed after the batch is written
    erasures: list[SubjectErased] = field(default_factory=list)
    # ids read from the projection: every other row this batch writes is new to the table
    loaded: set[str] = field(default_factory=set)
    # async adds (docs/inference.md): pending messages event id -> (position, id) of the
    # first event settling it; and the decisions recorded as DUPLICATE (a later one)
    settled: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)

    def load(self, row: dict[str, Any]) -> None:
        """Take in a row read from the table, unless this state holds the id already (a
        fresh tier's row is newer than the table's: projector/tier.py)."""
        if row["id"] in self.rows:
            return
        self.rows[row["id"]] = row
        self.loaded.add(row["id"])
        self.index(row)

    def index(self, row: dict[str, Any], scope: Scope | None = None) -> None:
        """Index a live row under (its scope, its text hash); `scope` if the caller has it."""
        key = (scope or Scope.of_row(row), row["hash"])
        self.by_hash.setdefault(key, set()).add(row["id"])

    def unindex(self, row: dict[str, Any]) -> None:
        self.by_hash.get((Scope.of_row(row), row["hash"]), set()).discard(row["id"])

    def holder(self, scope: Scope, text_hash: str, before: Position) -> str | None:
        """The earliest live memory of `scope` with this text created before `before`."""
        candidates = [
            ((row["partition"], row["created_offset"]), mid)
            for mid in self.by_hash.get((scope, text_hash), ())
            if (row := self.rows.get(mid)) is not None
            and (row["partition"], row["created_offset"]) < (before.partition, before.offset)
        ]
        return min(candidates)[1] if candidates else None

    def upserts(self) -> list[dict[str, Any]]:
        """Rows to write: changed by this batch and still live."""
        return [row for mid in sorted(self.changed) if (row := self.rows[mid]) is not None]

    def deletes(self) -> list[str]:
        """Ids to delete: changed by this batch and now absent."""
        return [mid for mid in sorted(self.changed) if self.rows[mid] is None]

    def _remove(self, memory_id: str) -> dict[str, Any] | None:
        row = self.rows.get(memory_id)
        if row is not None:
            self.unindex(row)
        self.rows[memory_id] = None
        self.changed.add(memory_id)
        self.needs_vector.discard(memory_id)
        return row


def _audit(event: Event, position: Position, outcome: str, **extra: Any) -> dict[str, Any]:
    scope = event.scope
    row: dict[str, Any] = {
        "partition": position.partition,
        "offset": position.offset,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at,
        "org_id": scope.org_id,
        "project_id": scope.project_id,
        "memory_id": event.memory_id,
        "user_id": scope.user_id,
        "agent_id": scope.agent_id,
        "app_id": scope.app_id,
        "run_id": scope.run_id,
        "actor_key_id": event.actor.key_id,
        "actor_source": event.actor.source,
        "request_id": event.request_id,
        "text": None,
        "old_text": None,
        "metadata": None,
        "old_metadata": None,
        "categories": None,
        "reason": None,
        "outcome": outcome,
        "resolved_memory_id": None,
        "payload": "{}",
        "key_id": event.key_id,
    }
    row.update(extra)
    return row


def apply_event(
    state: BatchState, event: Event, position: Position, decided: str | None = None
) -> dict[str, Any]:
    """Apply one event to `state` and return its audit row for the `events` table.

    `decided` is the outcome already recorded for this event (the events table is written
    before the memories): after a crash, a batch is re-applied by following its recorded
    decisions, because re-deciding a duplicate against the post-batch state could differ.
    """
    if decided in ("NONE", "NOOP", "CONFLICT"):
        return _audit(event, position, decided)
    if event.erased:
        # sealed under a destroyed key: nothing of it can be shown, and nothing changes
        return _audit(event, position, "ERASED", reason="erased", payload=ERASED_PAYLOAD)
    if isinstance(event, SubjectErased):
        return _apply_erased(state, event, position)
    if isinstance(event, MemoryAdded | MemoryUpdated | MemoryDeleted) and (
        event.decision_id in state.duplicates
    ):
        # decided by a second settling of one async add: the first one's changes stand
        return _audit(
            event, position, "DUPLICATE", text=getattr(event, "text", None),
            payload=json.dumps({"decision_id": event.decision_id}),
        )  # fmt: skip
    if isinstance(event, MemoryAdded):
        return _apply_added(state, event, position, check_duplicate=decided is None)
    if isinstance(event, MemoryUpdated):
        return _apply_updated(state, event, position)
    if isinstance(event, MemoryDeleted):
        row = state.rows.get(event.memory_id or "")
        payload: dict[str, Any] = {"cause_event_id": event.cause_event_id}
        if event.decision_id is not None:
            payload.update(decision_id=event.decision_id, expected_offset=event.expected_offset)
        if row is None:
            outcome = "NOOP" if event.expected_offset is None else "CONFLICT"
            return _audit(
                event, position, outcome, reason=event.reason, payload=json.dumps(payload)
            )
        if _stale(row, event.expected_offset, position):
            return _audit(
                event, position, "CONFLICT", reason=event.reason, old_text=row["text"],
                payload=json.dumps({**payload, "found_offset": row["last_offset"]}),
            )  # fmt: skip
        state._remove(row["id"])
        return _audit(
            event,
            position,
            "DELETE",
            reason=event.reason,
            old_text=row["text"],
            old_metadata=row["metadata"],
            categories=list(row["categories"]),
            payload=json.dumps(payload),
        )
    if isinstance(event, MessagesRecorded):
        # the input of an inference; its text is scrubbed like every text on erasure (and
        # so is the payload, which holds a pending add's options: its metadata)
        if not event.pending:
            return _audit(event, position, "MESSAGES", text=event.messages)
        return _audit(
            event, position, "MESSAGES", text=event.messages,
            payload=json.dumps({
                "pending": True, "source_hash": event.source_hash,
                "options": _parsed(event.options),
            }),
        )  # fmt: skip
    if isinstance(event, InferenceDecided):
        first = _settled_before(state, event, position) if event.settles else None
        if first is not None:
            state.duplicates.add(event.event_id)
            return _audit(event, position, "DUPLICATE", payload=decision_payload(event, first))
        return _audit(event, position, "DECIDED", payload=decision_payload(event))
    if isinstance(event, InferenceFailed):
        first = _settled_before(state, event, position)
        return _audit(
            event, position, "FAILED" if first is None else "DUPLICATE",
            payload=json.dumps({
                "messages_event_id": event.messages_event_id, "model": event.model,
                "llm_host": event.llm_host, "reason": event.reason, "attempts": event.attempts,
                **({"duplicate_of": first} if first is not None else {}),
            }),
        )  # fmt: skip
    if isinstance(event, ProjectSettingsUpdated):
        return _audit(
            event,
            position,
            "SETTINGS",
            payload=json.dumps(
                {
                    "custom_instructions": event.custom_instructions,
                    "custom_categories": json.loads(event.custom_categories or "null"),
                    "fields_set": list(event.fields_set),
                }
            ),
        )
    if isinstance(event, MemoryExpired):
        return _apply_expired(state, event, position)
    if isinstance(event, RetentionPolicySet | RetentionPolicyRemoved):
        return _apply_policy(state, event, position)
    if isinstance(event, DeleteAllRequested):
        return _audit(
            event,
            position,
            "DELETE_ALL",
            payload=json.dumps(
                {
                    "filters": json.loads(event.filters),
                    "count": event.count,
                    "memory_ids": list(event.memory_ids),
                }
            ),
        )
    if isinstance(event, FeedbackGiven):
        return _audit(
            event,
            position,
            "FEEDBACK",
            payload=json.dumps(
                {"feedback": event.feedback, "feedback_reason": event.feedback_reason}
            ),
        )
    return _audit(event, position, "NOOP")


def _apply_added(
    state: BatchState, event: MemoryAdded, position: Position, *, check_duplicate: bool
) -> dict[str, Any]:
    assert event.memory_id is not None
    audit = dict(
        text=event.text,
        metadata=event.metadata,
        categories=list(event.categories),
        payload=json.dumps(
            {
                "expiration_date": event.expiration_date,
                "immutable": event.immutable,
                "hash": event.hash,
                **({"decision_id": event.decision_id} if event.decision_id else {}),
            }
        ),
    )
    existing = state.rows.get(event.memory_id)
    if existing is not None:
        # already applied (crash replay) or an id collision: either way nothing changes
        same = (
            existing["created_offset"] == position.offset
            and existing["partition"] == position.partition
        )
        return _audit(event, position, "ADD" if same else "NOOP", **audit)
    holder_id = state.holder(event.scope, event.hash, position) if check_duplicate else None
    if holder_id is not None:
        return _audit(event, position, "NONE", resolved_memory_id=holder_id, **audit)
    scope = event.scope
    row = {
        "id": event.memory_id,
        "org_id": scope.org_id,
        "project_id": scope.project_id,
        "user_id": scope.user_id,
        "agent_id": scope.agent_id,
        "app_id": scope.app_id,
        "run_id": scope.run_id,
        "text": event.text,
        "hash": event.hash,
        "metadata": event.metadata,
        "categories": list(event.categories),
        "created_at": event.occurred_at,
        "updated_at": event.occurred_at,
        "expiration_date": event.expiration_date,
        "immutable": event.immutable,
        "expired_at": None,
        "partition": position.partition,
        "created_offset": position.offset,
        "last_offset": position.offset,
        "key_id": event.key_id,
        "vector": None,
    }
    state.rows[event.memory_id] = row
    state.index(row, scope)
    state.changed.add(event.memory_id)
    state.needs_vector.add(event.memory_id)
    return _audit(event, position, "ADD", **audit)


def _apply_updated(state: BatchState, event: MemoryUpdated, position: Position) -> dict[str, Any]:
    row = state.rows.get(event.memory_id or "")
    audit: dict[str, Any] = dict(
        text=event.text,
        metadata=event.metadata,
        categories=list(event.categories) if event.categories is not None else None,
        payload=json.dumps(
            {
                "expiration_date": event.expiration_date,
                "set_expiration_date": event.set_expiration_date,
                "timestamp": event.timestamp,
                **(
                    {"decision_id": event.decision_id, "expected_offset": event.expected_offset}
                    if event.decision_id
                    else {}
                ),
            }
        ),
    )
    if row is None or row["immutable"]:
        outcome = "NOOP" if event.expected_offset is None else "CONFLICT"
        return _audit(event, position, outcome, **audit)
    if row["last_offset"] >= position.offset:
        return _audit(event, position, "UPDATE", **audit)  # applied before a crash
    if _stale(row, event.expected_offset, position):
        return _audit(event, position, "CONFLICT", old_text=row["text"], **audit)
    audit.update(old_text=row["text"], old_metadata=row["metadata"])
    new = dict(row)
    if event.text is not None and event.text != row["text"]:
        state.unindex(row)
        new["text"] = event.text
        new["hash"] = event.hash
        state.index(new)
        state.needs_vector.add(row["id"])
    if event.metadata is not None:
        new["metadata"] = event.metadata
    if event.categories is not None:
        new["categories"] = list(event.categories)
    if event.set_expiration_date:
        new["expiration_date"] = event.expiration_date
    if event.timestamp is not None:  # backdated: both timestamps, as the platform does
        new["created_at"] = new["updated_at"] = event.timestamp
    else:
        new["updated_at"] = event.occurred_at
    new["last_offset"] = position.offset
    new["key_id"] = event.key_id or row.get("key_id")
    state.rows[row["id"]] = new
    state.changed.add(row["id"])
    return _audit(event, position, "UPDATE", **audit)


def _stale(row: dict[str, Any], expected_offset: int | None, position: Position) -> bool:
    """An inferred UPDATE/DELETE decided on a version of the memory that is no longer the
    latest: something changed it between the LLM's read and this event (docs/inference.md)."""
    return expected_offset is not None and row["last_offset"] != expected_offset


def _settled_before(
    state: BatchState, event: InferenceDecided | InferenceFailed, position: Position
) -> str | None:
    """The event that settled `event`'s pending messages before it in log order, if one
    did (then `event` is a DUPLICATE); else `event` is the first, and is remembered.
    `state.settled` starts with what earlier batches settled (projector/decisions.py)."""
    here = (position.partition, position.offset)
    known = state.settled.get(event.messages_event_id)
    if known is not None and known[0] < here:
        return known[1]
    state.settled[event.messages_event_id] = (here, event.event_id)
    return None


def decision_payload(event: InferenceDecided, duplicate_of: str | None = None) -> str:
    """The audit row of a decision: who decided (model, endpoint, prompt) at what cost, and
    the structured output itself (scrubbed with the subject's other texts on erasure)."""
    output = _parsed(event.output)
    return json.dumps(
        {
            "messages_event_id": event.messages_event_id,
            "model": event.model,
            "llm_host": event.llm_host,
            "prompt_version": event.prompt_version,
            "prompt_hash": event.prompt_hash,
            "temperature": event.temperature,
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "latency_ms": event.latency_ms,
            "output": output,
            **({"settles": True} if event.settles else {}),
            **({"duplicate_of": duplicate_of} if duplicate_of is not None else {}),
        }
    )


def _parsed(text: str) -> Any:
    """JSON text as its value (as the text itself if it is not JSON: shown, never lost)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_expired(state: BatchState, event: MemoryExpired, position: Position) -> dict[str, Any]:
    """Expiry hides a memory from search and get_all; get(id) still returns it (as on the
    Mem0 platform), so the row stays, marked with when it expired."""
    row = state.rows.get(event.memory_id or "")
    payload = json.dumps({"policy_id": event.policy_id, "expiration_date": event.expiration_date})
    if row is None or row["expired_at"] is not None:
        return _audit(event, position, "NOOP", reason=event.reason, payload=payload)
    new = dict(row, expired_at=event.occurred_at, last_offset=position.offset)
    state.rows[row["id"]] = new
    state.changed.add(row["id"])
    return _audit(
        event, position, "EXPIRE", reason=event.reason, old_text=row["text"], payload=payload
    )


def policy_key(org_id: str, project_id: str, policy_id: str) -> str:
    return f"{org_id}/{project_id}/{policy_id}"


def _apply_policy(
    state: BatchState, event: RetentionPolicySet | RetentionPolicyRemoved, position: Position
) -> dict[str, Any]:
    key = policy_key(event.scope.org_id, event.scope.project_id, event.policy_id)
    if isinstance(event, RetentionPolicyRemoved):
        state.policies[key] = None
        return _audit(
            event, position, "POLICY_REMOVED", payload=json.dumps({"policy_id": event.policy_id})
        )
    row = {
        "key": key,
        "org_id": event.scope.org_id,
        "project_id": event.scope.project_id,
        "policy_id": event.policy_id,
        "field": event.field,
        "pattern": event.pattern,
        "ttl_seconds": event.ttl_seconds,
        "created_at": event.occurred_at,
    }
    state.policies[key] = row
    return _audit(
        event,
        position,
        "POLICY_SET",
        payload=json.dumps({k: row[k] for k in ("policy_id", "field", "pattern", "ttl_seconds")}),
    )


def erased_row(row: dict[str, Any], event: SubjectErased) -> bool:
    """Whether a memory row is one the erasure covers: the subject's, and sealed under a
    destroyed key or written in plaintext before the erasure (a key made after it is new)."""
    if Subject.of_scope(scope_of_row(row)) != event.subject():
        return False
    key = row.get("key_id")
    return key in event.key_ids or (key is None and row["created_at"] <= event.occurred_at)


def _apply_erased(state: BatchState, event: SubjectErased, position: Position) -> dict[str, Any]:
    """Drop the subject's rows this batch holds; the tables are scrubbed after the batch."""
    gone = [mid for mid, row in state.rows.items() if row is not None and erased_row(row, event)]
    for mid in gone:
        state._remove(mid)
    state.erasures.append(event)
    return _audit(
        event,
        position,
        "ERASE_SUBJECT",
        reason=event.reason,
        payload=json.dumps({"subject_field": event.subject_field, "key_ids": list(event.key_ids)}),
    )
