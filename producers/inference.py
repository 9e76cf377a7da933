"""`add(messages, infer=True)`: an LLM turns a conversation into memory decisions, and the
decisions are appended as facts.

The pipeline (docs/inference.md): (1) extract facts from the messages, steered by the
project's custom instructions; (2) retrieve the scope's most similar memories (the exact
scope: implicit null scoping; caught up and read while the extraction call is in flight,
then every fact ranked against that one read); (3) ask the LLM for ADD / UPDATE / DELETE /
NONE per fact, showing it short temporary ids ("0", "1", ...) so a hallucinated id cannot
reach another memory; (4) append, in one batch: `MessagesRecorded` (the input), `InferenceDecided` (model,
prompt, cost, raw output) and the memory events, each naming the decision. Both LLM calls
happen before anything is appended: when the LLM fails, nothing is written.

Concurrency: inferred adds of one scope are serialised in this process (a lock per scope,
and the projection is caught up under it, so the second add's LLM sees the first's
result). Across processes, every UPDATE and DELETE carries the memory's version the LLM
read (`expected_offset`); the projector records CONFLICT instead of applying it when the
memory changed in between.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from memstream.crypto import keyed_hash
from memstream.embedders.base import Embedder
from memstream.errors import ValidationError
from memstream.events import (
    Actor,
    Event,
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
    ProjectSettingsUpdated,
    new_id,
)
from memstream.llm.base import LLM, LLMUnavailableError, Usage
from memstream.log.base import EventLog
from memstream.models import Tenant, WriteResult
from memstream.producers import prompts
from memstream.producers import validation as v
from memstream.producers.phases import Phases
from memstream.producers.writer import MemoryWriter, _Producer
from memstream.projector.projector import Projector
from memstream.query.reader import MemoryReader, PreparedSearch
from memstream.scope import ENTITY_FIELDS, Scope
from memstream.sqlutil import sql_str

MAX_FACTS = 20  # facts taken from one extraction (the rest are dropped, and recorded)
PER_FACT = 5  # similar memories retrieved per fact
MAX_SHOWN = 30  # stored memories shown to the LLM at most
MAX_INSTRUCTIONS = 10_000
MAX_CATEGORIES = 100
MEMORY_EVENTS = ("MemoryAdded", "MemoryUpdated", "MemoryDeleted")


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    custom_instructions: str | None = None
    custom_categories: list[Any] | None = None

    def category_names(self) -> list[str]:
        """The names the LLM may assign: the project's custom categories, else Mem0's."""
        if not self.custom_categories:
            return list(prompts.DEFAULT_CATEGORIES)
        names: list[str] = []
        for item in self.custom_categories:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict):
                names.extend(str(k) for k in item)
        return names

    def category_prompt(self) -> list[str]:
        """Names with their descriptions where the project gave any ({name: description})."""
        out: list[str] = []
        for item in self.custom_categories or prompts.DEFAULT_CATEGORIES:
            if isinstance(item, dict):
                out.extend(f"{k} ({d})" if d else str(k) for k, d in item.items())
            else:
                out.append(str(item))
        return out


@dataclass(frozen=True, slots=True)
class Shown:
    """A stored memory shown to the LLM under a temporary id."""

    temp_id: str
    memory_id: str
    text: str
    hash: str
    last_offset: int
    immutable: bool


def read_project_settings(projector: Projector, tenant: Tenant) -> ProjectSettings:
    """The project's settings: its ProjectSettingsUpdated events folded in log order."""
    rows = projector.generation().query_events(
        f"org_id = {sql_str(tenant.org_id)} AND project_id = {sql_str(tenant.project_id)} "
        "AND event_type = 'ProjectSettingsUpdated'"
    )
    rows.sort(key=lambda r: (r["occurred_at"], r["partition"], r["offset"]))
    values: dict[str, Any] = {}
    for row in rows:
        payload = json.loads(row["payload"] or "{}")
        for name in payload.get("fields_set", []):
            values[name] = payload.get(name)
    return ProjectSettings(values.get("custom_instructions"), values.get("custom_categories"))


SETTINGS_TTL_S = 2.0


