"""What a generation's tables hold, as 64-bit digests: a batch reads a table only for keys
it may hold.

Applying a batch needs the rows its events touch (by memory id, and by (scope, text hash)
for the duplicate check) and the decisions already recorded for its events (crash
re-application follows them). Asking LanceDB for them costs a scan per table per batch
(~10 ms each at 20k rows, growing with the table), and for a batch of new memories every
answer is "nothing". A `TableIndex` answers "certainly nothing" from memory, so the table
is read only for the keys it may hold.

Digests may collide (the index then says "maybe" and the table is read: still exact), and
deleted rows stay in the index (the same). What the index must never do is miss a key the
table holds; so it is trusted only while the tables are at the versions this process left
them at (`Projector._index_for` checks), i.e. nobody else has written in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from memstream.events import MemoryAdded

T = TypeVar("T")

KEY_COLUMNS = ("org_id", "project_id", "user_id", "agent_id", "app_id", "run_id", "hash")


def event_key(event: MemoryAdded) -> tuple[str | None, ...]:
    """(scope, text hash) of an add, as the plain tuple `row_key` makes of a row."""
    s = event.scope
    return (s.org_id, s.project_id, s.user_id, s.agent_id, s.app_id, s.run_id, event.hash)


def row_key(r: dict[str, Any]) -> tuple[str | None, ...]:
    return tuple(r[column] for column in KEY_COLUMNS)


class DigestSet:
    """A set of keys kept as 64-bit digests (Python's `hash`, stable within one process):
    8 bytes a key in sorted numpy runs, merged like a binary counter. `known` may answer
    yes for a key never added (a digest collision), never no for one that was."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add(self, keys: Sequence[Any]) -> None:
        if not keys:
            return
        run = np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))
        run.sort()
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-1]) >= len(self._runs[-2]):
            last = self._runs.pop()
            merged = np.concatenate((self._runs.pop(), last))
            merged.sort()
            self._runs.append(merged)

    def _hits(self, keys: Sequence[Any]) -> np.ndarray:
        digests = np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))
        hit = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, digests), len(run) - 1)
            hit |= run[at] == digests
        return hit

    def known(self, keys: Sequence[str]) -> list[str]:
        """The keys that may have been added (every one that was, rarely one more)."""
        if not keys or not self._runs:
            return []
        return [k for k, h in zip(keys, self._hits(keys), strict=True) if h]

    def known_of(self, items: Sequence[T], key: Callable[[T], Any]) -> list[T]:
        if not items or not self._runs:
            return []
        hits = self._hits([key(i) for i in items])
        return [i for i, h in zip(items, hits, strict=True) if h]


class TableIndex:
    """The memory ids, (scope, text hash) keys and event_ids a generation's tables hold
    (~24 bytes an event instead of the rows themselves), and the embedding cache's keys."""

    def __init__(self) -> None:
        self.ids = DigestSet()
        self.keys = DigestSet()
        self.events = DigestSet()
        self.cached = DigestSet()

    def record(self, event_ids: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        """A batch was written: its audit rows' event ids and its upserted memory rows."""
        self.events.add(event_ids)
        self.ids.add([r["id"] for r in rows])
        self.keys.add([row_key(r) for r in rows])

    @classmethod
    def scan(
        cls, memories: Any, events: Any, cache: Any = None, chunk: int = 100_000
    ) -> TableIndex:
        """Read the keys of every row of the LanceDB tables (any may be None)."""
        index = cls()
        if cache is not None:
            for batch in _batches(cache, ["key"], chunk):
                index.cached.add(batch.column("key").to_pylist())
        if memories is not None:
            for batch in _batches(memories, ["id", *KEY_COLUMNS], chunk):
                cols = [batch.column(name).to_pylist() for name in ("id", *KEY_COLUMNS)]
                index.ids.add(cols[0])
                index.keys.add(list(zip(*cols[1:], strict=True)))
        if events is not None:
            for batch in _batches(events, ["event_id"], chunk):
                index.events.add(batch.column("event_id").to_pylist())
        return index


def _batches(table: Any, columns: list[str], chunk: int) -> Iterable[Any]:
    """The table's rows, `columns` only, in record batches of at most `chunk` rows."""
    reader = table.to_lance().scanner(columns=columns, batch_size=chunk).to_reader()
    yield from reader
