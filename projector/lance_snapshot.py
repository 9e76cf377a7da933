"""A generation read through `lance` alone, for a short-lived process that only reads.

Why: importing LanceDB costs about as much as the rest of a `memstream get-all` together
(~1 s even without its REST client, see memstream/lancedb_import.py), and a read of a
projection that is already current needs none of what LanceDB adds over `lance` (the
scoped plan of query/scoped.py reads through `lance` datasets already). `LanceSnapshot` is
a `Generation` whose tables are `lance` datasets opened at their latest version: the same
files, the same Lance engine and filter language, nothing LanceDB-specific. It never writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from memstream.projector.store import Generation


class LanceSnapshot(Generation):
    """The tables of the generation at `path` as `lance` datasets (read-only)."""

    def __init__(self, path: Path, dim: int) -> None:  # no LanceDB connection
        self.path = path
        self.dim = dim
        self._memories: Any = None
        self._events: Any = None
        self._policies: Any = None

    def _open(self, name: str, schema: pa.Schema, create: bool) -> Any:
        if create:
            raise RuntimeError("a LanceSnapshot is read-only")
        if not self._exists(name):
            return None
        import lance

        try:
            return lance.dataset(str(self.path / "lance" / f"{name}.lance"))
        except (FileNotFoundError, ValueError):  # a table still being created
            return None

    def _rows(
        self, table: Any, where: str, columns: list[str] | None = None
    ) -> list[dict[str, Any]]:
        if table is None:
            return []
        rows: list[dict[str, Any]] = table.to_table(columns=columns, filter=where).to_pylist()
        return rows

    def query_policies(self, where: str = "true") -> list[dict[str, Any]]:
        return self._rows(self.policies(), where)

    def query_memories(self, where: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        return self._rows(self.memories(), where, columns)

    def query_events(self, where: str) -> list[dict[str, Any]]:
        return self._rows(self.events(), where)

    def ensure_indexes(self, *, vectors: bool = False) -> None:
        raise RuntimeError("a LanceSnapshot is read-only")