class SettingsCache:
    """Project settings read at most every SETTINGS_TTL_S per project (reading them scans
    the events table): a change made through this process applies at once, one made through
    another server within SETTINGS_TTL_S."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self._by_tenant: dict[Tenant, tuple[float, ProjectSettings]] = {}

    def get(self, tenant: Tenant) -> ProjectSettings:
        now = time.monotonic()
        hit = self._by_tenant.get(tenant)
        if hit is not None and now - hit[0] < SETTINGS_TTL_S:
            return hit[1]
        value = read_project_settings(self.projector, tenant)
        self._by_tenant[tenant] = (now, value)
        return value

    async def get_async(self, tenant: Tenant) -> ProjectSettings:
        """`get`, with a miss's read of the events table (a scan of the project's events,
        ~15 ms at a few thousand) off the event loop."""
        hit = self._by_tenant.get(tenant)
        if hit is not None and time.monotonic() - hit[0] < SETTINGS_TTL_S:
            return hit[1]
        return await asyncio.to_thread(self.get, tenant)

    def forget(self, tenant: Tenant) -> None:
        self._by_tenant.pop(tenant, None)


class ProjectSettingsWriter(_Producer):
    def __init__(
        self, log: EventLog, projector: Projector, reader: MemoryReader, cache: SettingsCache
    ) -> None:
        super().__init__(log, projector, reader)
        self.cache = cache

    async def update(
        self,
        tenant: Tenant,
        *,
        custom_instructions: Any = None,
        custom_categories: Any = None,
        actor: Actor | None = None,
    ) -> ProjectSettings:
        """Record new custom instructions and/or categories (what the SDKs' update_project
        sends); settings not given keep their value."""
        fields: list[str] = []
        if custom_instructions is not None:
            if not isinstance(custom_instructions, str):
                raise ValidationError("custom_instructions: must be a string")
            if len(custom_instructions) > MAX_INSTRUCTIONS:
                raise ValidationError(
                    f"custom_instructions: longer than {MAX_INSTRUCTIONS} characters"
                )
            fields.append("custom_instructions")
        if custom_categories is not None:
            _check_categories(custom_categories)
            fields.append("custom_categories")
        if not fields:
            raise ValidationError("give custom_instructions and/or custom_categories")
        event = ProjectSettingsUpdated(
            scope=Scope(tenant.org_id, tenant.project_id), actor=actor or Actor(),
            custom_instructions=custom_instructions,
            custom_categories=(
                json.dumps(custom_categories) if custom_categories is not None else None
            ),
            fields_set=tuple(fields),
        )  # fmt: skip
        await self._append([event])
        self.cache.forget(tenant)
        return self.cache.get(tenant)

    def current(self, tenant: Tenant) -> ProjectSettings:
        return self.cache.get(tenant)


def _check_categories(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_CATEGORIES:
        raise ValidationError(
            f"custom_categories: must be a list of at most {MAX_CATEGORIES} names "
            "or {name: description} objects"
        )
    for i, item in enumerate(value):
        ok = (isinstance(item, str) and item.strip()) or (
            isinstance(item, dict)
            and item
            and all(isinstance(k, str) and isinstance(d, str | None) for k, d in item.items())
        )
        if not ok:
            raise ValidationError(
                f"custom_categories[{i}]: must be a name or a {{name: description}} object"
            )


class InferenceWriter(MemoryWriter):
    """The write side of `add(messages, infer=True)` (see the module docstring)."""

    def __init__(
        self,
        log: EventLog,
        projector: Projector,
        reader: MemoryReader,
        llm: LLM,
        settings: SettingsCache | None = None,
    ) -> None:
        super().__init__(log, projector, reader)
        self.llm = llm
        self.settings = settings or SettingsCache(projector)
        self._locks: weakref.WeakValueDictionary[Scope, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # called with each inferred add's time per phase (bench/inference.py)
        self.on_phases: Callable[[Phases], None] | None = None

    def _lock(self, scope: Scope) -> asyncio.Lock:
        lock = self._locks.get(scope)
        if lock is None:
            lock = self._locks[scope] = asyncio.Lock()
        return lock

    def _results_of(self, rows: list[dict[str, Any]]) -> list[WriteResult]:
        return [_inferred_result(row) for row in rows if row["event_type"] in MEMORY_EVENTS]

    async def infer(
        self,
        tenant: Tenant,
        messages: Any,
        *,
        user_id: Any = None,
        agent_id: Any = None,
        app_id: Any = None,
        run_id: Any = None,
        metadata: Any = None,
        categories: Any = None,
        expiration_date: Any = None,
        immutable: Any = False,
        request_id: Any = None,
        actor: Actor | None = None,
        wait: bool = True,
        messages_event_id: str | None = None,
        recorded: MessagesRecorded | None = None,
    ) -> list[WriteResult]:
        """`recorded`: an async add's pending MessagesRecorded, already in the log (see
        producers/resume.py): decide it, and append only the decision and its changes."""
        phases = Phases()
        req = v.add_request(
            tenant.org_id, tenant.project_id, messages, v.conversation, self.limits,
            user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
            metadata=metadata, categories=categories, expiration_date=expiration_date,
            immutable=immutable, request_id=request_id,
        )  # fmt: skip
        scope, conversation, meta, cats = req.scope, req.messages, req.metadata, req.categories
        expires, rid = req.expiration_date, req.request_id
        phases.mark("validate")
        if recorded is None and (previous := await self._replayed(tenant, rid)) is not None:
            return previous
        key = await self._key(scope)
        assert key is not None  # Scope.of requires an entity
        who = actor or Actor()
        phases.mark("key")
        async with self._lock(scope):
            phases.mark("lock")
            # the scope is read while the LLM extracts facts: caught up first, so the LLM
            # sees every earlier decision (and, under the lock, this scope's last inference)
            prefetch = asyncio.create_task(self._prefetch(tenant, scope, phases))
            try:
                settings = await self.settings.get_async(tenant)
                phases.mark("settings")

                async def retrieve(facts: list[str]) -> list[Shown]:
                    search = await prefetch
                    phases.mark("prefetch_wait")
                    embedder = self.projector.embedder
                    return await asyncio.to_thread(nearest, search, embedder, facts, phases)

                outcome = await decide(self.llm, settings, conversation, retrieve, phases)
            except BaseException:
                # the LLM's error is the answer; the prefetch only caught up and read
                await asyncio.gather(prefetch, return_exceptions=True)
                raise
            await prefetch  # (no facts: not awaited yet) its failure is the add's failure
            decisions = outcome.decisions
            by_temp = outcome.by_temp
            settles = recorded is not None
            recorded = recorded or MessagesRecorded(
                scope=scope, actor=who, request_id=rid,
                event_id=messages_event_id or new_id(),
                messages=json.dumps(conversation, ensure_ascii=False),
                source_hash=keyed_hash(key, json.dumps(messages, sort_keys=True, default=str)),
            )  # fmt: skip
            decision = InferenceDecided(
                scope=scope, actor=who, request_id=rid,
                messages_event_id=recorded.event_id, model=self.llm.model,
                llm_host=self.llm.host, prompt_version=prompts.PROMPT_VERSION,
                prompt_hash=prompts.PROMPT_HASH, temperature=self.llm.temperature,
                prompt_tokens=outcome.usage.prompt_tokens,
                completion_tokens=outcome.usage.completion_tokens,
                latency_ms=outcome.usage.latency_ms, output=outcome.output(), settles=settles,
            )  # fmt: skip
            allowed = set(settings.category_names())
            changes: list[Event] = []
            previous_text: dict[str, str] = {}
            for d in decisions:
                event = self._event_of(
                    d, by_temp, scope, key, who, rid, decision.event_id, recorded.source_hash,
                    meta=meta, cats=cats, allowed=allowed, expires=expires, immutable=immutable,
                )  # fmt: skip
                if event is None:
                    continue
                if isinstance(event, MemoryUpdated | MemoryDeleted) and d.id in by_temp:
                    previous_text[event.event_id] = by_temp[d.id].text
                changes.append(event)
            phases.mark("build")
            batch = [decision, *changes] if settles else [recorded, decision, *changes]
            positions = await self._append(batch, False, phases)
        if not wait:
            self._observe(phases)
            return [_pending_result(e, previous_text) for e in changes]
        await self.projector.wait_for(positions)
        phases.mark("projection_wait")
        results = [_inferred_result(row) for row in await self._decisions(changes)]
        phases.mark("results")
        self._observe(phases)
        return results

    def _observe(self, phases: Phases) -> None:
        phases.report()
        if self.on_phases is not None:
            self.on_phases(phases)

    async def _prefetch(self, tenant: Tenant, scope: Scope, phases: Phases) -> PreparedSearch:
        """Catch up with the log, then read the exact scope's live memories and vectors
        (implicit null scoping: a user's add never sees that user's agent- or run-scoped
        memories). Runs while the LLM extracts facts: its phases are charged as overlapped."""
        started = time.perf_counter()
        await self.projector.catch_up(flush=False)  # prepare_search merges the fresh tier
        caught = time.perf_counter()
        phases.overlap("catch_up", caught - started)
        search = await asyncio.to_thread(self.reader.prepare_search, tenant, scope_filters(scope))
        phases.overlap("fetch_scope", time.perf_counter() - caught)
        return search

    def _event_of(
        self,
        d: prompts.Decision,
        by_temp: dict[str, Shown],
        scope: Scope,
        key: Any,
        who: Actor,
        rid: str | None,
        decision_id: str,
        source_hash: str | None,
        *,
        meta: str,
        cats: tuple[str, ...],
        allowed: set[str],
        expires: str | None,
        immutable: bool,
    ) -> Event | None:
        """The memory event one decision means (None for NONE, empty texts, no-op updates
        and changes to immutable memories, which stay recorded in the decision only)."""
        text = d.text.strip()
        assigned = tuple(c for c in (d.categories or []) if c in allowed)
        if d.event == "ADD":
            if not text:
                return None
            return MemoryAdded(
                scope=scope, memory_id=new_id(), actor=who, request_id=rid, text=text,
                hash=keyed_hash(key, text), metadata=meta, categories=cats or assigned,
                expiration_date=expires, immutable=immutable, source_hash=source_hash,
                decision_id=decision_id,
            )  # fmt: skip
        if d.event == "NONE":
            return None
        target = by_temp[d.id or ""]
        if target.immutable:
            return None
        if d.event == "UPDATE":
            if not text or text == target.text:
                return None
            return MemoryUpdated(
                scope=scope, memory_id=target.memory_id, actor=who, request_id=rid,
                text=text, hash=keyed_hash(key, text), previous_hash=target.hash,
                categories=(cats or assigned) or None,
                decision_id=decision_id, expected_offset=target.last_offset,
            )  # fmt: skip
        return MemoryDeleted(
            scope=scope, memory_id=target.memory_id, actor=who, request_id=rid,
            reason="inference", decision_id=decision_id, expected_offset=target.last_offset,
        )  # fmt: skip


def nearest(
    search: PreparedSearch, embedder: Embedder, facts: list[str], phases: Phases | None = None
) -> list[Shown]:
    """The scope's memories most similar to the facts, as `shown_of` lists them: the facts
    embedded in one batch, each ranked against the scope `search` read (once, beforehand).
    The same as one `search_rows` per fact with an embedder whose batches equal its single
    texts (tests/integration/test_inference_retrieval.py)."""
    vectors = embedder.embed(facts)
    if phases is not None:
        phases.mark("embed")
    per_fact = [search.rows(vector, PER_FACT) for vector in vectors]
    if phases is not None:
        phases.mark("search")
    return shown_of(per_fact)


def scope_filters(scope: Scope) -> dict[str, str]:
    """The read filter of exactly `scope`: its entity ids; those it lacks must be null."""
    return {name: value for name in ENTITY_FIELDS if (value := getattr(scope, name))}


def shown_of(per_fact: list[list[dict[str, Any]]]) -> list[Shown]:
    """Each fact's nearest memories interleaved (every fact's first, then every second...),
    each memory once, at most MAX_SHOWN, numbered "0", "1", ... in that order."""
    found: dict[str, dict[str, Any]] = {}
    for rank in range(PER_FACT):
        for hits in per_fact:
            if rank < len(hits) and hits[rank]["id"] not in found and len(found) < MAX_SHOWN:
                found[hits[rank]["id"]] = hits[rank]
    return [
        Shown(str(i), row["id"], row["text"], row["hash"], int(row["last_offset"]),
              bool(row["immutable"]))
        for i, row in enumerate(found.values())
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decided:
    """What the two LLM calls produced for one conversation (validated: every UPDATE,
    DELETE and NONE names a memory that was shown)."""

    facts: list[str]
    shown: list[Shown]
    decisions: list[prompts.Decision]
    raw: list[str]
    usage: Usage

    @property
    def by_temp(self) -> dict[str, Shown]:
        return {s.temp_id: s for s in self.shown}

    def output(self) -> str:
        return _output(self.facts, self.shown, self.decisions, self.raw, self.usage)


async def decide(
    llm: LLM,
    settings: ProjectSettings,
    conversation: list[dict[str, str]],
    retrieve: Callable[[list[str]], Awaitable[list[Shown]]],
    phases: Phases | None = None,
) -> Decided:
    """Extract facts, show the LLM the memories `retrieve` finds for them, and take its
    decisions: the pipeline's thinking, shared by `infer` and `reinfer` (which retrieves
    from a state it simulates instead of the projection)."""
    extracted = await llm.complete(
        prompts.extract_system(settings.custom_instructions),
        prompts.conversation_text(conversation),
        prompts.Facts,
        "facts",
    )
    facts = _clean_facts(extracted.parsed.facts)
    if phases is not None:
        phases.mark("llm_extract")
    usage = extracted.usage
    raw = [extracted.raw]
    shown: list[Shown] = []
    decisions: list[prompts.Decision] = []
    if facts:
        shown = await retrieve(facts)
        decided = await llm.complete(
            prompts.decide_system(settings.category_prompt()),
            prompts.decide_user([{"id": s.temp_id, "text": s.text} for s in shown], facts),
            prompts.Decisions,
            "memory_decisions",
        )
        if phases is not None:
            phases.mark("llm_decide")
        usage = usage + decided.usage
        raw.append(decided.raw)
        decisions = decided.parsed.memory
    _check_ids(decisions, {s.temp_id: s for s in shown}, llm)
    return Decided(facts, shown, decisions, raw, usage)


def _clean_facts(facts: list[str]) -> list[str]:
    out: list[str] = []
    for fact in facts:
        text = fact.strip() if isinstance(fact, str) else ""
        if text and text not in out and len(text) <= v.MAX_TEXT:
            out.append(text)
    return out[:MAX_FACTS]


def _check_ids(decisions: list[prompts.Decision], by_temp: dict[str, Shown], llm: LLM) -> None:
    """UPDATE / DELETE / NONE must name a temporary id that was shown; anything else is the
    LLM's mistake, and nothing is written."""
    for i, d in enumerate(decisions):
        if d.event == "ADD":
            continue
        if d.id not in by_temp:
            shown = f"ids 0..{len(by_temp) - 1}" if by_temp else "no stored memory"
            raise LLMUnavailableError(
                f"LLM endpoint {llm.host} (model {llm.model!r}) decided {d.event} of unknown "
                f"memory id {d.id!r} (decision {i}; it was shown {shown}); nothing was written"
            )


