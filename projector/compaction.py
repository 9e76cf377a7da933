"""Compaction: keep each LanceDB table's fragments and index segments few, without
rewriting the table again and again.

Every projector batch appends one fragment (a data file) to each table it writes. Reads
pay per fragment (~0.16 ms each at 100k rows, measured) and per unindexed row, so small
fragments have to be merged and indexed. LanceDB's `optimize()` does that by merging every
index segment into one, after which the next compaction rewrites every fragment below
Lance's 1M-row target together with the new ones: at 100k memories each maintenance
rewrote the whole table (~1 s), and the work per event grew with the table.

Lance merges fragments only within one index segment, and
`optimize_indices(num_indices_to_merge=m)` merges the newest m segments with the rows not
indexed yet (both observed on pylance 14). So the policy here is size-tiered over index
segments -- RocksDB's "universal compaction": new rows become a new delta segment unless the
newest segments are together about as large as the next older one, in which case they are
merged (and their fragments follow at the next compaction). Segment sizes then grow
geometrically: a row is rewritten O(log n) times in its life (7-10 times up to 1M rows in
`tests/unit/test_compaction.py`'s simulation) and a table keeps about a dozen segments.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from typing import Any

from memstream.projector.vector_index import is_vector_index

SMALL_FRAGMENTS = 32  # unindexed fragments that make a table due for compaction
UNINDEXED_ROWS = 50_000
"""Rows past the index that make a table due whatever its fragments: every indexed lookup
scans them. Large batches (a bulk catch-up's 10,000-row writes to the embedding cache) are
not small fragments, so at 1M cached keys 270k rows stayed unindexed after a bulk load and
a lookup of 10,000 keys took 1.56 s, against 0.50-0.59 s after a 2.2 s compaction."""
MIN_MERGE = 4  # segments (counting the new rows) worth one merge
SIZE_RATIO = 1.0  # an older segment joins a merge if at most (1 + this) x the newer ones


def segments_to_merge(sizes: Sequence[int], new_rows: int) -> int:
    """How many of the newest index segments to merge with `new_rows` unindexed rows
    (0: the new rows become a delta segment of their own). `sizes` is oldest first."""
    total, merged = new_rows, 0
    for size in reversed(sizes):
        if size > total * (1 + SIZE_RATIO):
            break
        total += size
        merged += 1
    return merged if merged + 1 >= MIN_MERGE else 0


def first_index(table: Any) -> str | None:
    """The name of one of the table's scalar indexes (they are all optimized together, the
    vector index too): its statistics drive the policy. Not the vector index's: it is built
    later than the others (projector/vector_index.py), so its segments are not theirs."""
    indices = [ix for ix in table.list_indices() if not is_vector_index(ix)]
    return str(indices[0].name) if indices else None


def due(table: Any, index: str | None) -> bool:
    """Whether `table` has enough small unindexed fragments, or enough unindexed rows, to
    compact (two cheap calls)."""
    small = int(table.stats()["fragment_stats"]["num_small_fragments"])
    if index is None:
        return small >= SMALL_FRAGMENTS
    stats = table.index_stats(index)
    if stats is None:
        return small >= SMALL_FRAGMENTS
    return (
        small - stats.num_indices >= SMALL_FRAGMENTS or stats.num_unindexed_rows >= UNINDEXED_ROWS
    )


def compact(table: Any, index: str | None, *, keep: dt.timedelta, unread: bool,
            full: bool = False) -> None:  # fmt: skip
    """Merge small fragments, index the new rows (merging segments by the policy above,
    or all of them when `full`), and delete versions older than `keep` (every old one, and
    files of failed writes, when `unread`: nobody reads the table yet)."""
    ds = table.to_lance()
    ds.optimize.compact_files()
    if index is not None:
        ds = table.to_lance()
        stats = ds.stats.index_stats(index)
        sizes = [int(n) for n in stats.get("num_indexed_rows_per_delta", [])]
        merge = len(sizes) if full else segments_to_merge(sizes, stats["num_unindexed_rows"])
        ds.optimize.optimize_indices(num_indices_to_merge=merge)
    with warnings.catch_warnings():  # "older_than=0 ...": only for an unread table
        warnings.simplefilter("ignore", UserWarning)
        table.to_lance().cleanup_old_versions(older_than=keep, delete_unverified=unread)
