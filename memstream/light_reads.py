"""Reads of a current projection without opening the ledger: the CLI's `get-all` and `search`.

Why (issue 16, section 7): `Memstream` opens everything a server needs (LanceDB, the writers,
the LLM client, the webhooks, the key store and the log) and checks the projection at every
start: about a second of imports and work before a one-shot `memstream get-all` can answer,
although a projection that is already current needs none of it. This module answers such a
read from the live generation through `lance` alone (projector/lance_snapshot.py), with the
same `MemoryReader` code, so the answer is the full path's by construction.

It answers only when it can give exactly what `Memstream` would, and says None otherwise (the
caller then opens `Memstream`, which rebuilds, catches up, completes erasures or raises the
error a user should see):

- the embedded file log (with Kafka every read pays a broker round trip anyway);
- a live generation of the current projection format, built from this log with the embedder
  the settings name (as `Projector.generation` checks);
- its checkpoint covers the log's end, or it is pinned (`replay --to-position`): there is
  nothing to project first;
- no interrupted erasure to complete: the generation's last clean scan is still valid (the
  key store's erasure marker is unchanged) and the rows of events projected since that scan
  are sealed under live keys (projector/erasure.py, ScanStamp).

A read the reader's scoped plan cannot answer through `lance` (no indexed lead in the
filter, too many rows under it) raises `PlanDeclined`: ask `Memstream` then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.embedders.base import Embedder
from memstream.embedders.registry import get_embedder
from memstream.fsutil import drop_scratch
from memstream.log.file import FileEventLog
from memstream.models import MemoryView, Page, Tenant
from memstream.projector import erasure
from memstream.projector.lance_snapshot import LanceSnapshot
from memstream.projector.store import Generation, GenerationMeta, ProjectionStore
from memstream.projector.tables import PROJECTION_VERSION
from memstream.projector.waiting import covers
from memstream.query.reader import MemoryReader, PlanDeclined
from memstream.settings import Settings

__all__ = ["Current", "LightReads", "PlanDeclined", "open_current", "open_light_reads"]


class LightReads:
    """get_all and search of one current generation, answered as `Memstream` answers them
    (same validation, same reader), or PlanDeclined."""

    def __init__(self, settings: Settings, snapshot: LanceSnapshot, embedder: Embedder) -> None:
        self.settings = settings
        self.tenant = Tenant(settings.org_id, settings.project_id)
        self.embedder = embedder
        self._snapshot = snapshot
        self.reader = MemoryReader(self, scoped_only=True)

    def generation(self) -> Generation:
        return self._snapshot

    def get_all(
        self,
        filters: Mapping[str, Any] | None,
        *,
        page: int = 1,
        page_size: int = 100,
        show_expired: bool = False,
    ) -> Page:
        self.settings.limits.check_filters(filters)
        return self.reader.get_all(
            self.tenant, filters, page=page, page_size=page_size, show_expired=show_expired
        )

    def search(
        self,
        query: str,
        filters: Mapping[str, Any] | None,
        *,
        top_k: int = 10,
        threshold: float | None = None,
        show_expired: bool = False,
    ) -> list[MemoryView]:
        self.settings.limits.check_query(query)
        self.settings.limits.check_filters(filters)
        return self.reader.search(
            self.tenant, query, filters, top_k=top_k, threshold=threshold,
            show_expired=show_expired,
        )  # fmt: skip


async def open_light_reads(settings: Settings) -> LightReads | None:
    """The light reader of `settings`' data directory, or None when only the full path can
    answer exactly (see the module doc). Raises what reading the files raises (OSError,
    LogCorruptError, ...): the caller falls back to the full path, which reports it."""
    current = await open_current(settings)
    if current is None:
        return None
    return LightReads(settings, current.snapshot, current.embedder)


@dataclass(frozen=True)
class Current:
    """The data directory's live generation, found current (see `open_current`)."""

    log: FileEventLog
    store: ProjectionStore
    meta: GenerationMeta
    snapshot: LanceSnapshot
    embedder: Embedder


async def open_current(settings: Settings) -> Current | None:
    """The live generation of `settings`' file log, when it is exactly what `Memstream`
    would read after its start: of the current projection format, built from this log with
    the embedder the settings name, covering the log's end (or pinned), with no interrupted
    erasure to complete. None otherwise: only the full path can go on. Also tidies what
    every start tidies (killed replays' generations, a crashed export's scratch).
    Shared by the light reads and the light add (memstream/light_writes.py)."""
    if settings.kafka_bootstrap:
        return None
    data_dir = Path(settings.data_dir)
    if not (data_dir / "projections" / "CURRENT").is_file():
        return None  # nothing projected yet: the full path creates the generation
    log = FileEventLog(data_dir / "log")
    store = ProjectionStore(data_dir, 0, "", log.identity)  # to find and tidy; never creates
    name = store.current_name()
    if name is None or not (store.root / name).is_dir():
        return None
    meta = store.meta(name)
    if meta.version < PROJECTION_VERSION or (meta.log is not None and meta.log != log.identity):
        return None
    embedder = get_embedder(settings.embedder or meta.embedder)  # construction loads nothing
    if embedder.name != meta.embedder:
        return None
    store.drop_abandoned()  # as every start does: what killed replays left (plaintext)
    drop_scratch(data_dir)  # and what a crashed export left (plaintext)
    snapshot = LanceSnapshot(store.root / name, meta.dim)
    checkpoint = snapshot.checkpoint()
    if meta.pinned is None:
        end = await log.end_offsets()
        if not covers(checkpoint, {p: o for p, o in end.items() if o > 0}):
            return None
        if not await _no_erasure_to_finish(log, snapshot, checkpoint):
            return None
    return Current(log, store, meta, snapshot, embedder)


async def _no_erasure_to_finish(
    log: FileEventLog, gen: LanceSnapshot, checkpoint: dict[int, int]
) -> bool:
    """Whether `SubjectEraser.finish_interrupted` would find nothing to do, known without
    reading the whole projection: True only under a valid clean-scan stamp, after checking the
    rows of events projected since it (and then the stamp moves up to `checkpoint`)."""
    keys = log.subject_keys()
    marker = keys.erasure_marker()
    stamp = erasure.read_scan_stamp(gen)
    if marker is None or stamp is None or stamp.marker != marker:
        return False
    if stamp.checkpoint == checkpoint:
        return True
    scanned = erasure.sealed_keys(gen, since=stamp.checkpoint)
    if scanned:
        await keys.refresh()  # after the scan: a key created meanwhile is not taken as dead
        try:
            if any(keys.lookup(owner, k) is None for owner, ids in scanned.items() for k in ids):
                return False
        finally:
            await keys.close()
    erasure.write_scan_stamp(gen, erasure.ScanStamp(marker, checkpoint))
    return True
