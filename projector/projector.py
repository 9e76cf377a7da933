"""The projector: consume the log in order, embed, apply to LanceDB, checkpoint.

One writer per table: every batch is applied under an flock on `projector.lock`, so several
processes (CLI commands, servers) sharing a data directory take turns and never corrupt the
tables. Each batch is written events-table first, then memories, then the checkpoint; rows
carry the offsets that made them, so a crash anywhere re-applies the batch as a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from memstream import metrics
from memstream.embedders.base import Embedder
from memstream.errors import (
    ConflictError,
    LogCorruptError,
    LogUnavailableError,
    MemstreamError,
    ValidationError,
)
from memstream.events import Event, MemoryAdded, MemoryUpdated, SubjectErased, text_hash
from memstream.fsutil import drop_scratch
from memstream.keystore.base import KeyStore, Subject
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets, Position
from memstream.projector import cluster, columnar, compaction, erasure
from memstream.projector.ahead import AheadVectors
from memstream.projector.apply import BatchState, apply_event
from memstream.projector.compaction import first_index
from memstream.projector.decisions import RECENT_DECISIONS, RecentDecisions, load_settled
from memstream.projector.index import DigestSet, TableIndex, event_key
from memstream.projector.poison import PoisonCounts, checked, decode_opened, open_record
from memstream.projector.rows import arrow_table, table_versions, versions_of, write_rows
from memstream.projector.store import (
    FLUSH_ITEMS,
    RETIRED_GRACE_S,
    Connect,
    EmbeddingCache,
    Generation,
    ProjectionStore,
    connect_lancedb,
)
from memstream.projector.tables import EVENTS_SCHEMA, PROJECTION_VERSION
from memstream.projector.tier import EMPTY, FreshTier, TierView, holds
from memstream.projector.vector_index import ann_min_rows
from memstream.projector.waiting import (
    Progress,
    ProjectionTimeout,
    covers,
    describe_pin,
    required_offsets,
)
from memstream.settings import tier_age_from_env, tier_rows_from_env
from memstream.sqlutil import sql_in

# re-exported: callers import the waiting vocabulary from here, where the projector is
__all__ = [
    "Progress",
    "ProjectionTimeout",
    "Projector",
    "covers",
    "describe_pin",
    "required_offsets",
]

log = logging.getLogger("memstream.projector")
_T = TypeVar("_T")
Rewrite = Callable[[list[tuple[Event, Position]]], list[tuple[Event, Position]]]

# Superseded LanceDB versions older than this are deleted when a table is compacted (Lance's
# default keeps them 7 days: disk grew with every write and compaction). Readers use
# read_consistency_interval=0 and reopen the latest version, so only a read still running
# on a version this old could miss its files: minutes are a wide margin.
KEEP_VERSIONS = dt.timedelta(minutes=5)
#: a background projector's waiters look at the disk checkpoint (another process may be the
#: one projecting) after this long without progress here, once per process (_disk_look_due)
DISK_LOOK_S = 0.25
MAINTAIN_EVERY = 8  # live batches between two looks at the tables' fragment statistics
RESCAN_EVERY = 32  # batches between two index scans when other writers keep moving the tables
REPLAY_BATCH = 10_000  # events per batch in a replay (the per-batch cost is paid 10x less often)
# a catch_up with at least this many events to apply reads REPLAY_BATCH at a time and
# writes them directly, past the fresh tier (whose small batches are there for latency)
BULK_BACKLOG = 20_000
REPLAY_GC_THRESHOLD = 50_000  # gen-0 collection threshold while a replay runs (default 700)
# a tier due while the frozen one beneath it is still being written keeps taking batches
# until it holds this many times MEMSTREAM_TIER_ROWS events; then the apply waits for the
# write (as RocksDB stalls writes when both of its two memtables are full). 1: the events
# held in memory, and the log the next start re-applies after a crash, stay within two
# tiers' worth -- one being written, one being filled
FLIGHT_BACKLOG = 1
REBUILD_TIMEOUT_S = 120.0  # reading back the events of a tier being rebuilt (see _rebuild_tier)


@dataclass(frozen=True)
class _Landed:
    """What the background write of a frozen tier left (see `_write_frozen`): the checkpoint
    written, and the tables' versions right after it (`_versions`, `table_versions`)."""

    end: Offsets
    tables_at: tuple[int | None, ...]
    index_at: tuple[int | None, ...]


class _TablesMoved(Exception):
    """The tables changed under a frozen tier before its write (another process's
    half-written batch): the tier is rebuilt from the log instead."""


class _KeysUnseen(Exception):
    """A batch has events sealed under keys the key store has not loaded: refresh it and
    apply the batch again (nothing was written yet)."""


