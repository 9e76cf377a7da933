"""Keep each scope's memories side by side in the memories table (issue 16, section 1).

Why: a scoped read fetches one user's rows by the `user_id` index and then reads their
columns. Where the rows lie decides its cost: written in arrival order (many users at
once), a user's 200 rows are scattered over the table and every column costs ~200 random
reads; written user by user, they share a few pages. Measured on raw Lance at 200k rows
(`bench/search_plans.py --interleave`, same run, load 4-5): the scope's rows with the
columns a search reads took 19.7 ms scattered against 7.4 ms side by side, and LanceDB's
own best plan 11 ms against 7.5 (bench/README.md, "Round 6").

So the rows are ordered by scope (`SORT_KEY`: tenancy, then the entities, user first,
the most common lead) wherever a whole table or a batch of new rows is written at once:
- `rewrite_sorted`: a rebuilt generation (replay, reinfer candidates) is rewritten in
  scope order before its indexes are built, while nobody reads it yet;
- `sort_rows`: each batch of new memories (a projector batch, a fresh-tier flush) is
  appended in scope order, so a scope's rows written together stay together through
  compaction, which concatenates fragments in order.

Row order carries no meaning anywhere else: every read orders its answer itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SORT_KEY = ("org_id", "project_id", "user_id", "agent_id", "run_id", "app_id", "id")
"""Scope first (user before agent: a user's rows are what most reads lead with), then id."""

CHUNK_ROWS = 50_000
"""Rows written at a time by `rewrite_sorted`."""


def enabled() -> bool:
    """MEMSTREAM_CLUSTER=0 leaves rows in arrival order (a before/after for the bench)."""
    return os.environ.get("MEMSTREAM_CLUSTER", "1") != "0"


def _key(row: dict[str, Any]) -> tuple[tuple[bool, str], ...]:
    # None sorts last, as Arrow's sort does (null_placement="at_end")
    return tuple((row[c] is None, row[c] or "") for c in SORT_KEY)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory rows (dicts) in scope order (as they came when clustering is off)."""
    return sorted(rows, key=_key) if enabled() else rows


def sort_table(table: pa.Table) -> pa.Table:
    """Memory rows (Arrow) in scope order (by id when clustering is off)."""
    if not enabled():
        return table.sort_by("id")
    return table.take(
        pc.sort_indices(table, sort_keys=[(c, "ascending", "at_end") for c in SORT_KEY])
    )


def rewrite_sorted(table: Any, chunk_rows: int = CHUNK_ROWS) -> bool:
    """Rewrite `table` (a LanceDB table, or the lance facade) as a new version holding the
    same rows in scope order; False if it was empty or already in order. Indexes do not
    survive the rewrite: the caller builds them afterwards (`Generation.ensure_indexes`).
    Only for a table nobody writes meanwhile (the projector's lock, an unpromoted
    generation): rows written by others during the rewrite would be lost.

    The order is computed from the key columns alone; the rows are then fetched by
    position a chunk at a time (each chunk's positions in file order, which Lance reads
    best) and put in scope order in memory, so memory stays bounded by a chunk whatever
    the table's size. Measured on a 1M-memory table of 384 dims (123 fragments, load ~7,
    same copy each time): 15.8 s and 1.8 GB peak RSS, against 37.2 s and 4.5 GB when the
    whole table was read and sorted in memory (its first `take` alone cost 4.4 s and 1.4 GB:
    the table's many chunks gathered); at 100k the two were even (1.7-2.3 s)."""
    import lance

    if table is None or not enabled():
        return False
    ds = table.to_lance()
    if ds.count_rows() == 0:
        return False
    schema = ds.schema
    keys = ds.to_table(columns=list(SORT_KEY))
    order = pc.sort_indices(keys, sort_keys=[(c, "ascending", "at_end") for c in SORT_KEY])
    del keys
    if pc.all(pc.equal(order, pa.array(range(len(order)), pa.uint64()))).as_py():
        return False

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(order), chunk_rows):
            wanted = order[start : start + chunk_rows].to_numpy()
            positions = np.sort(wanted)
            fetched = ds.take(positions, columns=schema.names)
            yield from fetched.take(np.searchsorted(positions, wanted)).cast(schema).to_batches()

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    lance.write_dataset(
        reader,
        ds.uri,
        schema=schema,
        mode="overwrite",
        data_storage_version=ds.data_storage_version,
    )
    return True
