"""`Memstream`: one object that wires log -> projector -> LanceDB -> query for an edge.

The CLI, the REST server and Python users all hold one of these; each method is a thin
delegation to the writer or reader, so the logic lives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memstream import metrics
from memstream.embedders import get_embedder
from memstream.embedders.base import Embedder
from memstream.embedders.timed import timed
from memstream.errors import LogCorruptError, MemstreamError, UnavailableError
from memstream.events import Actor, FeedbackGiven
from memstream.fsutil import drop_scratch
from memstream.keystore.base import KeyStore
from memstream.keystore.master import MasterKeys, load_master_keys
from memstream.llm import LLM, get_llm
from memstream.log.base import EventLog, Offsets, Position
from memstream.log.checkpoint import (
    CheckpointStore,
    VerifyReport,
    advance_heads,
    load_signing_key,
)
from memstream.log.checkpoint import verify as verify_log
from memstream.models import UNSET, HistoryEntry, MemoryView, Page, Tenant, WriteResult
from memstream.producers.inference import (
    InferenceWriter,
    ProjectSettings,
    ProjectSettingsWriter,
    SettingsCache,
)
from memstream.producers.proposals import Proposals, ReinferPlan
from memstream.producers.reinfer import MAX_CONVERSATIONS, Reinferrer
from memstream.producers.resume import AsyncAdds, RetryPolicy
from memstream.producers.writer import MemoryWriter, RetentionWriter, SubjectEraser
from memstream.projector.projector import Projector, covers
from memstream.projector.store import Generation, live_embedder
from memstream.query.explain import Settlement, caused_by_messages, settlement
from memstream.query.reader import MemoryReader
from memstream.settings import Settings
from memstream.webhooks import Webhooks

logger = logging.getLogger("memstream")
DEFAULT_EMBEDDER = "minilm"
# how long the webhook dispatcher waits for the projection to decide a batch; past it the
# worker is restarted (and waits again), so a receiver is never told of an undecided change
WEBHOOK_WAIT_S = 60.0


def open_log(settings: Settings) -> EventLog:
    if settings.kafka_bootstrap:
        from memstream.log.kafka import KafkaEventLog

        return KafkaEventLog(
            settings.kafka_bootstrap,
            topic=settings.topic,
            partitions=settings.partitions,
            append_timeout_s=settings.append_timeout_s,
            master_keys=master_keys(settings),
        )
    from memstream.log.file import FileEventLog

    return FileEventLog(settings.data_dir / "log")


def master_keys(settings: Settings) -> MasterKeys:
    """The master key(s) wrapping the subject keys on Kafka (memstream.keystore.master)."""
    return load_master_keys(
        key=settings.master_key,
        key_file=settings.master_key_file,
        data_dir=Path(settings.data_dir),
        previous=settings.master_key_previous,
    )


class Memstream:
    """The memory ledger. Use as `async with Memstream(settings) as ms: ...`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        log: EventLog | None = None,
        llm: LLM | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.data_dir = Path(self.settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        spec = self.settings.embedder or live_embedder(self.data_dir) or DEFAULT_EMBEDDER
        self.embedder = timed(embedder or get_embedder(spec))
        self.log = log or open_log(self.settings)
        self.projector = Projector(
            self.data_dir,
            self.log,
            self.embedder,
            keep_versions=dt.timedelta(seconds=self.settings.keep_versions_s),
            tier_rows=self.settings.tier_rows,
            tier_age_s=self.settings.tier_age_s,
        )
        self.reader = MemoryReader(self.projector)
        limits = self.settings.limits
        self.writer = MemoryWriter(self.log, self.projector, self.reader, limits)
        self.retention = RetentionWriter(self.log, self.projector, self.reader, limits)
        self.eraser = SubjectEraser(self.log, self.projector, self.reader, limits)
        # inference: None when no LLM is configured (infer=True then stores messages verbatim)
        self.llm: LLM | None = llm if llm is not None else get_llm(self.settings)
        settings_cache = SettingsCache(self.projector)
        self.inference = (
            InferenceWriter(self.log, self.projector, self.reader, self.llm, settings_cache)
            if self.llm is not None
            else None
        )
        if self.inference is not None:
            self.inference.limits = limits
        self.async_adds = (
            AsyncAdds(self.inference, RetryPolicy(
                retry_for_s=self.settings.infer_retry_for_s,
                resume_after_s=self.settings.infer_resume_after_s,
                interval_s=self.settings.infer_resume_interval_s,
            ))
            if self.inference is not None
            else None
        )  # fmt: skip
        self.project_settings = ProjectSettingsWriter(
            self.log, self.projector, self.reader, settings_cache
        )
        self.project_settings.limits = limits
        self._settings_cache = settings_cache
        self.tenant = Tenant(self.settings.org_id, self.settings.project_id)
        self.webhooks = Webhooks(
            self.settings, self.log, self.projector.keys, outcomes=self._event_outcomes
        )
        self._dispatcher: asyncio.Task[None] | None = None
        self._dispatcher_stop = asyncio.Event()
        self._stop = asyncio.Event()
        self._background: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._read_your_writes = True
        # the log's end when a server started with a projection behind it (e.g. projections/
        # removed): until it is applied, reads answer 503 rather than a partial state
        self._warm_target: Offsets | None = None

    async def start(
        self,
        *,
        background_projector: bool = False,
        for_replay: bool = False,
        read_your_writes: bool = True,
        dispatch_webhooks: bool = False,
    ) -> Memstream:
        """Open the log and the projection; a server passes background_projector=True to
        project continuously and sweep expiries. An outdated projection is rebuilt from the
        log first (it is derived data); `for_replay` skips the checks replay itself fixes.

        `consistent=True` reads (the default) reflect this instance's writes: without a
        background projector they apply everything in the log first; with one they wait
        until what this instance appended is applied (`add(wait=False)` then `search`
        finds it). `read_your_writes=False` makes them not wait at all: a server shared by
        many clients, where a read must not queue behind other clients' in-flight writes
        (each client's synchronous write is applied before it is answered).
        `dispatch_webhooks`: run the webhook dispatcher too (docs/webhooks.md)."""
        self._read_your_writes = read_your_writes
        await self.log.start()
        await self.projector.keys.start()
        self.projector.store.drop_abandoned()  # what killed replays left (plaintext)
        drop_scratch(self.data_dir)  # and what a crashed export left (plaintext)
        if not for_replay:
            if self.projector.outdated():
                logger.warning("projection format changed: rebuilding it from the log")
                await self.projector.replay()
            self.projector.generation()
            try:
                if erased := await self.eraser.finish_interrupted():
                    logger.warning(
                        "completed %d interrupted erasure(s): %s",
                        len(erased),
                        ", ".join(f"{s.field}={s.value}" for s in erased),
                    )
            except MemstreamError as exc:  # retried at the next start, or by rerunning erase
                logger.error("could not complete interrupted erasures: %s", exc.message)
        if background_projector:
            self._report_log_health()
            try:
                end = await self.log.end_offsets()
            except LogCorruptError as exc:
                # a damaged log must not keep the server from starting: writes answer 503
                # naming the damage, reads serve what was projected before it, and the
                # projector waits at the damage until `memstream log repair`
                logger.error("%s", exc.message)
                end = {}
            target = {p: o for p, o in end.items() if o > 0}
            if not covers(self.projector.checkpoint, target):
                self._warm_target = target
                logger.warning(
                    "the projection is %d events behind the log: reads answer 503 until it "
                    "has caught up",
                    self._behind(target),
                )
            self._stop.clear()
            self._background = asyncio.create_task(self.projector.run_forever(self._stop))
            self._sweeper = asyncio.create_task(self._sweep_forever())
            if self.settings.checkpoint_interval_s > 0:
                self._checkpointer = asyncio.create_task(self._checkpoint_forever())
            if self.async_adds is not None:  # settle the async adds still owed in the log
                self.async_adds.start()
        if dispatch_webhooks:
            self._dispatcher_stop.clear()
            self._dispatcher = asyncio.create_task(self.webhooks.dispatch(self._dispatcher_stop))
            self._dispatcher.add_done_callback(_report_dispatcher_end)
        return self

    async def _event_outcomes(self, events: Mapping[str, Position]) -> dict[str, str]:
        """What the projection decided for each event, once it has applied them: the webhook
        dispatcher delivers only the changes that were applied (webhooks/dispatcher.py)."""
        await self.projector.wait_for(list(events.values()), timeout_s=WEBHOOK_WAIT_S)
        # through the reader: an event applied but not yet flushed is in the fresh tier
        rows = await asyncio.to_thread(self.reader.outcomes, sorted(events))
        return {event_id: row["outcome"] for event_id, row in rows.items()}

    async def _sweep_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.sweep_interval_s)
            if self._stop.is_set():
                return
            if self.projector.pinned is not None:  # writes are refused while pinned
                continue
            try:
                if n := await self.retention.expire():
                    logger.info("expiry sweeper recorded %d MemoryExpired events", n)
            except Exception:  # the sweeper retries next period; the server keeps serving
                logger.exception("expiry sweep failed")

    async def close(self) -> None:
        if self.async_adds is not None:  # before the log closes: attempts under way append
            await self.async_adds.close()
        if self._dispatcher is not None:
            self._dispatcher_stop.set()
            with contextlib.suppress(Exception):  # it logged what went wrong
                await self._dispatcher
            self._dispatcher = None
        await self.webhooks.close()
        if self._background is not None:
            self._stop.set()
            await self._background
            self._background = None
        if self._sweeper is not None:
            await self._sweeper
            self._sweeper = None
        if self._checkpointer is not None:
            await self._checkpointer
            self._checkpointer = None
        await self.projector.close()
        if self.llm is not None and hasattr(self.llm, "close"):
            await self.llm.close()
        await self.projector.keys.close()
        await self.log.close()

    async def __aenter__(self) -> Memstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes --------------------------------------------------------------------------
    @property
    def inference_on(self) -> bool:
        """Whether `add(infer=True)` asks an LLM (else it stores the messages verbatim)."""
        return self.inference is not None

    async def add(
        self, messages: Any, *, tenant: Tenant | None = None, infer: bool = False, **kwargs: Any
    ) -> list[WriteResult]:
        """Each non-system message becomes a memory; with `infer=True` and an LLM
        configured, the LLM decides what to remember instead (docs/inference.md)."""
        if infer and self.inference is not None:
            return await self.inference.infer(tenant or self.tenant, messages, **kwargs)
        kwargs.pop("messages_event_id", None)
        return await self.writer.add(tenant or self.tenant, messages, **kwargs)

    async def add_results(self, positions: list[Position]) -> list[WriteResult]:
        """What `add` answers for the events another process appended at `positions` and
        handed over (memstream/light_writes.py): waits until they are applied."""
        return await self.writer.results_at(positions)

    def inferred_outcomes(
        self, messages_event_id: str, *, tenant: Tenant | None = None
    ) -> list[dict[str, Any]] | None:
        """The audit rows of the memory events an inferred add's conversation caused (None
        when no decision names it): the event status of an async add after a restart."""
        t = tenant or self.tenant
        gen = self.projector.generation()
        rows = caused_by_messages(gen, messages_event_id, self.projector.tier_view(gen))
        if rows is None:
            return None
        return [r for r in rows if (r["org_id"], r["project_id"]) == (t.org_id, t.project_id)]

    async def add_async(self, messages: Any, *, tenant: Tenant | None = None, **kwargs: Any) -> str:
        """An inferred add answered before the LLM is asked (REST `async_mode`): validated,
        its conversation durably in the log as owed, settled by this process now and by any
        server after a restart (producers/resume.py). The MessagesRecorded event id;
        `settlement(id)` says how it ended."""
        if self.async_adds is None:
            from memstream.errors import ValidationError

            raise ValidationError("async inference needs an LLM (MEMSTREAM_LLM_BASE_URL, _MODEL)")
        return await self.async_adds.accept(tenant or self.tenant, messages, **kwargs)

    def settlement(
        self, messages_event_id: str, *, tenant: Tenant | None = None
    ) -> Settlement | None:
        """How an inferred add (its MessagesRecorded id) was settled, from the projection:
        None while it is owed (or not projected here yet, or another project's)."""
        gen = self.projector.generation()
        view = self.projector.tier_view(gen)  # an add settles in the fresh tier first
        return settlement(gen, messages_event_id, tenant or self.tenant, view)

    def reinferrer(self, model: str | None = None, base_url: str | None = None) -> Reinferrer:
        """Re-decide recorded conversations with `model` (at `base_url`; defaults: the
        configured LLM's), see producers/reinfer.py."""
        if model is None and base_url is None and self.llm is not None:
            llm: LLM = self.llm
        else:
            chosen = get_llm(dataclasses.replace(
                self.settings,
                llm_model=model or self.settings.llm_model,
                llm_base_url=base_url or self.settings.llm_base_url,
            ))  # fmt: skip
            if chosen is None:
                from memstream.errors import ValidationError

                raise ValidationError(
                    "reinfer: name the model (--model) and its endpoint (--base-url or "
                    "--llm-base-url / MEMSTREAM_LLM_BASE_URL)"
                )
            llm = chosen
        return Reinferrer(self.log, self.projector, self.reader, llm, self._settings_cache)

    def proposals(self) -> Proposals:
        """Reinfer proposals without an LLM: their candidates, swap, discard, list."""
        return Proposals(self.log, self.projector, self.reader, self.settings.limits)

    async def reinfer(
        self,
        *,
        tenant: Tenant | None = None,
        model: str | None = None,
        base_url: str | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int = MAX_CONVERSATIONS,
        swap: bool = False,
        progress: Callable[[int, int], Any] | None = None,
        build_progress: Callable[[int, int], Any] | None = None,
        **ids: Any,
    ) -> tuple[ReinferPlan, list[WriteResult] | None]:
        """Re-decide the recorded conversations of one scope (entity ids) or of every scope
        `filters` selects with `model`: a proposal in the log and its candidate generation,
        compared with the live memories (appear / change / go). With `swap`, also the
        events appended to make it live. See producers/reinfer.py."""
        from memstream.errors import ValidationError

        given = {k: v for k, v in ids.items() if v is not None}
        if filters is not None and given:
            raise ValidationError("reinfer: give filters or entity ids, not both")
        selection = dict(filters) if filters is not None else given
        self.settings.limits.check_filters(selection)
        tenant = tenant or self.tenant
        worker = self.reinferrer(model, base_url)
        try:
            plan = await worker.propose(
                tenant, selection, limit=limit, progress=progress, build_progress=build_progress
            )
        finally:
            if worker.llm is not self.llm and hasattr(worker.llm, "close"):
                await worker.llm.close()
        if not swap:
            return plan, None
        return await self.proposals().swap(tenant, plan.proposal_id)

    async def reinfer_show(
        self,
        proposal_id: str,
        *,
        tenant: Tenant | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> ReinferPlan:
        """A proposal's candidate against the live memories now (rebuilt, without the LLM,
        when it is not on disk)."""
        plan, _ = await self.proposals().show(tenant or self.tenant, proposal_id, progress)
        return plan

    async def reinfer_swap(
        self,
        proposal_id: str,
        *,
        tenant: Tenant | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> tuple[ReinferPlan, list[WriteResult]]:
        """Make a proposal live: its difference from the live memories, in one batch."""
        return await self.proposals().swap(tenant or self.tenant, proposal_id, progress)

    async def reinfer_discard(self, proposal_id: str, *, tenant: Tenant | None = None) -> list[str]:
        """Delete a proposal's candidate generation (the proposal stays in the log)."""
        return await self.proposals().discard(tenant or self.tenant, proposal_id)

    async def reinfer_proposals(self, *, tenant: Tenant | None = None) -> list[dict[str, Any]]:
        return await self.proposals().proposals(tenant or self.tenant)

    async def _reader_for(self, tenant: Tenant, candidate: str | None) -> MemoryReader:
        """The live reader, or one over a reinfer proposal's candidate generation."""
        if candidate is None:
            return self.reader
        proposals = self.proposals()
        await self.projector.catch_up()
        return proposals.candidate_reader(await proposals.candidate(tenant, candidate))

    # -- project settings (inference) ----------------------------------------------------
    async def update_project(
        self, *, tenant: Tenant | None = None, **kwargs: Any
    ) -> ProjectSettings:
        """Set custom_instructions and/or custom_categories (stored as an event)."""
        return await self.project_settings.update(tenant or self.tenant, **kwargs)

    async def project(self, *, tenant: Tenant | None = None) -> ProjectSettings:
        await self._fresh(True)
        return self.project_settings.current(tenant or self.tenant)

    async def update(
        self,
        memory_id: str,
        *,
        tenant: Tenant | None = None,
        expiration_date: Any = UNSET,
        **kwargs: Any,
    ) -> WriteResult:
        await self._ready()
        return await self.writer.update(
            tenant or self.tenant, memory_id, expiration_date=expiration_date, **kwargs
        )

    async def delete(
        self, memory_id: str, *, tenant: Tenant | None = None, **kwargs: Any
    ) -> WriteResult:
        await self._ready()
        return await self.writer.delete(tenant or self.tenant, memory_id, **kwargs)

    async def delete_all(
        self, filters: Mapping[str, Any] | None, *, tenant: Tenant | None = None, **kwargs: Any
    ) -> int:
        self.settings.limits.check_filters(filters)
        await self._ready()
        return await self.writer.delete_all(tenant or self.tenant, filters, **kwargs)

    async def feedback(
        self, memory_id: str, *, tenant: Tenant | None = None, **kwargs: Any
    ) -> FeedbackGiven:
        await self._ready()
        return await self.writer.feedback(tenant or self.tenant, memory_id, **kwargs)

    # -- readiness ---------------------------------------------------------------------
    def _behind(self, target: Offsets) -> int:
        cp = self.projector.checkpoint
        return sum(max(0, o - cp.get(p, 0)) for p, o in target.items())

    def rebuilding(self) -> int | None:
        """Events still to apply before this server's projection has caught up with the log
        as it was when the server started; None once it has (then it stays None)."""
        target = self._warm_target
        if target is None:
            return None
        if covers(self.projector.checkpoint, target):
            self._warm_target = None
            logger.info("the projection has caught up with the log: serving reads")
            return None
        return self._behind(target)

    async def lag(self) -> int:
        """Events in the log not applied to the projection yet."""
        end = await self.log.end_offsets()
        return self._behind({p: o for p, o in end.items() if o > 0})

    async def _ready(self) -> None:
        """Wait (at most settings.ready_wait_s) for a projection being rebuilt, then 503:
        a read never answers from a partial projection as if it were the whole state."""
        if self._warm_target is None:
            return
        deadline = time.monotonic() + self.settings.ready_wait_s
        while (left := self.rebuilding()) is not None:
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"the projection is being rebuilt from the log ({left} events to go): "
                    "retry shortly",
                    retry_after_s=max(1.0, self.settings.ready_wait_s),
                )
            await asyncio.sleep(0.05)

    # -- reads (consistent=True: this instance's writes are applied first; see start) ----
    async def _fresh(self, consistent: bool, as_of: Any = None) -> None:
        """Wait for the projection a read needs. A read as of a point in time folds the
        tables' events (DuckDB/Python), which know nothing of the fresh tier: flush it first."""
        await self._ready()
        if consistent:
            if self._background is None:
                await self.projector.catch_up(flush=False)  # the reads merge the fresh tier
            elif self._read_your_writes:
                await self.projector.catch_up_own()
        if as_of is not None:
            await self.projector.flush_tier()

    async def get(
        self,
        memory_id: str,
        *,
        tenant: Tenant | None = None,
        consistent: bool = True,
        as_of: Any = None,
    ) -> MemoryView:
        await self._fresh(consistent, as_of)
        # off the event loop even for one indexed row: a Lance read that meets the projector's
        # write (a new version, a compaction) can take seconds on a loaded machine, and on the
        # loop it would stall every other request; as of a cut it is a fold (and cancellable)
        kwargs: dict[str, Any] = {} if as_of is None else {"as_of": as_of}
        return await asyncio.to_thread(self.reader.get, tenant or self.tenant, memory_id, **kwargs)

    async def get_all(
        self,
        filters: Mapping[str, Any] | None,
        *,
        tenant: Tenant | None = None,
        consistent: bool = True,
        **kwargs: Any,
    ) -> Page:
        self.settings.limits.check_filters(filters)
        await self._fresh(consistent, kwargs.get("as_of"))
        reader = await self._reader_for(tenant or self.tenant, _candidate(kwargs))
        return await asyncio.to_thread(reader.get_all, tenant or self.tenant, filters, **kwargs)

    async def search(
        self,
        query: str,
        filters: Mapping[str, Any] | None,
        *,
        tenant: Tenant | None = None,
        consistent: bool = True,
        **kwargs: Any,
    ) -> list[MemoryView]:
        self.settings.limits.check_query(query)
        self.settings.limits.check_filters(filters)
        await self._fresh(consistent, kwargs.get("as_of"))
        reader = await self._reader_for(tenant or self.tenant, _candidate(kwargs))
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(
                reader.search, tenant or self.tenant, query, filters, **kwargs
            )
        finally:
            metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)

    async def history(
        self, memory_id: str, *, tenant: Tenant | None = None, consistent: bool = True
    ) -> list[HistoryEntry]:
        await self._fresh(consistent)
        return await asyncio.to_thread(self.reader.history, tenant or self.tenant, memory_id)

    async def stats(
        self,
        filters: Mapping[str, Any] | None,
        *,
        by: Sequence[str] = (),
        tenant: Tenant | None = None,
        as_of: Any = None,
        show_expired: bool = False,
    ) -> dict[str, Any]:
        """Count the memories a read of `filters` would see (all of the project without
        filters), grouped by each of `by` (user, agent, app, run, category, day) at once:
        `{"total": n, "groups": {by: [{"key": k, "count": n}, ...]}}`. One scan, so a page
        can show every value's count without fetching the memories."""
        from memstream.events import now_ms
        from memstream.query.analytics import GROUPINGS, live_memories
        from memstream.query.analytics import stats as count

        for name in by:
            if name not in GROUPINGS:
                from memstream.errors import ValidationError

                raise ValidationError(f"by: must be among {', '.join(GROUPINGS)}, got {name!r}")
        await self._fresh(True)
        await self.projector.flush_tier()  # counted from the tables themselves (DuckDB)
        tenant = tenant or self.tenant
        gen = self.projector.generation()
        policies = self.reader.policies(tenant)

        def go() -> dict[str, Any]:
            rows = live_memories(
                gen, tenant, filters, policies=policies, now_ms=now_ms(), as_of=as_of,
                show_expired=show_expired,
            )  # fmt: skip
            groups = {name: count(rows, name)["results"] for name in dict.fromkeys(by)}
            return {"total": rows.num_rows, "groups": groups}

        return await asyncio.to_thread(go)

    async def projector_lag(self) -> dict[str, Any]:
        """How far this instance's projection trails the log: events written but not yet
        applied, per partition and in all (0 = reads see everything written)."""
        end = await self.log.end_offsets()
        done = self._applied()
        behind = {p: max(0, o - done.get(p, 0)) for p, o in sorted(end.items())}
        return {
            "lag": sum(behind.values()),
            "partitions": [
                {"partition": p, "end": end[p], "applied": done.get(p, 0), "lag": n}
                for p, n in behind.items()
            ],
        }

    async def export(
        self,
        path: Path,
        fmt: str | None,
        filters: Mapping[str, Any] | None,
        *,
        tenant: Tenant | None = None,
        as_of: Any = None,
        show_expired: bool = False,
    ) -> tuple[int, str]:
        """Write every memory get_all(filters) returns to `path` (json, jsonl, csv or
        parquet; see query/export.py): (count, format)."""
        from memstream.query.export import export_memories

        return await export_memories(
            self, path, fmt, filters, tenant=tenant or self.tenant, as_of=as_of,
            show_expired=show_expired,
        )  # fmt: skip

    # -- retention -----------------------------------------------------------------------
    async def set_retention_policy(
        self, *, field: str, pattern: str, ttl: str | int, tenant: Tenant | None = None, **kw: Any
    ) -> dict[str, Any]:
        return await self.retention.set_policy(
            tenant or self.tenant, field=field, pattern=pattern, ttl=ttl, **kw
        )

    async def remove_retention_policy(
        self, policy_id: str, *, tenant: Tenant | None = None
    ) -> None:
        await self.retention.remove_policy(tenant or self.tenant, policy_id)

    async def retention_policies(self, *, tenant: Tenant | None = None) -> list[dict[str, Any]]:
        await self._fresh(True)
        return self.reader.policies(tenant or self.tenant)

    async def expire(self, now: int | None = None) -> int:
        """Record MemoryExpired for everything that has expired (the sweeper, once)."""
        return await self.retention.expire(now)

    # -- erasure -------------------------------------------------------------------------
    async def erase(
        self,
        *,
        tenant: Tenant | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Crypto-shred one subject (name exactly one entity id); see docs/erasure.md.
        Returns the subject, memories erased, keys destroyed and the SubjectErased event id."""
        await self._ready()
        return await self.eraser.erase(
            tenant or self.tenant, user_id=user_id, agent_id=agent_id, app_id=app_id,
            run_id=run_id, reason=reason, actor=actor,
        )  # fmt: skip

    # -- the log itself ------------------------------------------------------------------
    async def replay(
        self, progress: Callable[[int, int], Any] | None = None, *, to_position: Any = None
    ) -> int:
        """Rebuild the projection from the log. `to_position` (an as_of position: an offset
        on partition 0, "p:o", "0:12,1:40", {"partition": p, "offset": o}): only up to and
        including it, and pin it there -- writes are refused until a replay without it."""
        to = None
        if to_position is not None:
            from memstream.errors import ValidationError
            from memstream.query.timetravel import parse_as_of

            cut = parse_as_of(to_position)
            if cut.time_ms is not None:
                raise ValidationError("--to-position: a log position (e.g. 0:1234), not a time")
            to = {p: o + 1 for p, o in cut.offsets}
        gen = await self.projector.replay(progress, to=to)
        return sum(gen.checkpoint().values())

    def status(self) -> dict[str, Any]:
        """The live generation, how far it has projected, and its pin if it has one."""
        from memstream.projector.projector import describe_pin
        from memstream.projector.store import lance_file_version
        from memstream.projector.vector_index import vector_index_state

        gen = self.projector.generation()
        pinned = self.projector.pinned
        memories = gen.memories()
        return {
            "log": self.settings.log_description,
            "generation": gen.path.name,
            # a table keeps the Lance format it was made in; a replay remakes it in the one
            # new tables get (projector/store.py LANCE_FILE_VERSION: faster scoped reads)
            "lance_format": {
                "memories": None if memories is None else memories.to_lance().data_storage_version,
                "new_tables": lance_file_version(),
            },
            # searches with no indexed lead go through it (projector/vector_index.py); a
            # replay builds it once the table is large enough ("due")
            "vector_index": vector_index_state(memories),
            "checkpoint": {str(p): o for p, o in sorted(gen.checkpoint().items())},
            "pinned": describe_pin(pinned) if pinned is not None else None,
            "log_health": self.log.health(),
            "poison": {
                **self.projector.poison.to_dict(),
                "dead_letter_total": self.log.dead_letter_count(),
            },
        }

    # -- integrity (memstream.log.chain / memstream.log.checkpoint) ----------------------
    def checkpoints(self) -> CheckpointStore:
        """Where this log's signed checkpoints live, with the configured signing key."""
        key = load_signing_key(
            self.data_dir, self.settings.checkpoint_key, self.settings.checkpoint_key_file
        )
        return CheckpointStore(self.data_dir / "checkpoints", key, self.log.identity)

    async def verify(
        self,
        *,
        write_checkpoint: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        """Walk the whole log: every chain link, every signed checkpoint (`memstream verify`)."""
        return await verify_log(
            self.log, self.checkpoints(), write_checkpoint=write_checkpoint, progress=progress
        )

    async def write_checkpoint(self) -> dict[str, Any]:
        """Sign the log's current heads (continuing from the latest trusted checkpoint)."""
        store = self.checkpoints()
        heads = await advance_heads(self.log, store)
        return store.write(heads)

    async def attest_export(self, path: Path, count: int) -> Path:
        """`<export>.chain.json` beside an export: the log's chain heads in a signed checkpoint
        and the export's sha256, signed together, so a third party can later check the file
        and, with `memstream verify`, that the log still holds the history it came from."""
        checkpoint = await self.write_checkpoint()
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        body = {"export": Path(path).name, "sha256": digest, "count": count,
                "checkpoint": checkpoint}  # fmt: skip
        document = {**body, "signature": self.checkpoints().sign(body)}
        side = Path(path).with_name(Path(path).name + ".chain.json")
        tmp = side.with_name(f".{side.name}.tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True))
        os.replace(tmp, side)
        return side

    async def _checkpoint_forever(self) -> None:
        interval = self.settings.checkpoint_interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            try:
                await self.write_checkpoint()
            except Exception:  # the next period tries again; the server keeps serving
                logger.exception("writing a signed checkpoint of the log's heads failed")

    def _report_log_health(self) -> None:
        """Say at a server's start what the log's own state is (docs/guarantees.md)."""
        health = self.log.health()
        if health.get("corruption"):
            logger.error("the event log is corrupt and read-only: %s",
                         health["corruption"].get("message"))  # fmt: skip
        elif health.get("torn_tail"):
            t = health["torn_tail"]
            logger.warning(
                "the event log ends with a torn tail of %d bytes at %s byte %d (an append a "
                "crash interrupted before it was acknowledged); the next append cuts it",
                t["bytes"], t["segment"], t["byte_offset"],
            )  # fmt: skip

    def repair_log(self) -> dict[str, Any]:
        """`memstream log repair`: quarantine the log's bad bytes (memstream.log.file)."""
        return self.log.repair()

    async def catch_up(self, *, flush: bool = True) -> None:
        """Apply the whole log; with `flush`, write the fresh tier to the tables too (a
        caller that reads through get/get_all/search needs not: they merge the tier)."""
        await self.projector.catch_up(flush=flush)

    async def settle(self) -> None:
        """Write this process's fresh tier to the tables (projector/tier.py), for a face
        that reads the tables themselves (entity lists, analytics)."""
        await self.projector.flush_tier()

    def _applied(self) -> Offsets:
        """How far this process's projection has applied the log (tables and fresh tier)."""
        disk = self.projector.generation().checkpoint()
        mine = self.projector.checkpoint
        return {p: max(o, mine.get(p, 0)) for p, o in {**mine, **disk}.items()}

    # -- for faces that read the projection or the log themselves (analytics, `memstream log`):
    # they get these handles from the service instead of reaching into the projector.
    def generation(self) -> Generation:
        """The live projection generation (its tables), for DuckDB analytics and exports."""
        return self.projector.generation()

    @property
    def subject_keys(self) -> KeyStore:
        """The subject-key store, to open sealed events read straight from the log."""
        return self.projector.keys

    def projected_events(self) -> int:
        """How many events of the log the live projection has applied (all partitions)."""
        return sum(self.projector.checkpoint.values())

    async def run_projector(
        self, stop: asyncio.Event | None, *, batch_size: int | None = None
    ) -> int:
        """Project the log until `stop` is set, or catch up once if it is None (`memstream
        project`); answers how many events the projection has applied."""
        if batch_size is not None:
            self.projector.batch_size = batch_size
        if stop is None:
            await self.projector.catch_up()
        else:
            await self.projector.run_forever(stop)
        return self.projected_events()

    # -- metrics -------------------------------------------------------------------------
    async def prometheus(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (body, content type), with the projector's lag
        behind the log's end measured now."""
        end = await self.log.end_offsets()
        metrics.set_projector_lag(end, self._applied())
        return metrics.exposition()


def _candidate(kwargs: dict[str, Any]) -> str | None:
    """Take `candidate` (a reinfer proposal id) out of a read's keyword arguments."""
    candidate = kwargs.pop("candidate", None)
    if candidate is not None and kwargs.get("as_of") is not None:
        from memstream.errors import ValidationError

        raise ValidationError("as_of: not offered on a reinfer candidate (it is one state)")
    return candidate


def _report_dispatcher_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the webhook dispatcher stopped: %r", task.exception())


@contextlib.asynccontextmanager
async def open_webhooks(settings: Settings) -> AsyncIterator[Webhooks]:
    """Webhooks without the projection (no model, no LanceDB): `memstream webhooks ...`."""
    log = open_log(settings)
    await log.start()
    keys = log.subject_keys()
    try:
        await keys.start()
        hooks = Webhooks(settings, log, keys)
        try:
            yield await hooks.start()
        finally:
            await hooks.close()
    finally:
        await keys.close()
        await log.close()


__all__ = ["Actor", "Memstream", "Settings", "Webhooks", "open_log", "open_webhooks"]


async def rotate_master_key(settings: Settings) -> dict[str, Any]:
    """Rewrap every subject key on Kafka under the current master key (see
    memstream.keystore.master for the rotation steps). The file log's key store is local
    files beside the log, not wrapped: nothing to do there."""
    if not settings.kafka_bootstrap:
        return {"rewrapped": 0, "detail": "the file log's subject keys are not wrapped"}
    from memstream.keystore.kafka import KafkaKeyStore

    log = open_log(settings)
    store = log.subject_keys()
    assert isinstance(store, KafkaKeyStore)
    await store.start()
    try:
        n = await store.rotate_master()
        return {"rewrapped": n, "master_key_id": store.master_keys.current_id}
    finally:
        await store.close()
