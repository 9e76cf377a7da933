"""The fresh tier: events applied but not written to LanceDB yet (issue 16, section 6).

Why: every LanceDB write pays a fixed cost (a fragment per table, a new version, the
checkpoint file): ~20-40 ms a batch whatever its size, so one writer waiting for its own
add paid it on every add. Here, as in an LSM tree's memtable, a live batch of memory
events (add, update, delete) and inference events (an inferred add's messages, its
decision or failure, and the memory events naming the decision) is decided into an
in-memory `BatchState` that spans many batches, and the tables are written once per
`rows` events or `age_s` seconds (`flush`), in one large batch. A waiting writer is
released once its event is in the tier.

What stays true:
- Durability is the log's: the tier is derived state. The generation's checkpoint is the
  last FLUSHED position, so a process that dies with a non-empty tier re-applies those
  events from the log at its next start; nothing is lost.
- Readers of this process see tables + tier (query/tiered.py): every memory the tier
  changed hides its table row, its current row (or its absence) taking the row's place;
  the merge is exact because the tier's rows are the fold of the same log over the
  tables the tier was built on.
- Readers of other processes read the tables: they see the tier's events once it is
  flushed, or by applying the log themselves (a CLI command catches up before it reads,
  which moves the checkpoint; this process then rebuilds its tier on the new base, see
  `Projector._rebuild_tier`). The tier never holds the cross-process lock between batches
  (a frozen tier's background write holds it while it writes, as a synchronous flush did).
- Every reader of earlier events' audit rows in this process sees the tier's too
  (`TierView.audits`, merged by event id: query/tiered.py `events_where`): history and
  explanations (query/explain.py), an async add's settlement and the owed-add scan
  (producers/resume.py). The projector's own look back at what earlier batches settled
  (projector/decisions.py `load_settled`) needs no merge: `BatchState.settled` and
  `.duplicates` span the tier's batches, and a settling event follows its messages on
  their partition, so what the tier settled is in the state and what the tables settled is
  read from them. A flush or a rebuild starts a new state on tables that hold it all.
- Only memory and inference events are held (`holds`); a batch with anything else
  (erasure, expiry, policies, project settings, feedback, delete-all audit, poison) is
  applied together with the tier and flushed at once, so erasure scrubs, policies and
  audits of those events are in the tables exactly as before. An erasure's batch flushes
  the whole tier -- its sealed messages and decisions included -- and the scrub runs on the
  tables it was just written to, then the tier starts empty: no erased text stays in
  memory or on disk.

A due flush does not stop the stream (issue 16, section 4): as an LSM tree freezes its
memtable, the due tier is frozen (`freeze`: no batch is decided into it any more) and a new
tier is started on top of it (`below`), whose state starts as the frozen one's -- its rows,
its hash index, what it settled and found duplicate, the ids the tables will hold -- so the
new tier decides exactly as one tier spanning both would. The frozen tier is written to the
tables in the background while new batches are decided into the top one; readers see
tables + frozen + top through the top's view (which starts as the frozen tier's); once the
write is done (`landed`) the frozen layer is dropped and the top tier sits on the tables'
new checkpoint. Until then the tables' checkpoint is either the frozen tier's base or its
end (`sits_on`), and the projector holds the cross-process lock for the write's duration.

`TierView` is what a reader gets: an immutable snapshot, replaced (never mutated) after
each batch, so readers on worker threads need no lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from memstream.events import (
    Event,
    InferenceDecided,
    InferenceFailed,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
)
from memstream.log.base import LogRecord, Offsets
from memstream.projector.apply import BatchState
from memstream.projector.index import TableIndex

INDEXED = ("id", "run_id", "user_id", "agent_id", "app_id")
"""Columns a reader may look tier rows up by (query/scoped.py's lead columns)."""


@dataclass(frozen=True)
class TierView:
    """The tier as readers see it. `rows`: every memory id the tier changed -> its row (all
    projection columns and its `vector`) or None (deleted since the tier's base: the
    table's row, if any, is hidden). `audits`: the events-table rows of the tier's events.
    `by`: (column, value) -> ids of `rows` with that value (INDEXED columns), for scoped
    reads. `gen`: the generation (path) the view belongs to."""

    gen: Path | None = None
    rows: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    audits: tuple[dict[str, Any], ...] = ()
    by: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows) or bool(self.audits)

    def candidates(self, column: str | None, values: Iterable[str] | None) -> list[str]:
        """Ids of rows that may have `column` in `values` (all ids without a column)."""
        if column is None or values is None:
            return list(self.rows)
        out: dict[str, None] = {}
        for v in values:
            for mid in self.by.get((column, v), ()):
                out[mid] = None
        return list(out)


EMPTY = TierView()


HELD = (
    MemoryAdded,
    MemoryUpdated,
    MemoryDeleted,
    MessagesRecorded,
    InferenceDecided,
    InferenceFailed,
)
"""The events a batch may consist of and stay in the tier (module docstring)."""


def holds(events: Iterable[Event]) -> bool:
    """Whether a batch of these events may stay in the tier: memory and inference events
    only (everything else changes tables a read cannot merge, or must scrub them)."""
    return all(isinstance(e, HELD) for e in events)


