"""The decisions (audit rows) of recently applied events, kept in memory so a writer
waiting on its events need not read them back from the events table; and what earlier
batches settled, for a batch that settles async adds (`load_settled`)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Container, Sequence
from typing import Any

from memstream.events import (
    Event,
    InferenceDecided,
    InferenceFailed,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
)
from memstream.keystore.base import Subject
from memstream.log.base import Position
from memstream.projector.apply import BatchState, scope_of_row
from memstream.projector.store import Generation
from memstream.scope import ENTITY_FIELDS, Scope
from memstream.sqlutil import sql_in, sql_str

RECENT_DECISIONS = 100_000  # audit rows kept in memory for writers waiting on them


class RecentDecisions:
    """Audit rows by event id, oldest dropped first; written by the apply thread, read on
    the event loop."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()  # written by the apply thread, read on the loop

    def get(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._recent_lock:
            return {i: row for i in event_ids if (row := self._recent.get(i)) is not None}

    def record(self, audits: list[dict[str, Any]]) -> None:
        with self._recent_lock:
            for row in audits:
                self._recent[row["event_id"]] = row
            while len(self._recent) > RECENT_DECISIONS:
                self._recent.popitem(last=False)

    def forget(self, subject: Subject) -> None:
        with self._recent_lock:
            for event_id in [
                i
                for i, row in self._recent.items()
                if Subject.of_scope(scope_of_row(row)) == subject
            ]:
                del self._recent[event_id]


def load_settled(
    gen: Generation,
    state: BatchState,
    events: list[tuple[Event, Position]],
    applied: Container[str] = (),
) -> None:
    """Put into `state` what earlier batches settled that this batch's events depend on:
    the first settling event of each pending MessagesRecorded one of its decisions or
    failures names (read per scope, whose events share a partition and an index), and
    which of the decisions its inferred memory events name were DUPLICATEs. Nothing is
    read when the messages or the decision are in this batch (the common case: a sync
    add appends them together, and a settling event always follows its messages), nor
    when they are among `applied`: the events of a fresh tier's earlier batches, decided
    into this same `state` (projector/tier.py), so what settled them is in it already and
    the tables below the tier cannot hold a settling event that follows them."""
    here = {e.event_id for e, _ in events}
    here.update(
        e.messages_event_id
        for e, _ in events
        if isinstance(e, InferenceFailed | InferenceDecided) and e.messages_event_id in applied
    )
    here.update(
        e.decision_id
        for e, _ in events
        if isinstance(e, MemoryAdded | MemoryUpdated | MemoryDeleted)
        and e.decision_id is not None
        and e.decision_id in applied
    )
    wanted: dict[Scope, set[str]] = defaultdict(set)
    for e, _ in events:
        if not isinstance(e, InferenceFailed | InferenceDecided) or e.messages_event_id in here:
            continue
        if isinstance(e, InferenceFailed) or e.settles:
            wanted[e.scope].add(e.messages_event_id)
    for scope, ids in wanted.items():
        rows = gen.query_events(
            f"{scope_where(scope)} AND event_type IN ('InferenceDecided', 'InferenceFailed') "
            "AND outcome IN ('DECIDED', 'FAILED')"
        )
        for row in rows:
            try:
                payload = json.loads(row["payload"] or "{}")
            except ValueError:
                continue
            mid = payload.get("messages_event_id") if isinstance(payload, dict) else None
            if mid not in ids or not (
                row["event_type"] == "InferenceFailed" or payload.get("settles")
            ):
                continue
            at = (row["partition"], row["offset"])
            known = state.settled.get(mid)
            if known is None or at < known[0]:
                state.settled[mid] = (at, row["event_id"])
    named = {
        e.decision_id
        for e, _ in events
        if isinstance(e, MemoryAdded | MemoryUpdated | MemoryDeleted)
        and e.decision_id is not None
        and e.decision_id not in here
    }
    if named:
        rows = gen.query_events(f"{sql_in('event_id', sorted(named))} AND outcome = 'DUPLICATE'")
        state.duplicates.update(row["event_id"] for row in rows)


def scope_where(scope: Scope) -> str:
    """Exactly the scope's rows (its entity ids are indexed in the events table)."""
    parts = [f"org_id = {sql_str(scope.org_id)}", f"project_id = {sql_str(scope.project_id)}"]
    for name in ENTITY_FIELDS:
        value = getattr(scope, name)
        parts.append(f"{name} = {sql_str(value)}" if value is not None else f"{name} IS NULL")
    return " AND ".join(parts)
