"""Exports: the rows get_all returns (now, or `as_of` a past instant or log position), to a file.

An export is exactly get_all's answer for the same filters, every page of it, so it is
scoped and filtered like every read (the caller's project, implicit null scoping, expired
memories left out unless `show_expired`). Each row has the columns of `EXPORT_COLUMNS`:
the Mem0 memory object without vectors, times as ISO-8601 UTC strings
(`2026-11-24T10:00:00.000Z`).

Formats:
- `json`: one JSON array of memory objects (metadata an object, categories an array);
- `jsonl`: the same objects, one per line (what pyarrow.json reads);
- `csv`: a header and one line per memory; metadata and categories as JSON text;
- `parquet`: metadata as JSON text, categories as list<string>, immutable as bool.

Every format opens in DuckDB (`read_json`, `read_csv`, `read_parquet`) and pyarrow. The file
is written beside its destination and renamed into place, so a reader never sees half an
export.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from memstream.errors import ValidationError
from memstream.models import MemoryView, Page, Tenant

__all__ = ["EXPORT_COLUMNS", "EXPORT_FORMATS", "export_memories", "export_rows", "write_export"]

EXPORT_FORMATS = ("json", "jsonl", "csv", "parquet")
PAGE = 1000


class PagedReads(Protocol):
    """What an export reads from: get_all's pages (`memstream.service.Memstream` is one).

    Named structurally so the query stage never imports the service that sits above it.
    """

    async def get_all(
        self,
        filters: Mapping[str, Any] | None,
        *,
        tenant: Tenant | None = ...,
        consistent: bool = ...,
        **kwargs: Any,
    ) -> Page: ...


EXPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("memory", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("agent_id", pa.string()),
        pa.field("app_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("hash", pa.string()),
        pa.field("metadata", pa.string()),  # JSON text in csv/parquet, an object in json
        pa.field("categories", pa.list_(pa.string())),
        pa.field("created_at", pa.string()),
        pa.field("updated_at", pa.string()),
        pa.field("expiration_date", pa.string()),
        pa.field("immutable", pa.bool_()),
        pa.field("expired_at", pa.string()),
    ]
)
EXPORT_COLUMNS = tuple(EXPORT_SCHEMA.names)


def export_rows(memories: list[MemoryView]) -> list[dict[str, Any]]:
    """The export's rows: the memory objects of get_all, with every EXPORT_COLUMNS key."""
    out = []
    for m in memories:
        api = m.to_api()
        out.append({c: api.get(c) for c in EXPORT_COLUMNS})
    return out


def format_of(path: Path, fmt: str | None) -> str:
    """The format named, or the one the file's extension names."""
    if fmt is None:
        ext = path.suffix.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "pq": "parquet"}.get(ext, ext)
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(
            f"format: must be one of {', '.join(EXPORT_FORMATS)} (or give a file with one of "
            "those extensions)"
        )
    return fmt


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    flat = [dict(r, metadata=json.dumps(r["metadata"], ensure_ascii=False)) for r in rows]
    return pa.Table.from_pylist(flat, schema=EXPORT_SCHEMA)


def write_export(rows: list[dict[str, Any]], path: Path, fmt: str) -> None:
    """Write `rows` (from export_rows) to `path` in `fmt`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "json":
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", "utf-8")
        elif fmt == "jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        elif fmt == "csv":
            table = _table(rows)
            cats = pa.array(
                [json.dumps(r["categories"], ensure_ascii=False) for r in rows], pa.string()
            )
            table = table.set_column(table.schema.get_field_index("categories"), "categories", cats)
            pacsv.write_csv(table, tmp)
        elif fmt == "parquet":
            pq.write_table(_table(rows), tmp)
        else:
            raise ValidationError(f"format: must be one of {', '.join(EXPORT_FORMATS)}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def export_memories(
    ms: PagedReads,
    path: Path,
    fmt: str | None,
    filters: Mapping[str, Any] | None,
    *,
    tenant: Tenant | None = None,
    as_of: Any = None,
    show_expired: bool = False,
) -> tuple[int, str]:
    """Export every memory get_all(filters, as_of=...) returns to `path`: (count, format)."""
    fmt = format_of(Path(path), fmt)
    memories: list[MemoryView] = []
    page = 1
    while True:
        chunk = await ms.get_all(
            filters, tenant=tenant, page=page, page_size=PAGE,
            show_expired=show_expired, as_of=as_of, consistent=page == 1,
        )  # fmt: skip
        memories.extend(chunk.results)
        if page * PAGE >= chunk.count:
            break
        page += 1
    rows = export_rows(memories)
    write_export(rows, Path(path), fmt)
    return len(rows), fmt
