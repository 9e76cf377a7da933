"""projector/lance_tables.py answers what LanceDB answers for the calls the projector makes:
the same rows, counts, index list, index and fragment statistics (what decides compaction),
the same BTree index, and each side sees the other's writes at once (LanceDB's
read_consistency_interval=0). Real LanceDB and lance tables in a tmp dir."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa

from memstream.lancedb_import import BTree, lancedb
from memstream.projector.lance_tables import SMALL_FRAGMENT_ROWS, LanceConnection

SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("user_id", pa.string()),
     pa.field("n", pa.int64(), nullable=False)]
)  # fmt: skip


def rows(start: int, count: int) -> pa.Table:
    ids = [f"m{i:07d}" for i in range(start, start + count)]
    users = [None if i % 7 == 0 else f"u{i % 13}" for i in range(start, start + count)]
    return pa.Table.from_pydict(
        {"id": ids, "user_id": users, "n": list(range(start, start + count))}, schema=SCHEMA
    )


def connect(path: Path) -> Any:
    return lancedb.connect(path, read_consistency_interval=dt.timedelta(0))


def sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_reads_statistics_and_writes_match_lancedb(tmp_path: Path) -> None:
    db = connect(tmp_path)
    table = db.create_table("t", schema=SCHEMA)
    # fragments either side of LanceDB's "small" threshold, then small ones, two indexes
    # with different numbers of segments
    table.add(rows(0, SMALL_FRAGMENT_ROWS))
    table.add(rows(SMALL_FRAGMENT_ROWS, SMALL_FRAGMENT_ROWS - 1))
    start = 2 * SMALL_FRAGMENT_ROWS - 1
    for size in (3, 50, 1):
        table.add(rows(start, size))
        start += size
    table.create_index("id", config=BTree())
    table.add(rows(start, 20))
    start += 20
    table.to_lance().optimize.optimize_indices(num_indices_to_merge=0)  # a delta segment
    table.create_index("user_id", config=BTree())
    table.add(rows(start, 5))
    start += 5
    facade = LanceConnection(tmp_path).open_table("t")

    assert [(ix.name, ix.columns) for ix in facade.list_indices()] == [
        (ix.name, list(ix.columns)) for ix in table.list_indices()
    ]
    for ix in table.list_indices():
        ours, theirs = facade.index_stats(ix.name), table.index_stats(ix.name)
        assert ours is not None and theirs is not None
        assert (ours.num_indices, ours.num_indexed_rows, ours.num_unindexed_rows) == (
            theirs.num_indices, theirs.num_indexed_rows, theirs.num_unindexed_rows,
        )  # fmt: skip
    id_stats = facade.index_stats("id_idx")
    assert id_stats is not None and id_stats.num_indices >= 2  # segments differ per index
    ours_stats, theirs_stats = facade.stats()["fragment_stats"], table.stats()["fragment_stats"]
    assert ours_stats["num_small_fragments"] == theirs_stats["num_small_fragments"]
    assert ours_stats["num_fragments"] == theirs_stats["num_fragments"]
    assert facade.version == table.version

    for where in ("user_id = 'u3'", "id IN ('m0000001', 'm0199998')", "user_id IS NULL AND n < 50"):
        assert sorted_rows(facade.search().where(where).limit(None).to_arrow()) == sorted_rows(
            table.search().where(where).limit(None).to_arrow()
        )
        assert facade.count_rows(where) == table.count_rows(where)
        got = facade.search().where(where).select(["id"]).limit(None).to_arrow()
        assert got.column_names == ["id"]

    # each side sees the other's writes at once
    facade.add(rows(start, 4))
    assert table.count_rows() == start + 4
    table.add(rows(start + 4, 2))
    assert facade.count_rows() == start + 6
    changed = rows(0, 2).set_column(2, "n", pa.array([-1, -2], pa.int64()))
    facade.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
        changed
    )
    assert sorted(
        r["n"] for r in table.search().where("n < 0").limit(None).to_arrow().to_pylist()
    ) == [-2, -1]
    facade.delete("id = 'm0000003'")
    assert table.count_rows("id = 'm0000003'") == 0
    assert facade.version == table.version


def test_the_btree_index_is_the_one_lancedb_makes(tmp_path: Path) -> None:
    db = connect(tmp_path)
    theirs = db.create_table("theirs", data=rows(0, 500))
    db.create_table("ours", data=rows(0, 500))
    theirs.create_index("user_id", config=BTree())
    LanceConnection(tmp_path).open_table("ours").create_btree("user_id")

    def described(name: str) -> list[tuple[str, str, list[str]]]:
        ds = lance.dataset(str(tmp_path / f"{name}.lance"))
        return [(d.name, d.index_type, list(d.field_names)) for d in ds.describe_indices()]

    assert described("ours") == described("theirs") != []
    ours = db.open_table("ours")
    assert [(ix.name, ix.index_type, ix.columns) for ix in ours.list_indices()] == [
        (ix.name, ix.index_type, ix.columns) for ix in theirs.list_indices()
    ]
