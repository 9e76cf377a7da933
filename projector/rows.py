"""A batch's rows into the tables: audit rows, memories and policies as Arrow tables,
appended where the table cannot hold them yet and merged where it may."""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from memstream.projector.apply import BatchState
from memstream.projector.cluster import sort_rows, sort_table
from memstream.projector.lance_datasets import latest_version
from memstream.projector.store import EmbeddingCache, Generation
from memstream.projector.tables import EVENTS_SCHEMA, POLICIES_SCHEMA, memories_schema
from memstream.sqlutil import sql_in


def write_rows(
    gen: Generation,
    state: BatchState,
    audits: list[dict[str, Any]],
    decided: dict[str, str],
    vectors: dict[str, np.ndarray],
    *,
    append: bool,
    audit_rows: pa.Table | None = None,
    new_memories: pa.Table | None = None,
) -> None:
    """Write a batch's audit rows, then its memories and policies (the policies table is
    created first, when the batch has any).

    With `append`, rows the table cannot hold yet are appended (`table.add`, one new
    fragment) instead of merged: audit rows whose event_id was not recorded before
    (`decided`), and memories not loaded from the table (`state.loaded`: the batch
    loaded every row of the ids it touches, so any other id is new). `merge_insert`
    then runs only for rows that exist, and a delete only for ids the table holds.

    The column-wise path (projector/columnar.py, append only) passes the batch's audit rows
    as one table (`audit_rows`, instead of building them from `audits`) and its new
    memories' rows (`new_memories`), appended with the other new rows, sorted by id.
    """
    if state.policies:
        # before the audit rows: a generation holding a POLICY_SET/POLICY_REMOVED row always
        # has a policies table, so as-of reads of one without it skip looking for policies
        # (query/timetravel.py, policies_at)
        gen.policies(create=True)
    if audit_rows is not None:
        assert append
        gen.events(create=True).add(audit_rows)
    elif audits:
        table = gen.events(create=True)
        if append:
            seen: set[str] = set(decided)
            fresh = []
            for row in audits:
                if row["event_id"] not in seen:
                    seen.add(row["event_id"])
                    fresh.append(row)
            if fresh:
                table.add(arrow_table(fresh, EVENTS_SCHEMA))
        else:
            table.merge_insert("event_id").when_not_matched_insert_all().execute(
                arrow_table(audits, EVENTS_SCHEMA)
            )
    upserts, deletes = state.upserts(), state.deletes()
    if upserts or deletes or new_memories is not None:
        table = gen.memories(create=True)
        merged = upserts
        if append:
            new_rows = [r for r in upserts if r["id"] not in state.loaded]
            merged = [r for r in upserts if r["id"] in state.loaded]
            deletes = [mid for mid in deletes if mid in state.loaded]
            added = memory_rows(new_rows, vectors, gen.dim) if new_rows else None
            if new_memories is not None:  # the column-wise path's new rows (columnar.py)
                added = new_memories if added is None else pa.concat_tables([added, new_memories])
            if added is not None:  # in scope order: a scope's rows share pages (cluster.py)
                table.add(sort_table(added))
        if merged:
            table.merge_insert(
                "id"
            ).when_matched_update_all().when_not_matched_insert_all().execute(
                memory_rows(sort_rows(merged), vectors, gen.dim)
            )
        if deletes:
            table.delete(sql_in("id", deletes))
    if state.policies:
        table = gen.policies(create=True)
        kept = [row for row in state.policies.values() if row is not None]
        gone = [key for key, row in state.policies.items() if row is None]
        if gone:
            table.delete(sql_in("key", gone))
        if kept:
            table.merge_insert(
                "key"
            ).when_matched_update_all().when_not_matched_insert_all().execute(
                pa.Table.from_pylist(kept, schema=POLICIES_SCHEMA)
            )


def table_versions(gen: Generation, cache: EmbeddingCache) -> tuple[int | None, ...]:
    """The current versions of the tables a TableIndex describes (None: not created yet)."""
    return versions_of((gen.memories(), gen.events(), cache.table()))


def versions_of(tables: Iterable[Any]) -> tuple[int | None, ...]:
    """Each table's newest version on storage (None for a table not created yet)."""
    return tuple(latest_version(t) if t is not None else None for t in tables)


def arrow_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to an Arrow table, one column at a time (faster than from_pylist)."""
    return pa.Table.from_arrays([_column(rows, f) for f in schema], schema=schema)


def _column(rows: list[dict[str, Any]], field: pa.Field) -> pa.Array:
    # itemgetter: the field's name is looked up once, not once a row (2-3x faster)
    return pa.array(list(map(itemgetter(field.name), rows)), type=field.type)


def memory_rows(rows: list[dict[str, Any]], vectors: dict[str, np.ndarray], dim: int) -> pa.Table:
    """Memory rows to Arrow; the vectors (new ones from `vectors`, else the row's own) as one
    FixedSizeListArray built from a float32 matrix, not a Python list per row."""
    schema = memories_schema(dim)
    vecs = [vectors[r["id"]] if r["id"] in vectors else r["vector"] for r in rows]
    if any(v is None for v in vecs):
        vector = pa.array([None if v is None else np.asarray(v).tolist() for v in vecs],
                          type=schema.field("vector").type)  # fmt: skip
    else:
        matrix = np.stack([np.asarray(v, dtype=np.float32) for v in vecs])
        vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    columns = [vector if f.name == "vector" else _column(rows, f) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