class Projector:
    def __init__(
        self,
        data_dir: Path,
        log_: EventLog,
        embedder: Embedder,
        *,
        batch_size: int = 1000,
        keys: KeyStore | None = None,
        keep_versions: dt.timedelta = KEEP_VERSIONS,
        tier_rows: int | None = None,
        tier_age_s: float | None = None,
        connect: Connect = connect_lancedb,
    ) -> None:
        """`connect` opens the tables (LanceDB's connection, or projector/lance_tables.py's
        `LanceConnection` for a process that must not import LanceDB)."""
        self.data_dir = data_dir
        self.keep_versions = keep_versions
        self.log = log_
        # subject keys open sealed events; shared with the writers (see memstream.keystore)
        self.keys = keys if keys is not None else log_.subject_keys()
        self.embedder = embedder
        self.batch_size = batch_size
        ann_min_rows()  # a bad MEMSTREAM_ANN_MIN_ROWS fails now, not at a compaction later
        self.store = ProjectionStore(
            data_dir, embedder.dim, embedder.name, log_.identity, connect=connect
        )
        self.cache = EmbeddingCache(data_dir, embedder.name, embedder.dim, connect=connect)
        self._gen: Generation | None = None
        self._gen_name: str | None = None
        self._reader: LogReader | None = None
        self._reader_next: Offsets = {}
        self._alock = asyncio.Lock()
        self._lock_fd = os.open(data_dir / "projector.lock", os.O_RDWR | os.O_CREAT, 0o644)
        # the flock is held by this process while any of its holders needs it: a step, and
        # the background write of a frozen tier (see _flock, _launch)
        self._flock_holders = 0
        self._flock_mutex = threading.Lock()
        # the background write of a frozen tier (projector/tier.py `freeze`): one at a time
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memstream-flush")
        self._flight: Future[_Landed] | None = None
        self._flight_tier: FreshTier | None = None
        self.checkpoint: Offsets = {}
        self._background = False
        self._progress = Progress()
        # decisions of recently applied events, so a waiting writer need not read them back
        self._recent = RecentDecisions()
        self.poison = PoisonCounts()  # poison records set aside by this process
        self._loop: asyncio.AbstractEventLoop | None = None
        # what the live generation's tables hold (see projector/index.py), and the
        # (generation, table versions) it describes
        self._index: TableIndex | None = None
        self._index_at: tuple[Path, tuple[int | None, ...]] | None = None
        # background mode reads ahead while a batch is written (see _read_ahead): records
        # read but not applied yet, a read under way, and vectors embedded ahead of need
        self._buffer: list[LogRecord] = []
        self._pending_read: asyncio.Future[list[LogRecord]] | None = None
        self._ahead = AheadVectors()
        self._ahead_task: asyncio.Future[None] | None = None
        # records counted since start: read, taken for applying, handed to the model and
        # embedded; the buffer holds records number _seq_taken .. _seq_read - 1
        self._seq_read = self._seq_taken = self._seq_submitted = self._seq_ready = 0
        self._scanned_at: int | None = None  # self._batches when the index was last built
        self._unpurged: set[Path] = set()  # replay generations with erasures not yet purged
        self._batches = 0  # live batches applied by this process (maintain looks every few)
        self.pinned: Offsets | None = None  # the live generation's pin (replay --to-position)
        # the key store must be refreshed before the next batch (see _applied); and the
        # checkpoint this process's last batch wrote (another process applying in between
        # may have applied erasures this one has not seen)
        self._keys_stale = True
        self._wrote: Offsets | None = None
        self._disk_looked_at = float("-inf")  # a waiter's last look at the disk checkpoint
        self.appended: Offsets = {}  # after the last event this process appended, per partition
        # the fresh tier (projector/tier.py): flushed every tier_rows events or tier_age_s
        # seconds; either 0 turns it off (every batch is then written at once, as before)
        self.tier_rows = tier_rows_from_env() if tier_rows is None else tier_rows
        self.tier_age_s = tier_age_from_env() if tier_age_s is None else tier_age_s
        self._tier: FreshTier | None = None
        self._tier_applies = 0  # batches decided into a tier (a long-running process's sign)
        # the events counted as projected, per generation: a tier rebuilt from the log (a
        # failed flush, another process's half batch) decides events again, counted once
        self._counted: tuple[Path | None, Offsets] = (None, {})
        self._bulk = False  # a catch_up with a large backlog is under way (see catch_up)
        self._bulk_callers = 0  # how many (concurrent) catch_ups are bulk
        self._live_batch_size = batch_size  # batch_size outside bulk catch-ups

    # -- generations ---------------------------------------------------------------------
    def generation(self) -> Generation:
        """The live generation, reopened when a replay (in any process) has swapped it."""
        name = self.store.current_name()
        if self._gen is None or name != self._gen_name:
            gen = self.store.current()
            meta = self.store.meta(gen.path.name)
            if meta.log is not None and meta.log != self.log.identity:
                raise ValidationError(
                    f"the projection in {self.data_dir} was built from the log '{meta.log}', "
                    f"not '{self.log.identity}': use another --data-dir for this log, or run "
                    "`memstream replay` to rebuild this one from it"
                )
            if meta.embedder != self.embedder.name:
                raise ValidationError(
                    f"the projection in {self.data_dir} was built with embedder '{meta.embedder}', "
                    f"but '{self.embedder.name}' is configured: run `memstream replay` to "
                    "re-embed everything with the new model, or configure the old one"
                )
            self._gen, self._gen_name = gen, gen.path.name
            # a replay (here or in another process) swapped the generation: it was built to
            # the log's end, past everything the old generation's tier held
            self._tier = None
            self.pinned = meta.pinned
            self.checkpoint = gen.checkpoint()
            self._reset_reader()
        assert self._gen is not None
        return self._gen

    def check_writable(self) -> None:
        """Refuse a write while the live generation is pinned (before anything is appended:
        the log must not move past what a pinned projection shows)."""
        self.generation()
        if self.pinned is not None:
            raise ConflictError(
                f"the projection is pinned at log position {describe_pin(self.pinned)} by "
                "`memstream replay --to-position`: writes are refused while it is pinned. "
                "Run `memstream replay` (without --to-position) to rebuild to the end of "
                "the log and unpin it."
            )

    def outdated(self) -> bool:
        """True when the live generation was built by an older projection version."""
        name = self.store.current_name()
        if name is None or not (self.store.root / name).exists():
            return False
        return self.store.meta(name).version < PROJECTION_VERSION

    def _reset_reader(self) -> None:
        self._buffer = []
        self._seq_taken = self._seq_submitted = self._seq_ready = self._seq_read
        if self._pending_read is not None:  # its records go with the reader
            self._pending_read.cancel()
            self._pending_read = None
        if self._reader is not None:
            reader = self._reader
            self._reader = None
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(reader.close())

    @contextlib.asynccontextmanager
    async def _flock(self, *, beside_flight: bool = False) -> AsyncIterator[None]:
        """The cross-process lock. Counted within this process: a step deciding batches
        into the fresh tier holds it beside the background write of a frozen tier
        (`beside_flight`), and it is released when the last holder lets go. Every other
        holder (a flush, a rebuild, a replay) first waits for that write to land."""
        if not beside_flight:
            await self._land()
        await self._take_flock()
        try:
            yield
        finally:
            self._drop_flock()

    async def _take_flock(self) -> None:
        with self._flock_mutex:
            if self._flock_holders:  # this process holds it already
                self._flock_holders += 1
                return
            try:  # uncontended (the common case): taken here, without a worker thread's hop
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                self._flock_holders = 1
                return
        # another process holds it: wait off the event loop (a second wait here on the same
        # descriptor returns at once once the first has it: the lock is the descriptor's)
        await asyncio.to_thread(fcntl.flock, self._lock_fd, fcntl.LOCK_EX)
        with self._flock_mutex:
            self._flock_holders += 1

    def _drop_flock(self) -> None:
        with self._flock_mutex:
            self._flock_holders -= 1
            if self._flock_holders == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- the fresh tier (projector/tier.py) ---------------------------------------------
    @property
    def tiered(self) -> bool:
        """Whether applied events wait in the fresh tier before they are written."""
        return self.tier_rows > 0 and self.tier_age_s > 0

    def tier_view(self, gen: Generation) -> TierView:
        """What this process's readers merge with `gen`'s tables (query/tiered.py): the
        tier's published view when it belongs to `gen`, else nothing. Safe from any thread
        (the view is immutable and replaced whole)."""
        tier = self._tier
        if tier is None:
            return EMPTY
        view = tier.view
        return view if view.gen == gen.path else EMPTY

    def _tier_at(self, gen: Generation, disk: Offsets) -> FreshTier | None:
        """The live generation's tier (a new, empty one on the checkpoint `disk`)."""
        if not self.tiered:
            return None
        if self._tier is None or self._tier.gen != gen.path:
            self._tier = FreshTier(gen.path, disk)
        return self._tier

    def _applied_upto(self, gen: Generation, disk: Offsets) -> Offsets:
        """Where this process has applied to: the tier's end, or the tables' checkpoint."""
        tier = self._tier
        if tier is not None and tier.gen == gen.path and tier.pending and tier.sits_on(disk):
            return dict(tier.end)
        return disk

    def _stale_tier(self, gen: Generation, disk: Offsets) -> bool:
        """Whether the tier no longer sits on the tables: another process moved the
        checkpoint (it applied the log itself), or a flush failed half-way."""
        tier = self._tier
        return (
            tier is not None
            and tier.gen == gen.path
            and (tier.broken or (tier.pending and not tier.sits_on(disk)))
        )

    async def flush_tier(self) -> None:
        """Write the tier to the tables now: before a read of the tables themselves (as-of,
        analytics, exports, expiry) and at close. A no-op without a pending tier."""
        tier = self._tier
        if tier is None or not (tier.pending or tier.broken):
            return
        async with self._alock:
            flushed = await self._flush_locked()
        await self._commit_flushed(flushed)

    async def _flush_locked(self) -> Offsets | None:
        """`flush_tier` with the _alock held: the checkpoint written, or None."""
        gen = self.generation()
        tier = self._tier
        if tier is None or tier.gen != gen.path or not (tier.pending or tier.broken):
            return None
        async with self._flock():
            for _ in range(3):  # a tier found stale by the flush itself is rebuilt, then written
                if self._stale_tier(gen, gen.checkpoint()):
                    await self._rebuild_tier(gen)
                tier = self._tier
                if tier is None or not tier.pending:
                    return None
                flushed = await asyncio.to_thread(self._flush_sync, gen, tier)
                if not tier.broken:
                    return flushed
            raise ConflictError("the fresh tier could not be written: the tables keep changing")

    # -- the background write of a frozen tier (projector/tier.py `freeze`) ----------------
    def _launch(self, gen: Generation, tier: FreshTier) -> None:
        """Freeze the due tier and write it in the background; new batches are decided into
        the tier started on top of it (called by the apply, under the _alock and the flock,
        with no write under way). The write holds the flock until it is done."""
        top = tier.freeze()
        if tier.index is not None:  # a superset of what the tables hold is safe (index.py)
            tier.index.record(tier.eids, tier.state.upserts())
        with self._flock_mutex:
            assert self._flock_holders > 0  # the caller's: taken over before it lets go
            self._flock_holders += 1
        self._tier = top
        self._flight_tier = tier
        try:
            self._flight = self._flusher.submit(self._write_frozen, gen, tier)
        except BaseException:
            self._drop_flock()
            raise

    def _write_frozen(self, gen: Generation, tier: FreshTier) -> _Landed:
        """Write a frozen tier to the tables (in the flusher's thread): audit rows, memories,
        then the checkpoint, as `_flush_sync` does (a frozen tier holds no erasure, policy or
        poison: those are written at once). A failure leaves the tier to be rebuilt from the
        log (see `_settle`). Releases the write's hold on the flock."""
        try:
            if tier.tables_at is not None and _versions(gen) != tier.tables_at:
                raise _TablesMoved
            write_rows(gen, tier.state, tier.audits, tier.decided, {}, append=True)
            gen.write_checkpoint(tier.end)
            if self._batches % MAINTAIN_EVERY == 0:
                try:  # compaction is upkeep: a failure here loses nothing
                    self.maintain(gen)
                except Exception:
                    log.exception("table maintenance after a background flush failed")
            index_at = table_versions(gen, self.cache)  # memories, events, the cache
            return _Landed(dict(tier.end), index_at[:2], index_at)  # [:2]: `_versions(gen)`
        finally:
            self._drop_flock()

    def _settle(self) -> Offsets | None:
        """Take in a finished background write (under the _alock: no batch is being decided):
        the tier on top drops the frozen layer, or, if the write failed, is marked broken and
        rebuilt from the log before anything else is applied. The checkpoint written, if any."""
        flight, frozen = self._flight, self._flight_tier
        if flight is None or not flight.done():
            return None
        self._flight = self._flight_tier = None
        top = self._tier
        mine = top is not None and frozen is not None and top.below is frozen
        try:
            landed = flight.result()
        except BaseException as exc:
            if frozen is not None:
                frozen.broken = True
            if mine:
                assert top is not None
                top.broken = True
            if not isinstance(exc, _TablesMoved):
                log.warning("background flush of the fresh tier failed: %r; rebuilding it", exc)
            return None
        self._wrote = dict(landed.end)
        self._batches += 1
        if mine:
            assert top is not None
            top.landed(landed.tables_at)
            if top.index is not None and top.index is self._index:
                self._index_at = (top.gen, landed.index_at)
        return landed.end

    def _wait_flight(self) -> None:
        """Wait (in a worker thread, under the _alock) for the background write to land.
        A failed write leaves the tier on top marked broken (rebuilt by the next step) and
        is raised, as a failed `_flush_sync` is; tables found moved under it are not."""
        flight = self._flight
        if flight is None:
            return
        with contextlib.suppress(BaseException):
            flight.result()
        self._settle()
        exc = flight.exception()
        if exc is not None and not isinstance(exc, _TablesMoved):
            raise exc

    async def _commit_flushed(self, flushed: Offsets | None) -> None:
        """Commit the reader's group offset at a checkpoint just written (`flushed`, if
        any): the last FLUSHED position, never the tier's. Informational only (the
        projector resumes from the generation's checkpoint), so a failure is ignored."""
        if flushed is not None and self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.commit(flushed)

    async def _land(self) -> None:
        """Wait for the background write to land (on the event loop, under the _alock)."""
        flight = self._flight
        if flight is None:
            return
        with contextlib.suppress(BaseException):
            await asyncio.wrap_future(flight)
        await self._commit_flushed(self._settle())

    async def _rebuild_tier(self, gen: Generation) -> None:
        """Put the tier back on the tables as they are now (under the _alock and the flock).

        Another process applied part or all of what the tier holds (a CLI command catching
        up, another server), or a flush failed half-way: the tier's decisions no longer sit
        on the tables' checkpoint. The events from that checkpoint to the tier's end are
        read from the log again and decided on the tables into a new tier, which replaces
        the old one whole -- so this process's readers never see less than before: until
        the swap they read the old view, which is the fold of the same log (of the
        partitions the tables have not passed; nothing, if an erasure was applied since).
        """
        await self._land()
        old = self._tier
        assert old is not None
        disk = gen.checkpoint()
        target = dict(old.end)
        self._reset_reader()
        if covers(disk, target):  # the tables hold everything the tier did
            self._tier = FreshTier(gen.path, disk)
            return
        floor = old.below.base if old.below is not None else old.base  # a failed write's
        erased = await asyncio.to_thread(_erased_since, gen, floor)
        old.view = _unpassed(old.view, disk, target, erased)
        new = FreshTier(gen.path, disk)
        reader = await self.log.reader(disk)
        must_flush = False
        try:
            deadline = time.monotonic() + REBUILD_TIMEOUT_S
            while not covers(new.end, target):
                if time.monotonic() > deadline:
                    raise LogUnavailableError(
                        f"could not read the log back to {sorted(target.items())} "
                        f"within {REBUILD_TIMEOUT_S:.0f}s to rebuild the fresh tier"
                    )
                records = [
                    r
                    for r in await reader.next_batch(self.batch_size, 0.5)
                    if r.position.offset < target.get(r.position.partition, 0)
                ]
                if records:
                    must_flush |= await self._applied(self._apply_into, gen, new, records)
        finally:
            await reader.close()
        self._tier = new
        if must_flush:
            await asyncio.to_thread(self._flush_sync, gen, new)

    # -- the loop ------------------------------------------------------------------------
    async def step(self, timeout_s: float = 0.0) -> int:
        """Read one batch and apply what no one has applied yet. Returns events applied."""
        async with self._alock:
            await self._commit_flushed(self._settle())  # a background flush finished
            gen = self.generation()
            if self._pending_read is not None:  # a read-ahead still under way: keep its records
                read, self._pending_read = self._pending_read, None
                await read
            disk = gen.checkpoint()
            if self.pinned is not None:  # replay --to-position: stays where it was pinned
                self.checkpoint = disk
                self._progress.set()
                await asyncio.sleep(timeout_s)  # as a read that found nothing would wait
                return 0
            self._tier_at(gen, disk)
            if self._stale_tier(gen, disk):
                async with self._flock():
                    await self._rebuild_tier(gen)
                disk = gen.checkpoint()
            applied = self._applied_upto(gen, disk)
            if self._reader is None or applied != self._unapplied_from():
                self._reset_reader()
                self._reader = await self.log.reader(applied, group_id=self._group_id())
                self._reader_next = dict(applied)
            batch = await self._next_batch(timeout_s)
            if not batch:
                self.checkpoint = applied
                tier = self._tier
                flushed = None
                if (
                    tier is not None
                    and self._flight is None
                    and tier.due(self.tier_rows, self.tier_age_s)
                ):  # nothing came: write the due tier in the background all the same
                    async with self._flock(beside_flight=True):
                        disk = gen.checkpoint()
                        if not self._stale_tier(gen, disk) and tier is self._tier:
                            await asyncio.to_thread(self._launch, gen, tier)
                    self.checkpoint = self._applied_upto(gen, gen.checkpoint())
                await self._commit_flushed(flushed)
                self._progress.set()
                return 0
            flushed = None
            async with self._flock(beside_flight=True):
                gen = self.generation()
                disk = gen.checkpoint()
                tier = self._tier_at(gen, disk)
                if self._stale_tier(gen, disk):  # another process applied meanwhile
                    await self._rebuild_tier(gen)
                    self.checkpoint = self._applied_upto(gen, gen.checkpoint())
                    self._progress.set()
                    return 0
                cp = self._applied_upto(gen, disk)
                fresh = [r for r in batch if r.position.offset >= cp.get(r.position.partition, 0)]
                firsts: dict[int, int] = {}
                for r in fresh:
                    firsts.setdefault(r.position.partition, r.position.offset)
                if any(first != cp.get(p, 0) for p, first in firsts.items()):
                    self._reset_reader()  # another process moved the checkpoint under us
                    self.checkpoint = cp
                    self._progress.set()
                    return 0
                fresh = self._admit(fresh, cp)
                if fresh:
                    if disk != self._wrote and self._flight is None:
                        # another process applied batches meanwhile (not while this one's
                        # background flush holds the flock: the checkpoint moved is its own)
                        self._keys_stale = True
                    apply: asyncio.Future[Offsets]
                    if tier is not None and self._bulk and not tier.pending:
                        # a bulk catch-up writes its large batches directly; an empty tier
                        # is made on the tables' new checkpoint by the next step
                        self._tier = tier = None
                    if tier is None:
                        apply = asyncio.ensure_future(
                            self._applied(self._apply_sync, gen, fresh, cp)
                        )
                    else:
                        apply = asyncio.ensure_future(
                            self._applied(self._apply_tier_sync, gen, tier, fresh)
                        )
                    try:
                        if self._background:
                            await self._read_ahead(apply)
                    finally:  # never leave the flock while the batch is being written
                        cp = await apply
                    written = gen.checkpoint()
                    if written != disk:
                        flushed = self._wrote = written
                self.checkpoint = cp
            await self._commit_flushed(flushed)
            self._progress.set()
            return len(fresh)

    def _admit(self, records: list[LogRecord], checkpoint: Offsets) -> list[LogRecord]:
        """Which of the next unapplied records (in log order, from `checkpoint`) this
        projector applies now: all of them. A subclass may apply a prefix (the rest stays
        for the next step, here or in another process) or raise before anything is
        written (memstream/light_writes.py applies only its own adds)."""
        return records

    async def _read(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        assert self._reader is not None
        records = await self._reader.next_batch(max_records, timeout_s)
        for rec in records:
            p = rec.position.partition
            self._reader_next[p] = max(self._reader_next.get(p, 0), rec.position.offset + 1)
        self._buffer += records
        self._seq_read += len(records)
        return records

    def _take(self, n: int) -> list[LogRecord]:
        batch, self._buffer = self._buffer[:n], self._buffer[n:]
        self._seq_taken += len(batch)
        return batch

    async def _next_batch(self, timeout_s: float) -> list[LogRecord]:
        """The next records to apply, in log order. With a costly model in background
        mode, only records whose texts were embedded ahead (see `_read_ahead`): the apply
        then only writes, while the model works on what came after."""
        if not (self._background and self.embedder.costly):
            if len(self._buffer) < self.batch_size:
                await self._read(
                    self.batch_size - len(self._buffer), 0 if self._buffer else timeout_s
                )
            return self._take(self.batch_size)
        if not self._buffer:
            await self._read(self.batch_size, timeout_s)
        self._start_embedding_ahead()
        while self._seq_ready <= self._seq_taken and self._ahead_task is not None:
            await asyncio.shield(self._ahead_task)
        return self._take(min(self._seq_ready - self._seq_taken, self.batch_size))

    def _unapplied_from(self) -> Offsets:
        """Where the reader's next unapplied record is: after what was read, before what is
        buffered. Equal to the disk checkpoint while this process is the one applying."""
        out = dict(self._reader_next)
        for rec in reversed(self._buffer):
            out[rec.position.partition] = rec.position.offset
        return out

    async def _read_ahead(self, apply: asyncio.Future[Offsets]) -> None:
        """While a batch is written (in its thread), read what the log receives meanwhile
        and have its texts embedded in another thread: the model works on batch k+1 while
        LanceDB writes batch k, instead of one after the other."""
        while not apply.done() and len(self._buffer) < self.batch_size:
            if self._pending_read is None:
                want = self.batch_size - len(self._buffer)
                self._pending_read = asyncio.ensure_future(self._read(want, 0.05))
            read = self._pending_read
            pending: list[asyncio.Future[Any]] = [apply, read]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                self._pending_read = None
                read.result()
                self._start_embedding_ahead()

    def _start_embedding_ahead(self) -> None:
        """Hand the buffered records the model has not seen to it, one batch at a time."""
        start = max(self._seq_submitted, self._seq_taken)
        if start >= self._seq_read or self._ahead_task is not None or not self.embedder.costly:
            return
        todo = self._buffer[start - self._seq_taken :]
        self._seq_submitted = self._seq_read
        self._ahead_task = asyncio.ensure_future(self._embed_ahead(todo, self._seq_read))

    async def _embed_ahead(self, records: list[LogRecord], upto: int) -> None:
        try:  # a key not loaded yet: that text is embedded by the apply instead
            await asyncio.to_thread(
                self._ahead.embed_records, records, self.keys.lookup, self.embedder
            )
        except Exception:  # only an optimisation: the apply embeds what is missing
            log.debug("embedding ahead failed", exc_info=True)
        finally:
            self._seq_ready = max(self._seq_ready, upto)
            self._ahead_task = None
        self._start_embedding_ahead()  # what was read meanwhile

    def _group_id(self) -> str:
        return f"memstream-projector-{self._gen_name}"

    async def wait_for(self, positions: Sequence[Position], timeout_s: float = 60.0) -> None:
        """Block until every position is applied (read-your-writes)."""
        await self._wait_until(required_offsets(positions), timeout_s)

    async def _wait_until(self, required: Offsets, timeout_s: float) -> None:
        """Block until the checkpoint covers `required` (next offset per partition)."""
        deadline = time.monotonic() + timeout_s
        stale = True  # look at the live generation (a replay may have swapped it) now and then
        while not covers(self.checkpoint, required):
            if stale:
                self.generation()
            if self.pinned is not None:
                if covers(self.pinned, required):
                    self.checkpoint = self.generation().checkpoint()
                    continue
                raise ConflictError(
                    f"events at {sorted(required.items())} are past the pinned log position "
                    f"{describe_pin(self.pinned)}: run `memstream replay` to unpin"
                )
            if time.monotonic() > deadline:
                raise ProjectionTimeout(
                    f"events at {sorted(required.items())} are durable in the log but were not "
                    f"projected within {timeout_s:.0f}s; they will appear once the projector catches up"
                )
            if self._background:
                stale = not await self._progress.wait(DISK_LOOK_S)
                if stale and not covers(self.checkpoint, required) and self._disk_look_due():
                    # no progress here for a while: another process may be the one
                    # projecting, so look at the disk (and this process's tier on it)
                    gen = self.generation()
                    looked = self._applied_upto(gen, gen.checkpoint())
                    if looked != self.checkpoint:
                        self.checkpoint = looked
                        self._progress.set()  # the other waiters: see what this look found
            elif self._alock.locked():
                # another waiter is stepping: let its batch cover us too (group commit)
                # instead of queueing for a step of our own that would apply almost nothing
                stale = not await self._progress.wait(0.05)
            else:
                await self.step(timeout_s=0.05)

    def _disk_look_due(self) -> bool:
        """Whether a waiter that saw no progress for DISK_LOOK_S should read the checkpoint
        from disk: once per DISK_LOOK_S for the whole process. All the waiting writers time
        out together when one model call outlasts DISK_LOOK_S (a batch of ~40 MiniLM texts
        on 2 cores), and each reading the checkpoint file was 64 reads and JSON parses per
        timeout on the event loop with 64 writers, the CPU the model needed. One look
        serves them all: it updates the shared checkpoint and wakes them."""
        now = time.monotonic()
        if now - self._disk_looked_at < DISK_LOOK_S:
            return False
        self._disk_looked_at = now
        return True

    def decided(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The audit rows (the projector's decisions) this process wrote recently, by id."""
        return self._recent.get(event_ids)

    def note_appended(self, positions: Sequence[Position]) -> None:
        """Remember positions this process's writers appended (see `catch_up_own`)."""
        for p, o in required_offsets(positions).items():
            self.appended[p] = max(self.appended.get(p, 0), o)

    async def catch_up_own(self, timeout_s: float = 600.0) -> None:
        """Until everything this process appended is applied: read-your-writes without
        waiting for other processes' backlog (on a pinned generation: nothing)."""
        self.generation()
        if self.pinned is None and self.appended:
            await self._wait_until(dict(self.appended), timeout_s)

    async def catch_up(self, timeout_s: float = 600.0, *, flush: bool = True) -> Offsets:
        """Apply everything appended so far (on a pinned generation: nothing), and with
        `flush` write the fresh tier too: the caller reads the tables themselves. A caller
        that reads through MemoryReader's get/get_all/search/history (which merge the tier)
        passes flush=False."""
        self.generation()
        if self.pinned is not None:
            return self.checkpoint
        end = await self.log.end_offsets()
        required = {p: o for p, o in end.items() if o > 0}
        backlog = sum(max(0, o - self.checkpoint.get(p, 0)) for p, o in required.items())
        bulk = not self._background and backlog >= BULK_BACKLOG and columnar.enabled()
        if bulk:  # a cold start or a long pause: batches as a replay's (see `step`)
            if not self._bulk_callers:  # the first of concurrent bulk catch-ups
                self._live_batch_size = self.batch_size
            self._bulk_callers += 1
            self._bulk, self.batch_size = True, max(self._live_batch_size, REPLAY_BATCH)
        try:
            with _fewer_collections() if bulk else contextlib.nullcontext():
                await self._wait_until(required, timeout_s)
        finally:
            if bulk:
                self._bulk_callers -= 1
                if not self._bulk_callers:  # the last one puts the live batch size back
                    self._bulk, self.batch_size = False, self._live_batch_size
        if flush:
            await self.flush_tier()
        return self.checkpoint

    async def run_forever(self, stop: asyncio.Event) -> None:
        self._background = True
        corrupt: str | None = None
        try:
            while not stop.is_set():
                try:
                    await self.step(timeout_s=0.2)
                    corrupt = None
                except LogCorruptError as exc:  # wait for `memstream log repair`, then go on
                    if exc.message != corrupt:
                        log.error("projector stopped at damage in the log: %s", exc.message)
                    corrupt = exc.message
                    self._reset_reader()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                except LogUnavailableError as exc:  # the broker is away: wait for it
                    log.warning("projector: %s; retrying in 1 s", exc.message)
                    self._reset_reader()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                except MemstreamError:
                    raise
                except Exception:  # keep serving reads; retry the batch after a pause
                    log.exception("projector step failed; retrying")
                    self._reset_reader()
                    await asyncio.sleep(1.0)
        finally:
            self._background = False

    async def close(self) -> None:
        try:  # the log keeps the tier's events: a failure here loses nothing
            await self.flush_tier()
        except Exception:
            log.exception("could not write the fresh tier at close; the next start applies it")
        if self._flight is not None:  # the flush above failed before landing it
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(self._flight)
        self._flusher.shutdown(wait=True)
        ahead, self._ahead_task = self._ahead_task, None
        if ahead is not None:
            await asyncio.gather(ahead, return_exceptions=True)
        if self._pending_read is not None:
            self._pending_read.cancel()
            await asyncio.gather(self._pending_read, return_exceptions=True)
            self._pending_read = None
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        with contextlib.suppress(Exception):  # the cache is an optimisation: never fail close
            await asyncio.to_thread(self.cache.flush)
        os.close(self._lock_fd)

    # -- applying ------------------------------------------------------------------------
    async def _applied(self, apply: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run `apply` (a batch) in a worker thread with the key store as fresh as it must be.

        A refresh costs a broker round trip with Kafka (~4 ms, tens under load, and it was
        on every batch's critical path), so it is done only when needed: when the batch
        has events sealed under keys not loaded (made by another process; the batch is then
        applied again), and before the first batch after an erasure was applied, here or by
        another process (its keys were destroyed before it was appended: events opened
        after it must see them gone). An event opened with a destroyed key before the
        erasure is applied is scrubbed when it is, as if it had been applied earlier.
        """
        self._loop = asyncio.get_running_loop()  # for dead letters sent from the worker
        fresh = self._keys_stale
        if fresh:
            await self.keys.refresh()
            self._keys_stale = False  # only once it succeeded: a failed refresh is retried
        try:
            return await asyncio.to_thread(apply, *args, keys_fresh=fresh, **kwargs)
        except _KeysUnseen:
            await self.keys.refresh()
            return await asyncio.to_thread(apply, *args, keys_fresh=True, **kwargs)

    def _apply_sync(
        self, gen: Generation, records: list[LogRecord], cp: Offsets, *, keys_fresh: bool
    ) -> Offsets:
        """Apply a live batch (in a worker thread, under the flock)."""
        index = self._index_for(gen)
        new_cp = self._apply_batch(gen, records, cp, index, live=True, keys_fresh=keys_fresh)
        # a table's fragment statistics cost a LanceDB call each: look every few batches
        # (and on a process's first batch, so short-lived CLI processes compact too)
        if self._batches % MAINTAIN_EVERY == 0:
            self.maintain(gen)
        self._batches += 1
        if index is not None:  # what the index describes: the tables as this batch left them
            self._index_at = (gen.path, table_versions(gen, self.cache))
        return new_cp

    def _index_for(self, gen: Generation) -> TableIndex | None:
        """The live generation's `TableIndex`, if it can be trusted: the tables are at the
        versions this process's last batch left them at (another writer -- a CLI command
        sharing the data directory, a crashed process's half-written batch -- moves them).
        Otherwise it is rebuilt by a scan when that pays -- in a long-running projector
        (the background one, or any that has applied a couple of batches; a one-shot CLI
        command reads instead), at most every `RESCAN_EVERY` batches so that a process
        taking turns with another writer does not scan every time -- and the batch reads
        the tables for every key when it is not."""
        if self._index is not None and self._index_at == (
            gen.path,
            table_versions(gen, self.cache),
        ):
            return self._index
        self._index = self._index_at = None
        long_running = (
            self._background or self._bulk or self._batches >= 2 or self._tier_applies >= 2
        )
        due = self._scanned_at is None or self._batches - self._scanned_at >= RESCAN_EVERY
        if long_running and due:
            self._index = TableIndex.scan(gen.memories(), gen.events(), self.cache.table())
            self._scanned_at = self._batches
        return self._index

    def _open(
        self, records: list[LogRecord], keys_fresh: bool
    ) -> tuple[list[tuple[Event, Position]], list[tuple[LogRecord, str]]]:
        """Decode a batch: its events, and its poison records (quarantine markers counted).
        Unless `keys_fresh`, an event whose key is not found raises _KeysUnseen."""
        events: list[tuple[Event, Position]] = []
        poison: list[tuple[LogRecord, str]] = []
        markers = 0
        for r in records:
            event, reason = open_record(r, self.keys.lookup)
            if event is not None:
                events.append((event, r.position))
            elif reason is None:
                markers += 1
            else:
                poison.append((r, reason))
        if not keys_fresh and any(e.erased for e, _ in events):
            raise _KeysUnseen
        self.poison.quarantined += markers
        return events, poison

    def _load(
        self,
        gen: Generation,
        state: BatchState,
        events: list[tuple[Event, Position]],
        index: TableIndex | None,
        applied: Container[str] = (),
    ) -> dict[str, str]:
        """Load into `state` the table rows the events touch (not those `state` holds
        already: a tier's rows are newer than the table's), by id and by text hash; return
        the outcomes the events table already records for these events. `applied`: the
        events a fresh tier decided into `state` before (see decisions.load_settled)."""
        ids = [e.memory_id for e, _ in events if e.memory_id and e.memory_id not in state.rows]
        adds = [e for e, _ in events if isinstance(e, MemoryAdded)]
        eids = [e.event_id for e, _ in events]
        if index is None:
            load_ids, load_hashes, known_eids = ids, {e.hash for e in adds}, eids
        else:
            load_ids = index.ids.known(ids)
            load_hashes = {e.hash for e in index.keys.known_of(adds, event_key)}
            known_eids = index.events.known(eids)
        where = " OR ".join(
            p for p in (sql_in("id", load_ids), sql_in("hash", load_hashes)) if p != "false"
        )
        if where:
            for row in gen.query_memories(where):
                state.load(row)
        decided: dict[str, str] = {}
        if known_eids:
            decided = {
                row["event_id"]: row["outcome"]
                for row in gen.query_events(sql_in("event_id", known_eids))
            }
        load_settled(gen, state, events, applied)  # async adds: the first settling applies
        return decided

    def _apply_tier_sync(
        self, gen: Generation, tier: FreshTier, records: list[LogRecord], *, keys_fresh: bool
    ) -> Offsets:
        """Apply a live batch into the tier (in a worker thread, under the flock). When the
        batch must be written at once, the tier is flushed now (after the background write
        of the frozen tier beneath, if one is under way); when the tier is only due, it is
        frozen and written in the background (`_launch`): the batch's waiters are released
        at once, and the next batches are decided meanwhile."""
        if self._apply_into(gen, tier, records, keys_fresh=keys_fresh):
            self._wait_flight()
            if tier.broken:  # the tables moved under the frozen tier: the next step rebuilds
                return dict(tier.end)
            return self._flush_sync(gen, tier)
        if tier.due(self.tier_rows, self.tier_age_s):
            if self._flight is not None and len(tier.eids) >= FLIGHT_BACKLOG * self.tier_rows:
                self._wait_flight()  # the writes fall behind: let the tier grow no further
            self._settle()
            if self._flight is None and not tier.broken and tier is self._tier:
                self._launch(gen, tier)
        return dict(tier.end)

    def _apply_into(
        self, gen: Generation, tier: FreshTier, records: list[LogRecord], *, keys_fresh: bool
    ) -> bool:
        """Decide a batch into the tier's state and publish it to this process's readers;
        True when the batch must be written at once (see tier.holds).

        The texts are embedded before anything in the tier changes, so a failing model
        leaves the tier as it was (the batch is retried); deciding itself does no I/O."""
        events, poison = self._open(records, keys_fresh)
        if poison:
            self._dead_letter(poison)
        # the tables' versions (and the index of what they hold) are looked at once per
        # tier, not once per batch: they cannot change while the checkpoint stays at the
        # tier's base, except by another process's half-written batch -- which the flush
        # sees (`tables_at`) and answers by rebuilding the tier on what the tables hold
        if tier.below is None and (
            tier.tables_at is None or (tier.index is None and self._tier_applies == 2)
        ):
            # (and once more when the process turns out to be long-running: _index_for
            # then scans; the index is kept only if it describes the tables the tier read)
            index = self._index_for(gen)
            versions = _versions(gen)
            if tier.tables_at is None:
                tier.tables_at = versions
            if versions == tier.tables_at:
                tier.index = index
        index = tier.index
        self._tier_applies += 1
        state = tier.state
        decided = self._load(gen, state, events, index, tier.applied)
        texts = [
            e.text
            for e, _ in events
            if isinstance(e, MemoryAdded | MemoryUpdated) and e.text is not None and not e.erased
        ]
        found = self.embed_texts(
            texts, defer=True, cached=index.cached if index is not None else None
        )
        vectors = {text_hash(t): v for t, v in zip(texts, found, strict=True)}
        audits = [apply_event(state, e, pos, decided.get(e.event_id)) for e, pos in events]
        for mid in state.needs_vector:
            row = state.rows[mid]
            if row is not None:  # a row this batch made: no reader holds it yet
                key = text_hash(row["text"])
                vec = vectors.get(key)
                row["vector"] = vec if vec is not None else self.embed_texts([row["text"]])[0]
        state.needs_vector.clear()
        self._recent.record(audits)
        tier.absorb(records, [e for e, _ in events], audits, decided)
        self._count_projected(gen, events, len(records))
        changed = list(state.changed) if state.erasures else [e.memory_id or "" for e, _ in events]
        tier.publish(changed)
        return bool(poison) or not holds(e for e, _ in events)

    def _count_projected(
        self, gen: Generation, events: list[tuple[Event, Position]], batch: int
    ) -> None:
        """Count the events a tier batch applied (searchable from now on: that is what
        "projected" means to an operator), each once however often the tier is rebuilt."""
        path, upto = self._counted
        if path != gen.path:
            path, upto = gen.path, {}
        kinds = [e.event_type for e, pos in events if pos.offset >= upto.get(pos.partition, 0)]
        for _, pos in events:
            upto[pos.partition] = max(upto.get(pos.partition, 0), pos.offset + 1)
        self._counted = (path, upto)
        metrics.count_projected(kinds, batch)

    def _flush_sync(self, gen: Generation, tier: FreshTier) -> Offsets:
        """Write the tier to the tables in one batch (in a worker thread, under the flock):
        audit rows, memories, policies, erasure scrubs, then the checkpoint. A failure
        leaves the tier marked broken (the tables may hold part of it): it is rebuilt
        from the log before anything else is applied or flushed (see _rebuild_tier)."""
        assert tier.below is None  # the frozen tier beneath is written first (_wait_flight)
        state = tier.state
        if tier.tables_at is not None and _versions(gen) != tier.tables_at:
            # another process wrote the tables without moving the checkpoint (it died
            # half-way through a batch): the tier's loads are stale, rebuild it first
            tier.broken = True
            return dict(tier.end)
        index = tier.index if tier.tables_at is not None else self._index_for(gen)
        try:
            write_rows(gen, state, tier.audits, tier.decided, {}, append=True)
            self._scrub(gen, state)
            if index is not None:
                index.record(tier.eids, state.upserts())
            gen.write_checkpoint(tier.end)
        except BaseException:
            tier.broken = True
            raise
        if state.erasures:
            self._keys_stale = True
        self._wrote = dict(tier.end)
        self._tier = FreshTier(gen.path, tier.end)
        if self._batches % MAINTAIN_EVERY == 0:
            self.maintain(gen)
        self._batches += 1
        if index is not None:
            self._index_at = (gen.path, table_versions(gen, self.cache))
        return dict(tier.end)

    def _apply_batch(
        self,
        gen: Generation,
        records: list[LogRecord],
        cp: Offsets,
        index: TableIndex | None,
        *,
        live: bool,
        keys_fresh: bool = True,
        rewrite: Rewrite | None = None,
    ) -> Offsets:
        """Decode, decide and write one batch; returns the new checkpoint (written last).

        The batch needs the rows its events touch and the decisions already recorded for
        its events. With an `index` (see projector/index.py) the tables are read only for
        the keys they may hold -- none, when every event is a new memory -- and rows the
        table cannot hold are appended rather than merged; without one, every key is read.
        A replay passes the index of what it has written to its new generation so far.
        Unless `keys_fresh`, an event whose key is not found raises _KeysUnseen (see
        `_applied`) instead of being applied as erased. `rewrite` (a reinfer candidate's
        fold, projector/candidate.py) changes the decoded events before they are applied.
        """
        if rewrite is None and index is not None and columnar.enabled():
            return self._apply_columnar(gen, records, cp, index, live=live, keys_fresh=keys_fresh)
        events, poison = self._open(records, keys_fresh)
        if rewrite is not None:
            events = rewrite(events)
        if poison:
            self._dead_letter(poison)
        eids = [e.event_id for e, _ in events]
        state = BatchState()
        decided = self._load(gen, state, events, index)
        audits = [apply_event(state, e, pos, decided.get(e.event_id)) for e, pos in events]
        vectors = self._vectors(state, index.cached if live and index is not None else None)
        if live:
            self._recent.record(audits)
        write_rows(gen, state, audits, decided, vectors, append=True)
        self._scrub(gen, state)
        if state.erasures:
            self._keys_stale = True
        if index is not None:
            index.record(eids, state.upserts())
        return self._written(gen, records, cp, [e.event_type for e, _ in events])

    def _written(
        self, gen: Generation, records: list[LogRecord], cp: Offsets, kinds: list[str]
    ) -> Offsets:
        """The end of `_apply_batch`: the checkpoint past `records`, written, and counted."""
        new_cp = dict(cp)
        for r in records:
            p = r.position.partition
            new_cp[p] = max(new_cp.get(p, 0), r.position.offset + 1)
        gen.write_checkpoint(new_cp)
        # counted once the batch is written: a batch retried after a failure counts once
        metrics.count_projected(kinds, len(kinds))
        return new_cp

    def _apply_columnar(
        self,
        gen: Generation,
        records: list[LogRecord],
        cp: Offsets,
        index: TableIndex,
        *,
        live: bool,
        keys_fresh: bool,
    ) -> Offsets:
        """`_apply_batch` with the batch's new memories applied column-wise
        (projector/columnar.py) and every other event as `_apply_batch` applies it."""
        items, poison = self._open_items(records, keys_fresh)
        if poison:
            self._dead_letter(poison)
        events, slow_at, new = columnar.split(items, index)
        state = BatchState()
        decided = self._load(gen, state, events, index)
        audits = [apply_event(state, e, pos, decided.get(e.event_id)) for e, pos in events]
        cached = index.cached if live else None
        vectors = self._vectors(state, cached)
        fresh_memories = None
        parts = []
        if new:
            texts = new.texts()
            found = self.embed_texts(texts, defer=len(texts) < FLUSH_ITEMS, cached=cached)
            fresh_memories = columnar.memory_table(new, found, gen.dim)
            parts.append((columnar.audit_table(new), new.at))
        seen: set[str] = set(decided)
        kept, kept_at = [], []
        for row, at in zip(audits, slow_at, strict=True):
            if row["event_id"] not in seen:  # as write_rows appends them
                seen.add(row["event_id"])
                kept.append(row)
                kept_at.append(at)
        if kept:
            parts.append((arrow_table(kept, EVENTS_SCHEMA), kept_at))
        if live:
            self._recent.record(audits)
            if new:  # only the newest RECENT_DECISIONS are kept: build no more dicts
                fast = parts[0][0]
                self._recent.record(fast.slice(max(0, len(fast) - RECENT_DECISIONS)).to_pylist())
        audit_rows = columnar.in_log_order(parts) if parts else None
        write_rows(gen, state, audits, decided, vectors, append=True, audit_rows=audit_rows,
                   new_memories=fresh_memories)  # fmt: skip
        self._scrub(gen, state)
        if state.erasures:
            self._keys_stale = True
        index.record([e.event_id for e, _ in events], state.upserts())
        if new:
            index.events.add(new.event_ids())
            index.ids.add(new.ids())
            index.keys.add(new.keys)
        kinds = [e.event_type for e, _ in events] + ["MemoryAdded"] * len(new)
        return self._written(gen, records, cp, kinds)

    def _open_items(
        self, records: list[LogRecord], keys_fresh: bool
    ) -> tuple[list[tuple[Position, Event | columnar.Raw]], list[tuple[LogRecord, str]]]:
        """`_open` for the column-wise path: MemoryAdded records that may be applied
        column-wise stay the opened Avro records they are (no `Event` is built)."""
        items: list[tuple[Position, Event | columnar.Raw]] = []
        poison: list[tuple[LogRecord, str]] = []
        markers = 0
        erased = False
        lookup = self.keys.lookup
        memo: dict[tuple[Any, ...], Any] = {}  # the batch's keys, by scope and key id
        for r in records:
            decoded, reason = decode_opened(r, lookup, memo)
            if decoded is None:
                if reason is None:
                    markers += 1
                else:
                    poison.append((r, reason))
                continue
            name, record, was_erased = decoded
            if name == columnar.ADDED and not was_erased and columnar.plausible_add(record):
                items.append((r.position, record))
                continue
            event, reason = checked(name, record, was_erased)
            if event is None:
                assert reason is not None
                poison.append((r, reason))
                continue
            erased |= event.erased
            items.append((r.position, event))
        if not keys_fresh and erased:
            raise _KeysUnseen
        self.poison.quarantined += markers
        return items, poison

    def _dead_letter(self, poison: list[tuple[LogRecord, str]]) -> None:
        """Hand poison records to the log's dead-letter sink (projector/poison.py) before the
        checkpoint moves past them; called from the apply's worker thread."""
        for record, reason in poison:
            log.warning(
                "poison record at %d:%d set aside to the dead-letter sink: %s",
                record.position.partition, record.position.offset, reason,
            )  # fmt: skip
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.log.dead_letter(poison), self._loop).result(120)
        for _, reason in poison:
            self.poison.add(reason)

    def _erase_dead_letters(self, subject: Subject) -> None:
        """Remove the subject's records from the log's dead-letter sink: copies of log bytes
        that hold its ids, and possibly its text (memstream.log.dead_letters)."""
        assert self._loop is not None
        removed = asyncio.run_coroutine_threadsafe(
            self.log.erase_dead_letters(subject), self._loop
        ).result(120)
        if removed:
            log.info("erasure removed %d dead-lettered record(s) of the subject", removed)

    def maintain(self, gen: Generation, *, force: bool = False, unread: bool = False) -> None:
        """Compact small fragments, fold new rows into the scalar indexes, and delete table
        versions older than `keep_versions` (all but the latest when `unread`: a replay's
        generation before it is promoted, which no one reads yet).

        Decided from each table's own fragment statistics, not a per-process counter, so
        many short-lived CLI processes compact as well as one long-running server.
        """
        # `force` (a replay's end) compacts the generation's tables; the embedding cache,
        # which a replay does not rewrite and the live generation's readers share, is
        # compacted only when it is due, keeping keep_versions of its versions
        keep = dt.timedelta(0) if unread else self.keep_versions
        tables = [(gen.memories(), force, keep, unread), (gen.events(), force, keep, unread)]
        if force:
            tables.append((gen.policies(), force, keep, unread))
        tables.append((self.cache.table(), False, self.keep_versions, False))
        due = [
            (table, forced, cleanup, unverified)
            for table, forced, cleanup, unverified in tables
            if table is not None and (forced or compaction.due(table, first_index(table)))
        ]
        if not force:
            # upkeep between writes compacts one table a pass (the first due; the others
            # stay due for the next pass): run inside a background write of the fresh tier,
            # three tables at once took 2.5 s in the stream and the tier waited behind it
            # (bench/README.md, round 8, section 4)
            due = due[:1]
        self.cache.flush()
        # a generation a replay replaced waits out its grace period for readers still on
        # it; without this it would stay on disk until the next promote
        self.store.drop_retired(older_than_s=RETIRED_GRACE_S)
        if due or force:
            gen.ensure_indexes(vectors=force)  # a replay's end: no writer waits on it
            self.cache.ensure_index()
        for table, forced, cleanup, unverified in due:
            compaction.compact(
                table, first_index(table), keep=cleanup, unread=unverified, full=forced
            )

    def _maintain_cache(self) -> None:
        """Compact and index the embedding cache if it is due (see compaction.due): a bulk
        catch-up leaves its last rows unindexed, and at 1M keys that made each 10,000-key
        lookup of a replay ~3x slower (1.56 s vs 0.5 s; ~100 s over a 1M replay)."""
        table = self.cache.table()
        if table is None:
            return
        self.cache.flush()
        self.cache.ensure_index()
        index = first_index(table)
        if compaction.due(table, index):
            compaction.compact(table, index, keep=self.keep_versions, unread=False)

    def _scrub(self, gen: Generation, state: BatchState) -> None:
        """Apply the batch's erasures to the tables it wrote (after `_write`, before the
        checkpoint, so a crash re-applies them), and make them physical."""
        if not state.erasures:
            return
        for erased in state.erasures:
            erasure.scrub(gen, self.cache, self.data_dir, erased)
            self._recent.forget(erased.subject())
            self._erase_dead_letters(erased.subject())
        if gen is self._gen:
            self._scrub_candidates(state.erasures)
            erasure.purge_all(gen, self.cache)
            self.store.drop_retired()  # a replaced generation still holds the plaintext
            self.store.drop_abandoned()  # and so does one a killed replay left
            drop_scratch(self.data_dir)  # and a crashed export's scratch files
        else:  # a replay's generation: purged once, before it is promoted
            self._unpurged.add(gen.path)
            if (cache_table := self.cache.table()) is not None:  # the cache is live
                erasure.purge(cache_table)

    def _scrub_candidates(self, erasures: list[SubjectErased]) -> None:
        """Reinfer candidates (projector/candidate.py) are derived from the same log: the
        live generation's erasures are applied to them too. One that cannot be scrubbed is
        deleted instead (it can be rebuilt from the log), never left holding the text, and
        never in the way of the live projection."""
        for name in self.store.candidates():
            try:
                other = self.store.open(name)
                for erased in erasures:
                    erasure.scrub(other, self.cache, self.data_dir, erased)
                erasure.purge_generation(other)
            except Exception:
                log.exception("could not scrub the reinfer candidate %s: deleting it", name)
                self.store.drop(name)

    def _vectors(self, state: BatchState, cached: DigestSet | None) -> dict[str, np.ndarray]:
        """The vectors of the rows whose text this batch set (id -> vector)."""
        rows = [r for mid in state.needs_vector if (r := state.rows[mid]) is not None]
        if not rows:
            return {}
        texts = [r["text"] for r in rows]
        vectors = self.embed_texts(texts, defer=len(rows) < FLUSH_ITEMS, cached=cached)
        return {row["id"]: vec for row, vec in zip(rows, vectors, strict=True)}

    def embed_texts(
        self, texts: list[str], *, defer: bool = False, cached: DigestSet | None = None
    ) -> np.ndarray:
        """Embed through the (model, sha256(text)) cache; only misses reach the model.
        `defer`: new vectors may wait in memory for a later cache write (see put_many).
        `cached`: every key the cache table holds (see TableIndex), to skip lookups."""
        keys = [text_hash(t) for t in texts]
        fresh = self._ahead.take(keys)  # embedded ahead (see _read_ahead): new vectors too
        found = {**fresh, **self.cache.get_many(sorted(set(keys) - set(fresh)), cached)}
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if missing:
            vecs = self.embedder.embed([t for _, t in missing])
            fresh.update((k, v) for (k, _), v in zip(missing, vecs, strict=True))
        if fresh:
            self.cache.put_many(fresh, defer=defer)
            if cached is not None:  # held in memory until flushed: a superset is safe
                cached.add(list(fresh))
            found.update(fresh)
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    # -- replay --------------------------------------------------------------------------
    async def replay(
        self, progress: Callable[[int, int], Any] | None = None, *, to: Offsets | None = None
    ) -> Generation:
        """Rebuild every projection from offset 0 into a fresh generation, then swap it in.

        `to` (next offset per partition, i.e. up to and including offset to[p] - 1): rebuild
        only that prefix of the log and pin the generation there (see `check_writable`);
        every partition holding events must be named. Without `to`: to the end, unpinned.
        """
        async with self._alock:
            end = await self.log.end_offsets()
            if to is not None:
                to = {p: o for p, o in to.items()}
                for p, o in sorted(to.items()):
                    if o > end.get(p, 0):
                        raise ValidationError(
                            f"--to-position: the log has no position {p}:{o - 1} "
                            f"(partition {p} ends at offset {end.get(p, 0) - 1})"
                        )
                if unnamed := sorted(p for p, o in end.items() if o > 0 and p not in to):
                    raise ValidationError(
                        "--to-position: name a position on every partition that holds events "
                        f"(partition(s) {', '.join(map(str, unnamed))} too), e.g. "
                        + ",".join(f"{p}:{max(o - 1, 0)}" for p, o in sorted(end.items()))
                    )
            new = self.store.new_generation(pinned=to)
            self._keys_stale = True  # a replay opens every event: start from a fresh store
            try:
                with _fewer_collections():
                    await self._rebuild(new, end, to, progress)
            except BaseException:
                self._unpurged.discard(new.path)
                self.store.abandon(new.path.name)  # no half-built copy of the data stays
                raise
            self._gen = None
        self.generation()
        return new

    async def build_candidate(
        self,
        rewrite: Rewrite,
        marker: Callable[[Offsets], dict[str, Any]],
        progress: Callable[[int, int], Any] | None = None,
    ) -> Generation:
        """Fold the whole log through `rewrite` into a new generation that is never promoted
        but kept as a candidate (`ProjectionStore.mark_candidate`, with `marker(checkpoint)`).
        Finished under the flock at the log's end, as a replay is: an erasure appended
        before that is folded in, one appended after it scrubs the candidate (`_scrub`)."""
        async with self._alock:
            end = await self.log.end_offsets()
            new = self.store.new_generation()
            self._keys_stale = True
            try:
                with _fewer_collections():
                    await self._rebuild(
                        new, end, None, progress, rewrite=rewrite,
                        finish=lambda gen: self.store.mark_candidate(
                            gen.path.name, marker(gen.checkpoint())
                        ),
                    )  # fmt: skip
            except BaseException:
                self._unpurged.discard(new.path)
                self.store.abandon(new.path.name)
                raise
        return new

    async def drop_candidate(self, name: str) -> None:
        """Delete a candidate generation, under the flock (an erasure may be scrubbing it)."""
        async with self._alock, self._flock():
            self.store.drop(name)

    async def _rebuild(
        self,
        new: Generation,
        end: Offsets,
        to: Offsets | None,
        progress: Callable[[int, int], Any] | None,
        *,
        rewrite: Rewrite | None = None,
        finish: Callable[[Generation], None] | None = None,
    ) -> None:
        """Apply the log from offset 0 to `to` (or its end) into `new`, then promote it (or
        hand it to `finish`, under the flock)."""
        async with self._flock():  # the replay looks up every text's vector in the cache
            await asyncio.to_thread(self._maintain_cache)
        reader = await self.log.reader({})
        try:
            target = dict(to) if to is not None else end
            total = sum(target.values())
            done = 0
            cp: Offsets = {}
            written = TableIndex()
            while True:
                if covers(cp, target):
                    async with self._flock():
                        if to is None:
                            target = await self.log.end_offsets()
                        if covers(cp, target):
                            # nobody reads the new generation yet: put each scope's
                            # memories side by side (projector/cluster.py), then keep
                            # its latest version only (the replay's own batches and
                            # compactions would otherwise stay on disk for keep_versions)
                            cluster.rewrite_sorted(new.memories())
                            self.maintain(new, force=True, unread=True)
                            if new.path in self._unpurged:
                                erasure.purge_all(new, self.cache)
                                self._unpurged.discard(new.path)
                            if finish is None:
                                self.store.promote(new.path.name)
                            else:
                                finish(new)
                            break
                batch = await reader.next_batch(max(self.batch_size, REPLAY_BATCH), timeout_s=0.5)
                if to is not None:  # nothing past the pinned position
                    batch = [
                        r for r in batch if r.position.offset < to.get(r.position.partition, 0)
                    ]
                if batch:
                    cp = await self._applied(
                        self._apply_batch, new, batch, cp, written, live=False, rewrite=rewrite
                    )
                    done += len(batch)
                    if progress is not None:
                        progress(done, max(total, done))
        finally:
            await reader.close()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often. A replay allocates a dozen objects an
    event and frees nearly all of them by reference counting; at the default gen-0
    threshold (700) the collector ran every ~60 events and cost 8-18% of a replay
    (alternating runs of 50k events: 7,039 -> 8,323/s, 8,610 -> 9,694, 8,879 -> 9,599).
    Process-wide, so only for the replay's duration."""
    before = gc.get_threshold()
    gc.set_threshold(REPLAY_GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _unpassed(view: TierView, disk: Offsets, end: Offsets, erased: bool) -> TierView:
    """The part of a stale tier's view readers may still use while it is rebuilt: the rows
    of partitions the tables have not reached the tier's end on (the others' table rows are
    as new or newer); nothing once an erasure was applied since the tier's base."""
    if erased:
        return TierView(view.gen)
    keep = {p for p, o in end.items() if disk.get(p, 0) < o}

    def kept(row: dict[str, Any] | None, mid: str) -> bool:
        part = row["partition"] if row is not None else None
        return part is None or part in keep

    rows = {mid: row for mid, row in view.rows.items() if kept(row, mid)}
    audits = tuple(a for a in view.audits if a["partition"] in keep)
    return TierView(view.gen, rows, audits, view.by)


def _erased_since(gen: Generation, base: Offsets) -> bool:
    """Whether the events table records an erasure at or after `base` (applied by another
    process while this one's tier was built on `base`). Erasures are rare: all are read."""
    return any(
        row["offset"] >= base.get(row["partition"], 0)
        for row in gen.query_events("event_type = 'SubjectErased'")
    )


def _versions(gen: Generation) -> tuple[int | None, ...]:
    """The versions of the tables a tier's decisions were read from (memories, events)."""
    return versions_of((gen.memories(), gen.events()))
