"""Values that cross the edges (CLI, REST, Python API), shaped like the Mem0 Platform's.

Rows inside are plain dicts from Arrow; these dataclasses give them names and one
`to_api()` each, so every edge prints the same JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()
"""'Not given' for optional fields where None is a meaningful value (clear an expiration)."""


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


READ_MAX_DEPTH = 64
"""Deepest metadata a read serves (writes refuse past settings' max_metadata_depth, 32 by
default): deeper metadata stored before that limit existed is replaced by a note, so a read
answers 200 instead of failing in the JSON encoder."""


def servable_metadata(raw: str | None) -> dict[str, Any]:
    """Stored metadata JSON as served: an object, or a note when it cannot be served."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {"_memstream_unservable": "metadata is not valid JSON"}
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(v, dict):
            stack.extend((item, depth + 1) for item in v.values())
        elif isinstance(v, list):
            stack.extend((item, depth + 1) for item in v)
    if deepest > READ_MAX_DEPTH:
        return {
            "_memstream_unservable": f"metadata nested {deepest} levels deep (more than "
            f"{READ_MAX_DEPTH}), stored before write limits applied; the log keeps it"
        }
    return value if isinstance(value, dict) else {"_memstream_unservable": "not an object"}


@dataclass(frozen=True, slots=True)
class Tenant:
    """The org and project an API key (or the CLI's settings) speaks for."""

    org_id: str
    project_id: str


@dataclass(frozen=True, slots=True)
class MemoryView:
    id: str
    memory: str
    user_id: str | None
    agent_id: str | None
    app_id: str | None
    run_id: str | None
    hash: str
    metadata: dict[str, Any]
    categories: list[str]
    created_at: int
    updated_at: int
    expiration_date: str | None
    immutable: bool
    org_id: str
    project_id: str
    score: float | None = None
    expired_at: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], score: float | None = None) -> MemoryView:
        return cls(
            id=row["id"],
            memory=row["text"],
            user_id=row["user_id"],
            agent_id=row["agent_id"],
            app_id=row["app_id"],
            run_id=row["run_id"],
            hash=row["hash"],
            metadata=servable_metadata(row["metadata"]),
            categories=list(row["categories"] or []),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            expiration_date=row["expiration_date"],
            immutable=bool(row["immutable"]),
            org_id=row["org_id"],
            project_id=row["project_id"],
            score=score,
            expired_at=row.get("expired_at"),
        )

    def to_api(self) -> dict[str, Any]:
        """The Mem0 memory object; carries both run_id and session_id (the same value)."""
        out: dict[str, Any] = {
            "id": self.id,
            "memory": self.memory,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "app_id": self.app_id,
            "run_id": self.run_id,
            "session_id": self.run_id,
            "hash": self.hash,
            "metadata": self.metadata,
            "categories": self.categories,
            "created_at": iso_ms(self.created_at),
            "updated_at": iso_ms(self.updated_at),
            "expiration_date": self.expiration_date,
            "immutable": self.immutable,
        }
        if self.expired_at is not None:
            out["expired_at"] = iso_ms(self.expired_at)
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass(frozen=True, slots=True)
class Page:
    count: int
    page: int
    page_size: int
    results: list[MemoryView]

    @classmethod
    def of(cls, rows: list[dict[str, Any]], page: int, page_size: int) -> Page:
        """One page of `rows` (already in display order), with the total count."""
        start = (page - 1) * page_size
        return cls(
            count=len(rows),
            page=page,
            page_size=page_size,
            results=[MemoryView.from_row(r) for r in rows[start : start + page_size]],
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """One memory's outcome of a write: event ADD/UPDATE/DELETE/NONE (exact duplicate)."""

    id: str
    event: str
    memory: str | None = None
    event_id: str | None = None
    pending: bool = False
    previous_memory: str | None = None  # an UPDATE's text before it (inference)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "event": self.event}
        if self.memory is not None:
            out["memory"] = self.memory
            out["data"] = {"memory": self.memory}
        if self.previous_memory is not None:
            out["previous_memory"] = self.previous_memory
        if self.pending:
            out["status"] = "PENDING"
        return out


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: str  # event id
    memory_id: str
    event: str  # ADD | UPDATE | DELETE | NONE | NOOP
    event_type: str
    old_memory: str | None
    new_memory: str | None
    user_id: str | None
    agent_id: str | None
    app_id: str | None
    run_id: str | None
    metadata: dict[str, Any] | None
    old_metadata: dict[str, Any] | None
    categories: list[str] | None
    reason: str | None
    actor_key_id: str | None
    actor_source: str | None
    request_id: str | None
    position: tuple[int, int]
    created_at: int
    extra: dict[str, Any] = field(default_factory=dict)
    # when inference caused the event: the decision, model and messages (query/explain.py)
    inference: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], inference: dict[str, Any] | None = None) -> HistoryEntry:
        def js(v: str | None) -> dict[str, Any] | None:
            return servable_metadata(v) if v else None

        return cls(
            id=row["event_id"],
            memory_id=row["memory_id"],
            event=row["outcome"],
            event_type=row["event_type"],
            old_memory=row["old_text"],
            new_memory=row["text"],
            user_id=row["user_id"],
            agent_id=row["agent_id"],
            app_id=row["app_id"],
            run_id=row["run_id"],
            metadata=js(row["metadata"]),
            old_metadata=js(row["old_metadata"]),
            categories=row["categories"],
            reason=row["reason"],
            actor_key_id=row["actor_key_id"],
            actor_source=row["actor_source"],
            request_id=row["request_id"],
            position=(row["partition"], row["offset"]),
            created_at=row["occurred_at"],
            extra=js(row["payload"]) or {},
            inference=inference,
        )

    def to_api(self) -> dict[str, Any]:
        out = self._api()
        if self.event == "FEEDBACK":  # the rating itself, not only that there was one
            out["feedback"] = self.extra.get("feedback")
            out["feedback_reason"] = self.extra.get("feedback_reason")
        elif self.extra.get("timestamp") is not None:  # a backdating update
            out["timestamp"] = iso_ms(self.extra["timestamp"])
        return out

    def _api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "memory_id": self.memory_id,
            "event": self.event,
            "event_type": self.event_type,
            "old_memory": self.old_memory,
            "new_memory": self.new_memory,
            "user_id": self.user_id,
            "agent_id": self.agent_id,
            "app_id": self.app_id,
            "run_id": self.run_id,
            "session_id": self.run_id,
            "metadata": self.metadata,
            "old_metadata": self.old_metadata,
            "categories": self.categories,
            "reason": self.reason,
            "actor": {"key_id": self.actor_key_id, "source": self.actor_source},
            "request_id": self.request_id,
            "position": {"partition": self.position[0], "offset": self.position[1]},
            "created_at": iso_ms(self.created_at),
            "updated_at": iso_ms(self.created_at),
            **({"inference": self.inference} if self.inference is not None else {}),
        }
