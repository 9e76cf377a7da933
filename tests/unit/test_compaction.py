"""Compaction keeps tables few-fragmented without rewriting them again and again."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import lancedb
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from lancedb.index import BTree

from memstream.projector import compaction
from memstream.projector.compaction import MIN_MERGE, first_index, segments_to_merge


def simulate(batches: list[int]) -> tuple[list[int], int, int]:
    """Segment sizes, rows written to indexes in all, and the most segments ever held."""
    sizes: list[int] = []
    written = most = 0
    for new in batches:
        merge = segments_to_merge(sizes, new)
        merged = sum(sizes[len(sizes) - merge :]) + new
        del sizes[len(sizes) - merge :]
        sizes.append(merged)
        written += merged
        most = max(most, len(sizes))
    return sizes, written, most


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5_000), min_size=1, max_size=600))
def test_each_row_is_rewritten_a_logarithmic_number_of_times(batches: list[int]) -> None:
    sizes, written, most = simulate(batches)
    rows = sum(batches)
    assert sum(sizes) == rows  # merging never loses or invents rows
    levels = math.log2(rows) + 2
    assert written <= rows * levels  # merging every segment each time would be ~len(batches)x
    assert most <= MIN_MERGE * levels


def test_a_steady_stream_of_small_batches_keeps_a_dozen_segments() -> None:
    sizes, written, most = simulate([32] * (1_000_000 // 32))
    assert sum(sizes) == 1_000_000
    assert most <= 16
    assert written / 1_000_000 <= 12  # LanceDB's optimize() rewrote everything each time


def test_too_few_segments_are_not_worth_a_merge() -> None:
    assert segments_to_merge([], 10) == 0
    assert segments_to_merge([10] * (MIN_MERGE - 2), 10) == 0
    assert segments_to_merge([10] * (MIN_MERGE - 1), 10) == MIN_MERGE - 1
    assert segments_to_merge([1_000_000] + [10] * (MIN_MERGE - 1), 10) == MIN_MERGE - 1


def test_on_lancedb_the_big_fragment_is_left_alone_and_every_row_survives(
    tmp_path: Path,
) -> None:
    db = lancedb.connect(tmp_path, read_consistency_interval=dt.timedelta(0))
    table = db.create_table("t", data=pa.table({"id": [f"base{i}" for i in range(5_000)]}))
    table.create_index("id", config=BTree())
    base = table.to_lance().get_fragments()[0].fragment_id
    n = 0
    for _ in range(12):  # twelve rounds of small appends, each followed by maintenance
        for _ in range(compaction.SMALL_FRAGMENTS):
            table.add(pa.table({"id": [f"new{n}"]}))
            n += 1
        assert compaction.due(table, first_index(table))
        compaction.compact(table, first_index(table), keep=dt.timedelta(0), unread=True)
        assert not compaction.due(table, first_index(table))
    fragments = table.to_lance().get_fragments()
    assert base in [f.fragment_id for f in fragments]  # never rewritten
    assert len(fragments) <= 8
    ids = table.search().select(["id"]).limit(None).to_arrow()["id"].to_pylist()
    assert sorted(ids) == sorted([f"base{i}" for i in range(5_000)] + [f"new{i}" for i in range(n)])
    assert table.search().where("id = 'new77'").limit(None).to_arrow().num_rows == 1
    stats = table.to_lance().stats.index_stats("id_idx")
    assert stats["num_unindexed_rows"] == 0


def test_many_unindexed_rows_in_few_large_fragments_make_a_table_due(tmp_path: Path) -> None:
    """Large appends (a bulk catch-up's) are no small fragments, but every indexed lookup
    scans the rows past the index: enough of them make the table due, and compacting
    indexes them."""
    db = lancedb.connect(tmp_path, read_consistency_interval=dt.timedelta(0))
    table = db.create_table("t", data=pa.table({"id": [f"base{i}" for i in range(1_000)]}))
    table.create_index("id", config=BTree())
    per = compaction.UNINDEXED_ROWS // 2
    table.add(pa.table({"id": [f"a{i}" for i in range(per)]}))
    assert not compaction.due(table, first_index(table))  # one large fragment, few rows
    table.add(pa.table({"id": [f"b{i}" for i in range(per)]}))
    assert compaction.due(table, first_index(table))
    compaction.compact(table, first_index(table), keep=dt.timedelta(0), unread=True)
    assert not compaction.due(table, first_index(table))
    assert table.to_lance().stats.index_stats("id_idx")["num_unindexed_rows"] == 0
