"""The part of LanceDB's table API the projector uses, over `lance` datasets: for a one-shot
process that writes without importing LanceDB (memstream/light_writes.py, a CLI `add`).

Why (issue 16, section 7): `import lancedb` is most of a `memstream add` (~1 s of CPU even
without its REST client, memstream/lancedb_import.py), yet an embedded LanceDB table is a
`lance` dataset in a directory, and everything the projector does to a table in a live
batch -- filtered reads, appends, merge-inserts, deletes, fragment and index statistics,
compaction, BTree indexes -- `lance` does itself (LanceDB's Python calls the same engine;
compaction already goes through `lance`, projector/compaction.py). `LanceConnection` is
what `Generation` and `EmbeddingCache` take instead of a LanceDB connection
(`connect=` in projector/store.py), so the projector's own code runs unchanged on it.

Read consistency is LanceDB's `read_consistency_interval=0`: every operation first moves the
dataset to the table's latest version (another process may have written since).

Not here: creating tables, `update`, listing tables (used by a table's first write, an
erasure's scrub, an erasure of other models' caches). They raise `NotImplementedError`:
the light writer applies only its own adds to tables that exist (it checks first), and
anything else takes the full path. `tests/integration/test_lance_tables.py` holds the
facade to LanceDB's own answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

# LanceDB's `stats()` counts a fragment as small below this many physical rows (lancedb
# 0.40, rust/lancedb/src/table.rs: `small_frag_threshold`); projector/compaction.py reads it
SMALL_FRAGMENT_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """One index as LanceDB's `list_indices()` describes it (the fields memstream reads)."""

    name: str
    index_type: str
    columns: list[str]


@dataclass(frozen=True, slots=True)
class IndexStatistics:
    """LanceDB's `index_stats()` answer (the fields memstream reads)."""

    num_indexed_rows: int
    num_unindexed_rows: int
    index_type: str
    num_indices: int


class LanceConnection:
    """A directory of tables (`<name>.lance`), as `lancedb.connect(path)` opens it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def open_table(self, name: str) -> LanceTable:
        import lance

        uri = self.path / f"{name}.lance"
        if not uri.is_dir():
            raise ValueError(f"Table '{name}' was not found")  # as LanceDB says it
        return LanceTable(lance.dataset(str(uri)))

    def create_table(self, name: str, schema: pa.Schema) -> LanceTable:
        raise NotImplementedError("creating a table: only through LanceDB")

    def list_tables(self, page_token: str | None = None) -> Any:
        raise NotImplementedError("listing tables: only through LanceDB")


class LanceTable:
    """One table: LanceDB's calls the projector makes, on the `lance` dataset's latest
    version."""

    def __init__(self, dataset: Any) -> None:
        self._ds = dataset

    def to_lance(self) -> Any:
        """The dataset at the table's latest version (as LanceDB's `to_lance()`)."""
        latest = self._ds.latest_version
        if latest != self._ds.version:
            self._ds = self._ds.checkout_version(latest)
        return self._ds

    @property
    def version(self) -> int:
        return int(self.to_lance().version)

    @property
    def uri(self) -> str:
        return str(self._ds.uri)

    # -- reads ---------------------------------------------------------------------------
    def search(self) -> Query:
        """A plain (non-vector) query: `.where(...).select(...).limit(None).to_arrow()`."""
        return Query(self)

    def count_rows(self, filter: str | None = None) -> int:
        return int(self.to_lance().count_rows(filter=filter))

    # -- writes --------------------------------------------------------------------------
    def add(self, data: pa.Table) -> None:
        self.to_lance().insert(data)

    def merge_insert(self, on: str) -> Any:
        """`lance`'s builder: the same chain as LanceDB's (`when_matched_update_all()`,
        `when_not_matched_insert_all()`, `execute(data)`)."""
        return self.to_lance().merge_insert(on)

    def delete(self, where: str) -> None:
        self.to_lance().delete(where)

    def update(self, where: str | None = None, values: dict[str, Any] | None = None) -> None:
        raise NotImplementedError("update: only through LanceDB")

    # -- indexes and statistics (Projector.maintain, projector/compaction.py) -------------
    def list_indices(self) -> list[IndexConfig]:
        return [
            IndexConfig(d.name, d.index_type, list(d.field_names))
            for d in self.to_lance().describe_indices()
        ]

    def index_stats(self, name: str) -> IndexStatistics | None:
        try:
            stats = self.to_lance().stats.index_stats(name)
        except (ValueError, KeyError):
            return None
        return IndexStatistics(
            num_indexed_rows=int(stats["num_indexed_rows"]),
            num_unindexed_rows=int(stats["num_unindexed_rows"]),
            index_type=str(stats["index_type"]),
            num_indices=int(stats["num_indices"]),
        )

    def stats(self) -> dict[str, Any]:
        """The fragment counts of LanceDB's `stats()` (the part memstream reads)."""
        rows = [f.physical_rows for f in self.to_lance().get_fragments()]
        return {
            "fragment_stats": {
                "num_fragments": len(rows),
                "num_small_fragments": sum(1 for n in rows if n < SMALL_FRAGMENT_ROWS),
            }
        }

    def create_btree(self, column: str) -> None:
        """What LanceDB's `create_index(column, config=BTree())` makes: a BTree scalar index
        named `<column>_idx`, replacing one of that name."""
        self.to_lance().create_scalar_index(column, "BTREE", name=f"{column}_idx", replace=True)


class Query:
    """LanceDB's plain query builder, the calls memstream makes of it."""

    def __init__(self, table: LanceTable) -> None:
        self._table = table
        self._where: str | None = None
        self._columns: list[str] | None = None

    def where(self, where: str) -> Query:
        self._where = where
        return self

    def select(self, columns: list[str]) -> Query:
        self._columns = list(columns)
        return self

    def limit(self, limit: int | None) -> Query:
        if limit is not None:
            raise NotImplementedError("a limited query: only through LanceDB")
        return self

    def to_arrow(self) -> pa.Table:
        table: pa.Table = self._table.to_lance().to_table(columns=self._columns, filter=self._where)
        return table
