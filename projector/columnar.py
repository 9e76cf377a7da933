"""Column-wise application of new memories: a batch's MemoryAdded events that can only be
ADDs of new rows go straight from their decoded Avro records into Arrow columns.

Most of a replay or a bulk catch-up is memories being added for the first time. The
per-event path builds an `Event` dataclass, a `BatchState` row, an audit dict and then an
Arrow row from the dicts for each of them (~60 us an event in CPython); here those events
become one list per column, and their memory rows are appended (`table.add`), never merged.

An add takes this path only when its outcome is certainly `ADD` of a row the table does not
hold, whatever else the batch holds -- the same conditions `apply_event` would find:
- it opened (not erased), is no inferred add (no decision_id), and is plausible (the exact
  checks of poison.impossible: anything else goes the per-event way, which names the reason);
- no other event of the batch shares its event_id, memory_id, or its (scope, text hash)
  (nor the hash any update of the batch writes), and the batch erases no subject;
- the generation's `TableIndex` says the tables hold none of its event_id, memory_id or
  (scope, hash) (a digest collision only sends it the per-event way).
Such an add changes no row another event of the batch reads, and no other event changes what
it decides, so applying it apart from the others, in any order, leaves the tables exactly as
the per-event path does. The audit rows keep log order; new memory rows are written sorted
by id together with the per-event path's new rows, as `write_rows` writes them.

MEMSTREAM_PROJECT_PER_EVENT=1 turns this off (every event the per-event way), and with it
the bulk catch-up mode (`Projector.catch_up`: large batches past the fresh tier): the
projector then works as it did before both, e.g. to compare the two.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from memstream.events import Event, MemoryAdded, MemoryUpdated, SubjectErased, event_of
from memstream.log.base import Position
from memstream.projector.index import TableIndex, event_key
from memstream.projector.tables import EVENTS_SCHEMA, memories_schema
from memstream.scope import Scope

PER_EVENT_ENV = "MEMSTREAM_PROJECT_PER_EVENT"
ADDED = "memstream.MemoryAdded"
# the fields of a MemoryAdded record a new row is made of (a record resolved from an older
# writer schema that lacks one goes the per-event way, where the dataclass default applies)
_NEEDED = frozenset(
    ("event_id", "occurred_at", "scope", "memory_id", "actor", "request_id", "text",
     "metadata", "categories", "expiration_date", "immutable", "hash", "decision_id",
     "key_id")
)  # fmt: skip

Raw = dict[str, Any]  # an opened MemoryAdded record that may take the column-wise path


def enabled() -> bool:
    """Whether the column-wise path is on (the default); MEMSTREAM_PROJECT_PER_EVENT=1
    forces the per-event path, e.g. to compare the two."""
    return os.environ.get(PER_EVENT_ENV, "").strip().lower() in ("", "0", "false", "no")


def scope_values(scope: Scope | dict[str, Any]) -> tuple[Any, ...]:
    """(org, project, user, agent, app, run) of a record's scope (a dict; a `Scope` once
    `decode_record` opened a sealed record)."""
    if isinstance(scope, Scope):
        return (scope.org_id, scope.project_id, scope.user_id, scope.agent_id, scope.app_id,
                scope.run_id)  # fmt: skip
    get = scope.get
    return (scope["org_id"], scope["project_id"], get("user_id"), get("agent_id"),
            get("app_id"), get("run_id"))  # fmt: skip


def plausible_add(record: dict[str, Any]) -> bool:
    """Whether an opened MemoryAdded record is one `poison.impossible` accepts and the
    column-wise path can read (every field present, no decision_id). False sends it the
    per-event way, which decides (and names a poison record's reason) as before."""
    if not record.keys() >= _NEEDED or record["decision_id"] is not None:
        return False
    scope = record["scope"]
    org, project = (
        (scope.org_id, scope.project_id)
        if isinstance(scope, Scope)
        else (scope.get("org_id"), scope.get("project_id"))
    )
    if not org or not project or not str(record["event_id"]):
        return False
    occurred = record["occurred_at"]
    if not isinstance(occurred, int) or occurred < 0:
        return False
    if not record["memory_id"] or not record["text"] or not record["hash"]:
        return False
    if not isinstance(record["text"], str) or not isinstance(record["categories"], list):
        return False
    try:
        metadata = json.loads(record["metadata"])
    except (ValueError, TypeError):
        return False
    return isinstance(metadata, dict)


@dataclass
class NewMemories:
    """The column-wise adds of one batch: their records, positions and batch indexes."""

    records: list[Raw] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    at: list[int] = field(default_factory=list)  # index of each in the batch (log order)
    keys: list[tuple[Any, ...]] = field(default_factory=list)  # (scope..., hash) as row_key

    def __len__(self) -> int:
        return len(self.records)

    def event_ids(self) -> list[str]:
        return [str(r["event_id"]) for r in self.records]

    def ids(self) -> list[str]:
        return [r["memory_id"] for r in self.records]

    def texts(self) -> list[str]:
        return [r["text"] for r in self.records]


def split(
    items: Sequence[tuple[Position, Event | Raw]], index: TableIndex
) -> tuple[list[tuple[Event, Position]], list[int], NewMemories]:
    """Which of a batch's opened items take the column-wise path (see the module's rules).

    Returns the others as events in log order with their batch indexes, and the new
    memories. A raw record not taken becomes its `Event` here."""
    fast: list[bool] = [False] * len(items)
    raw_at = [i for i, (_, x) in enumerate(items) if isinstance(x, dict)]
    erases = any(isinstance(x, SubjectErased) for _, x in items)
    if raw_at and not erases:
        eids: Counter[str] = Counter()
        mids: Counter[str] = Counter()
        keys: Counter[tuple[Any, ...]] = Counter()
        touched: set[str] = set()
        update_hashes: set[str] = set()
        raw_keys: dict[int, tuple[Any, ...]] = {}
        for i, (_, x) in enumerate(items):
            if isinstance(x, dict):
                eids[str(x["event_id"])] += 1
                mids[x["memory_id"]] += 1
                key = raw_keys[i] = (*scope_values(x["scope"]), x["hash"])
                keys[key] += 1
                continue
            eids[x.event_id] += 1
            if isinstance(x, MemoryAdded):
                if x.memory_id:
                    mids[x.memory_id] += 1
                keys[event_key(x)] += 1
            elif x.memory_id:
                touched.add(x.memory_id)
            if isinstance(x, MemoryUpdated) and x.hash:
                update_hashes.add(x.hash)
        chosen: list[tuple[int, Raw]] = []
        for i in raw_at:
            rec = items[i][1]
            assert isinstance(rec, dict)
            mid, key = rec["memory_id"], raw_keys[i]
            if (
                eids[str(rec["event_id"])] == 1
                and mids[mid] == 1
                and keys[key] == 1
                and mid not in touched
                and key[-1] not in update_hashes
            ):
                chosen.append((i, rec))
        # what the tables may hold (a digest collision says "maybe": per-event then)
        held = {i for i, _ in index.ids.known_of(chosen, lambda c: c[1]["memory_id"])}
        held.update(i for i, _ in index.events.known_of(chosen, lambda c: str(c[1]["event_id"])))
        held.update(i for i, _ in index.keys.known_of(chosen, lambda c: raw_keys[c[0]]))
        for i, _ in chosen:
            fast[i] = i not in held
    events: list[tuple[Event, Position]] = []
    slow_at: list[int] = []
    new = NewMemories()
    for i, (pos, x) in enumerate(items):
        if fast[i]:
            assert isinstance(x, dict)
            new.records.append(x)
            new.positions.append(pos)
            new.at.append(i)
            new.keys.append((*scope_values(x["scope"]), x["hash"]))
        else:
            event = event_of(ADDED, x, False) if isinstance(x, dict) else x
            events.append((event, pos))
            slow_at.append(i)
    return events, slow_at, new


_PLAIN = re.compile(r"[0-9A-Za-z:.+\- _]*")
"""Characters json.dumps writes as they are (no quote, backslash, control or non-ASCII)."""


def add_payload(expiration_date: Any, immutable: Any, digest: Any) -> str:
    """json.dumps({"expiration_date": .., "immutable": .., "hash": ..}), byte for byte, for
    the common values without the encoder (~13 us a record under load, 10% of a replay's
    apply: tests/unit/test_columnar_payload.py holds the two equal)."""
    if (
        type(immutable) is bool
        and type(digest) is str
        and _PLAIN.fullmatch(digest)
        and (
            expiration_date is None
            or (type(expiration_date) is str and _PLAIN.fullmatch(expiration_date))
        )
    ):
        exp = "null" if expiration_date is None else f'"{expiration_date}"'
        flag = "true" if immutable else "false"
        return f'{{"expiration_date": {exp}, "immutable": {flag}, "hash": "{digest}"}}'
    return json.dumps({"expiration_date": expiration_date, "immutable": immutable, "hash": digest})


def audit_table(new: NewMemories) -> pa.Table:
    """The events-table rows of the new memories: what `apply_event` writes for an ADD."""
    recs, pos = new.records, new.positions
    scopes = [scope_values(r["scope"]) for r in recs]
    actors = [_actor(r["actor"]) for r in recs]
    n = len(recs)
    columns: dict[str, list[Any]] = {
        "partition": [p.partition for p in pos],
        "offset": [p.offset for p in pos],
        "event_id": new.event_ids(),
        "event_type": ["MemoryAdded"] * n,
        "occurred_at": [r["occurred_at"] for r in recs],
        "org_id": [s[0] for s in scopes],
        "project_id": [s[1] for s in scopes],
        "memory_id": new.ids(),
        "user_id": [s[2] for s in scopes],
        "agent_id": [s[3] for s in scopes],
        "app_id": [s[4] for s in scopes],
        "run_id": [s[5] for s in scopes],
        "actor_key_id": [a[0] for a in actors],
        "actor_source": [a[1] for a in actors],
        "request_id": [r["request_id"] for r in recs],
        "text": new.texts(),
        "old_text": [None] * n,
        "metadata": [r["metadata"] for r in recs],
        "old_metadata": [None] * n,
        "categories": [r["categories"] for r in recs],
        "reason": [None] * n,
        "outcome": ["ADD"] * n,
        "resolved_memory_id": [None] * n,
        "payload": [add_payload(r["expiration_date"], r["immutable"], r["hash"]) for r in recs],
        "key_id": [r["key_id"] for r in recs],
    }
    return pa.Table.from_arrays(
        [pa.array(columns[f.name], type=f.type) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA
    )


def memory_table(new: NewMemories, vectors: np.ndarray, dim: int) -> pa.Table:
    """The new memories' rows (what `_apply_added` makes), `vectors` in their order."""
    schema = memories_schema(dim)
    recs, pos = new.records, new.positions
    scopes = [scope_values(r["scope"]) for r in recs]
    n = len(recs)
    occurred = [r["occurred_at"] for r in recs]
    offsets = [p.offset for p in pos]
    columns: dict[str, list[Any]] = {
        "id": new.ids(),
        "org_id": [s[0] for s in scopes],
        "project_id": [s[1] for s in scopes],
        "user_id": [s[2] for s in scopes],
        "agent_id": [s[3] for s in scopes],
        "app_id": [s[4] for s in scopes],
        "run_id": [s[5] for s in scopes],
        "text": new.texts(),
        "hash": [r["hash"] for r in recs],
        "metadata": [r["metadata"] for r in recs],
        "categories": [r["categories"] for r in recs],
        "created_at": occurred,
        "updated_at": occurred,
        "expiration_date": [r["expiration_date"] for r in recs],
        "immutable": [r["immutable"] for r in recs],
        "expired_at": [None] * n,
        "partition": [p.partition for p in pos],
        "created_offset": offsets,
        "last_offset": offsets,
        "key_id": [r["key_id"] for r in recs],
    }
    matrix = np.asarray(vectors, dtype=np.float32).reshape(-1)
    vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix), dim)
    arrays = [
        vector if f.name == "vector" else pa.array(columns[f.name], type=f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _actor(actor: Any) -> tuple[Any, Any]:
    if isinstance(actor, dict):
        return actor.get("key_id"), actor.get("source")
    return actor.key_id, actor.source


def in_log_order(tables: list[tuple[pa.Table, list[int]]]) -> pa.Table:
    """Audit rows of several parts of a batch (each with the batch index of each row) as
    one table in log order."""
    parts = [(t, at) for t, at in tables if t.num_rows]
    if len(parts) == 1:
        return parts[0][0]
    table = pa.concat_tables([t for t, _ in parts])
    order = np.argsort(np.concatenate([np.asarray(at, dtype=np.int64) for _, at in parts]),
                       kind="stable")  # fmt: skip
    return table.take(pa.array(order))