class FreshTier:
    """The events applied since the last flush, on top of the tables at checkpoint `base`
    (or on top of a frozen tier `below` being written, whose end is `base`); `end` is the
    next position to apply. Used under the projector's write lock only."""

    def __init__(self, gen: Path, base: Offsets) -> None:
        self.gen = gen
        self.below: FreshTier | None = None  # the frozen tier being written (see `freeze`)
        self.inherited = 0  # leading audit rows of `view` that are `below`'s
        self.base: Offsets = dict(base)
        self.end: Offsets = dict(base)
        self.state = BatchState()
        self.audits: list[dict[str, Any]] = []
        self.decided: dict[str, str] = {}  # event ids the events table already records
        self.eids: list[str] = []
        self.applied: set[str] = set()  # the same, to look up (see decisions.load_settled)
        self.started: float | None = None  # monotonic time of the first unflushed record
        self.view: TierView = TierView(gen)
        self.broken = False  # a flush failed half-way: rebuild from the log before use
        # the tables' versions when the tier's first batch read them, and the projector's
        # index of what they held then (see Projector._apply_into)
        self.tables_at: tuple[int | None, ...] | None = None
        self.index: TableIndex | None = None

    @property
    def pending(self) -> bool:
        """Whether the tier holds anything the tables' checkpoint does not cover (its own
        events, or a frozen tier's still being written beneath it)."""
        return self.end != self.base or self.below is not None

    def sits_on(self, disk: Offsets) -> bool:
        """Whether the tables' checkpoint `disk` is one this tier was decided on: its base,
        or, while the frozen tier beneath is written, that tier's base (not written yet)."""
        return disk == self.base or (self.below is not None and disk == self.below.base)

    def due(self, rows: int, age_s: float, now: float | None = None) -> bool:
        """Whether this tier's own events should be written (by count or age)."""
        if self.end == self.base:
            return False
        if len(self.eids) >= rows:
            return True
        now = time.monotonic() if now is None else now
        return self.started is not None and now - self.started >= age_s

    def absorb(
        self,
        records: list[LogRecord],
        events: list[Event],
        audits: list[dict[str, Any]],
        decided: Mapping[str, str],
    ) -> None:
        """Take a decided batch in (its state changes are already in `self.state`)."""
        if self.started is None:
            self.started = time.monotonic()
        self.audits.extend(audits)
        self.decided.update(decided)
        self.eids.extend(e.event_id for e in events)
        self.applied.update(e.event_id for e in events)
        for r in records:
            p = r.position.partition
            self.end[p] = max(self.end.get(p, 0), r.position.offset + 1)

    def freeze(self) -> FreshTier:
        """A new tier on top of this one, which is frozen from now on (and written in the
        background, see the module docstring). The new tier's state starts as this one's:
        rows (a row dict is never changed once made, so they are shared), the hash index,
        async adds settled and duplicate decisions, and as `loaded` every id this tier
        loaded or touched -- the tables hold those once this tier is written, so the new
        tier merges or deletes them there rather than appending. Its view starts as this
        one's: readers keep seeing the frozen rows until they are in the tables."""
        top = FreshTier(self.gen, self.end)
        top.below = self
        old = self.state
        state = top.state
        state.rows = dict(old.rows)
        state.by_hash = {key: set(ids) for key, ids in old.by_hash.items()}
        state.loaded = old.loaded | set(old.rows)
        state.settled = dict(old.settled)
        state.duplicates = set(old.duplicates)
        top.applied = set(self.applied)
        top.tables_at, top.index = self.tables_at, self.index
        top.view = self.view
        top.inherited = len(self.view.audits)
        return top

    def landed(self, tables_at: tuple[int | None, ...] | None) -> None:
        """The frozen tier beneath was written (the tables are at versions `tables_at`):
        drop it -- from the state everything this tier did not change itself, as an empty
        tier started on the new checkpoint would not hold it either (the tables do, and
        are read for it again), and from the view every row and audit row only it held."""
        self.below = None
        self.tables_at = tables_at
        state = self.state
        own = set(self.eids)
        state.rows = {mid: state.rows[mid] for mid in state.changed}
        state.by_hash = {}
        for row in state.rows.values():
            if row is not None:
                state.index(row)
        state.loaded &= set(state.rows)
        state.settled = {m: s for m, s in state.settled.items() if s[1] in own}
        state.duplicates &= own
        self.applied = own
        self.inherited = 0
        self.view = TierView(self.gen)  # and on it, what this tier holds of its own:
        self.publish(sorted(state.changed))

    def publish(self, ids: Iterable[str]) -> None:
        """Replace the readers' view with the tier as it is now, given the memory ids the
        last batch may have changed (copy-on-write: only those entries are written)."""
        old = self.view
        rows = dict(old.rows)
        by = dict(old.by)
        for mid in ids:
            if mid not in self.state.changed:
                continue
            row = self.state.rows[mid]
            if row is not None and rows.get(mid) is None:
                for col in INDEXED:
                    value = row[col]
                    if value is not None and mid not in by.get((col, value), ()):
                        by[(col, value)] = (*by.get((col, value), ()), mid)
            rows[mid] = row
        audits = old.audits + tuple(self.audits[len(old.audits) - self.inherited :])
        self.view = TierView(self.gen, MappingProxyType(rows), audits, MappingProxyType(by))
