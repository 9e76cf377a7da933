"""An IVF_PQ vector index on a large memories table, for the searches no indexed column
leads (issue 16, section 1: "an ANN index with prefilter for very large scopes").

Why: a search with a lead (`{"user_id": X}`, a run, an agent...) reads that scope's rows by
their BTree index and ranks them exactly (query/scoped.py). A search without one -- every
user of a project (`{"user_id": "*"}`), an agent shared by more than MAX_SEARCH_ROWS rows, a
metadata-only filter -- was a flat scan of the whole table: 2.5 s at 1M rows. With this index
memstream's `{"user_id": "*"}` search took 37 ms p50 against 732 ms flat (raw Lance: 7.6 ms
when the index's nearest candidates are filtered after, 102 ms when the filter runs first),
recall 1.0 against the flat answers (bench/README.md, round 9). A build took 74 s at 1M rows
with 256 partitions on 2 cores, and still 50 s at 100k (training on a sample of fixed size),
too long to hold the writers up: so a replay builds it, on its generation before it is
promoted, once the table has `ann_min_rows()` rows. Afterwards Lance adds new rows to it
when the table is compacted (`optimize_indices`), searches rows not in it yet by brute
force, and an erasure's purge rewrites it without the erased rows. A projection that grows
past the threshold between replays is searched flat; `memstream status` says so.

An index answers approximately; the read path (query/reader.py `PreparedSearch.rows`) keeps
the guarantees a user relies on: distances are recomputed exactly, and when the index yields
fewer rows than asked while the scope may hold more, the search is repeated without the
index (exact). Scoped searches never use it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from memstream.errors import ValidationError

__all__ = [
    "ANN_MIN_ROWS",
    "NPROBES",
    "REFINE_FACTOR",
    "ann_min_rows",
    "ensure_vector_index",
    "has_vector_index",
    "is_vector_index",
    "vector_index_state",
]

ANN_MIN_ROWS = 100_000
"""Rows from which a memories table gets its vector index. A flat scan is ~0.25 s per
100k rows here; below that an exact scan is cheap enough and needs no build."""
MAX_PARTITIONS = 256
MIN_PARTITIONS = 4
NPROBES = 20
"""IVF partitions a search looks into (of up to MAX_PARTITIONS)."""
REFINE_FACTOR = 10
"""Candidates (x the limit) whose exact distance Lance computes before it keeps the limit:
the quantised (PQ) distances only choose candidates, they never rank the answer."""
INDEX_NAME = "vector_idx"
PQ_MIN_ROWS = 256  # PQ trains 256 centroids per sub-vector


def ann_min_rows() -> int:
    """ANN_MIN_ROWS, or `MEMSTREAM_ANN_MIN_ROWS` (0: never build one)."""
    raw = os.environ.get("MEMSTREAM_ANN_MIN_ROWS")
    if raw is None:
        return ANN_MIN_ROWS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValidationError(
            f"MEMSTREAM_ANN_MIN_ROWS: {raw!r} is not a row count (a whole number >= 0; "
            "0 never builds a vector index)"
        )
    return value


def is_vector_index(index: Any) -> bool:
    """Whether one entry of a table's `list_indices()` is the index on its `vector` column."""
    return list(index.columns) == ["vector"]


def has_vector_index(table: Any) -> bool:
    """Whether `table` (a LanceDB table or projector.lance_tables' facade) has an index on
    its `vector` column."""
    return any(is_vector_index(ix) for ix in table.list_indices())


def _rows_if_due(table: Any) -> int:
    """`table`'s row count when it has `ann_min_rows()` rows (never, when that is 0) and at
    least PQ_MIN_ROWS; else 0."""
    threshold = ann_min_rows()
    if threshold == 0:
        return 0
    rows = int(table.count_rows())
    return rows if rows >= max(threshold, PQ_MIN_ROWS) else 0


def vector_index_state(table: Any) -> str:
    """ "built"; "due" (the table has `ann_min_rows()` rows: `memstream replay` builds it);
    or "none" (a smaller table, or indexes turned off: searches are flat and exact)."""
    if table is None:
        return "none"
    if has_vector_index(table):
        return "built"
    return "due" if _rows_if_due(table) else "none"


def ensure_vector_index(table: Any, dim: int) -> bool:
    """Build the vector index of a memories table that has reached `ann_min_rows()` rows and
    has none; returns whether it built one. Through `lance` (both table kinds have it).
    Only for a generation no writer waits on (a replay's, before it is promoted): a build
    took 40-75 s from 100k to 1M rows here, most of it training on a fixed-size sample."""
    rows = 0 if has_vector_index(table) else _rows_if_due(table)
    if not rows:
        return False
    partitions = max(MIN_PARTITIONS, min(MAX_PARTITIONS, int(math.sqrt(rows))))
    table.to_lance().create_index(
        "vector",
        "IVF_PQ",
        name=INDEX_NAME,
        metric="cosine",
        num_partitions=partitions,
        num_sub_vectors=_sub_vectors(dim),
        replace=True,
    )
    return True


def _sub_vectors(dim: int) -> int:
    """8 dimensions a sub-vector (48 for MiniLM's 384), or the largest divisor of `dim` that
    keeps sub-vectors at least 8 wide (PQ needs `dim` divisible by it)."""
    for width in range(8, dim + 1):
        if dim % width == 0:
            return dim // width
    return 1
