"""Memory exports: a synchronous JSON export of the memories a filter selects.

The platform builds exports in the background, shaped by a caller-given schema. memstream
answers at once: `POST /v1/exports/` writes the export (the matching memories, Mem0-shaped,
plus the schema echoed back) under `<data_dir>/exports/`, and `POST /v1/exports/get/` reads
it back by id, only for the project that made it. Exports are derived data: deleting the
folder loses nothing the log cannot rebuild.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response, status

from memstream.errors import NotFoundError, ValidationError
from memstream.events import now_ms
from memstream.fsutil import scratch_dir
from memstream.models import Tenant, iso_ms
from memstream.scope import ENTITY_FIELDS
from memstream.server.auth import CallerDep
from memstream.server.deps import MsDep, combine
from memstream.server.schemas import (
    ExportCreateRequest,
    ExportDownloadRequest,
    ExportGetRequest,
    Out,
    doc,
)
from memstream.service import Memstream

router = APIRouter(tags=["exports"])

PAGE = 1000


async def _export(
    ms: Memstream, tenant: Tenant, filters: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        chunk = await ms.get_all(filters, tenant=tenant, page=page, page_size=PAGE)
        out.extend(m.to_api() for m in chunk.results)
        if page * PAGE >= chunk.count:
            return out
        page += 1


def _path(ms: Memstream, export_id: str) -> Path:
    return ms.data_dir / "exports" / f"{export_id}.json"


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=True))
    os.replace(tmp, path)


@router.post(
    "/v1/exports/",
    status_code=status.HTTP_201_CREATED,
    responses=doc(Out, 201),
    summary="Export memories",
)
async def create_export(ms: MsDep, caller: CallerDep, body: ExportCreateRequest) -> Any:
    filters = combine(body.filters, body.entities())
    memories = await _export(ms, caller.tenant, filters)
    export_id = str(uuid.uuid4())
    doc = {
        "id": export_id,
        "org_id": caller.tenant.org_id,
        "project_id": caller.tenant.project_id,
        "created_at": iso_ms(now_ms()),
        "schema": body.export_schema,
        "filters": filters,
        "count": len(memories),
        "memories": memories,
    }
    await asyncio.to_thread(_write, _path(ms, export_id), doc)
    return {"message": "Memory export request received. The export is ready.", "id": export_id}


@router.post("/v1/exports/get/", responses=doc(Out), summary="Get an export")
async def get_export(ms: MsDep, caller: CallerDep, body: ExportGetRequest) -> Any:
    """By `memory_export_id`; without one, a fresh export of `filters` (or entity ids)."""
    if body.memory_export_id is None:
        filters = combine(body.filters, body.entities())
        if filters is None:
            raise ValidationError("give memory_export_id, or filters / entity ids to export")
        memories = await _export(ms, caller.tenant, filters)
        return {"filters": filters, "count": len(memories), "memories": memories}
    try:
        export_id = str(uuid.UUID(body.memory_export_id))
    except ValueError:
        raise NotFoundError("No memory export request found") from None
    path = _path(ms, export_id)
    if not path.exists():
        raise NotFoundError("No memory export request found")
    doc = json.loads(await asyncio.to_thread(path.read_text))
    if (doc.get("org_id"), doc.get("project_id")) != (
        caller.tenant.org_id,
        caller.tenant.project_id,
    ):
        raise NotFoundError("No memory export request found")
    return doc


MEDIA_TYPES = {
    "json": "application/json",
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


@router.post(
    "/v1/exports/download/",
    summary="Download memories as a file",
    responses={200: {"description": "the file", "content": {t: {} for t in MEDIA_TYPES.values()}}},
)
async def download_export(ms: MsDep, caller: CallerDep, body: ExportDownloadRequest) -> Response:
    """memstream's own: the memories `filters` select (now, or `as_of`), as a JSON, JSON
    Lines, CSV or Parquet file (the columns of `memstream export`, docs/audit.md). Nothing is
    kept on the server. Without filters, every memory of the key's project."""
    filters = combine(body.filters, body.entities())
    if filters is None:  # the whole project: every memory has at least one entity id
        filters = {"OR": [{field: "*"} for field in ENTITY_FIELDS]}
    # built under the data dir, not the system temp dir: a crash mid-way leaves plaintext
    # that the next start and any erasure delete (fsutil.drop_scratch)
    with scratch_dir(ms.data_dir, "export-") as tmp:
        path = tmp / f"memories.{body.format}"
        count, fmt = await ms.export(
            path, body.format, filters, tenant=caller.tenant, as_of=body.as_of,
            show_expired=body.show_expired,
        )  # fmt: skip
        data = await asyncio.to_thread(path.read_bytes)
    name = f"memories-{caller.tenant.project_id}.{fmt}"
    return Response(
        data,
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
            "X-Memstream-Count": str(count),
        },
    )