def _output(
    facts: list[str],
    shown: list[Shown],
    decisions: list[prompts.Decision],
    raw: list[str],
    usage: Usage,
) -> str:
    return json.dumps(
        {
            "facts": facts,
            "shown": [
                {"id": s.temp_id, "memory_id": s.memory_id, "text": s.text, "offset": s.last_offset}
                for s in shown
            ],  # fmt: skip
            "memory": [d.model_dump(exclude_none=True) for d in decisions],
            "raw": raw,
        },
        ensure_ascii=False,
    )


def _pending_result(event: Event, previous: dict[str, str]) -> WriteResult:
    if isinstance(event, MemoryAdded):
        return WriteResult(event.memory_id or "", "ADD", event.text, event.event_id, True)
    if isinstance(event, MemoryUpdated):
        return WriteResult(
            event.memory_id or "", "UPDATE", event.text, event.event_id, True,
            previous_memory=previous.get(event.event_id),
        )  # fmt: skip
    return WriteResult(
        event.memory_id or "", "DELETE", previous.get(event.event_id), event.event_id, True
    )


def _inferred_result(row: dict[str, Any]) -> WriteResult:
    """A memory event's outcome as the platform answers it (UPDATE with previous_memory;
    CONFLICT when the memory changed after the LLM read it, so nothing was applied)."""
    outcome = row["outcome"]
    if outcome == "NONE":
        return WriteResult(row["resolved_memory_id"], "NONE", row["text"], row["event_id"])
    if outcome == "UPDATE":
        return WriteResult(
            row["memory_id"], "UPDATE", row["text"], row["event_id"],
            previous_memory=row["old_text"],
        )  # fmt: skip
    if outcome == "DELETE":
        return WriteResult(row["memory_id"], "DELETE", row["old_text"], row["event_id"])
    return WriteResult(row["memory_id"], outcome, row["text"] or row["old_text"], row["event_id"])
