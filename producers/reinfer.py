"""`reinfer`: re-decide the recorded conversations of a scope, or of every scope a filter
selects, with another model; judge the result as a candidate generation; swap it in.

Three steps, each a fact in the log or a fold of it (the log is the only source of truth,
and replay never calls an LLM):

1. **Propose** (`Reinferrer.propose`). The selected scopes' `MessagesRecorded` are replayed
   in log order, each scope against its own state simulated in memory: direct writes are
   applied as recorded, the old model's decisions (memory events with a `decision_id`) are
   left out, and at each conversation the new model decides against the simulated state
   (retrieval by the projection's embedder over it). What each conversation's decisions do
   to that state is kept as *ops* (ADD / UPDATE / DELETE with memory ids, texts and hashes;
   an ADD of a text an old decision had added reuses that memory's id, so an unchanged
   fact keeps its id). Then one `InferenceDecided` per scope -- the *proposal*: model,
   prompt, cost, every conversation's facts, decisions and ops, sealed under the scope's
   subject key -- is appended in one batch. The live projector records a proposal and
   applies nothing, as for every decision.

2. **The candidate** (`Proposals.candidate`): a real projection generation on disk
   (`projections/gen-*`, marked CANDIDATE) built by folding the log through the ordinary
   apply with the proposal substituted for the old decisions of its scopes
   (projector/candidate.py). It is a deterministic function of the log and the proposal
   id, so it can be discarded and rebuilt at any time without the LLM; the read commands
   read it (`memstream reinfer show/search`, `get-all`/`search --candidate`). Every
   erasure scrubs it like the live generation, and the start-up clean-up deletes a
   half-built one.

3. **Swap** (`Proposals.swap`): the difference between the candidate and the live
   memories of the proposal's scopes is appended in one batch: per scope an
   `InferenceDecided` adopting the proposal, and the MemoryDeleted / MemoryUpdated /
   MemoryAdded that turn the live state into the candidate's (same memory ids), each
   naming it, UPDATE and DELETE with the version they were compared against. The live
   projector then converges to the candidate. A swap is refused (409, nothing written) when
   a memory of those scopes changed after the proposal, or the proposal was erased; a change
   that lands between that check and the append is a CONFLICT of that one event (the
   `expected_offset` check), reported in the answer. Swapping twice is harmless: scopes
   already adopted are skipped. Replay reproduces the swapped state without any LLM: the
   adoption and its memory events are in the log.

Why not promote the candidate generation itself: a generation made live by renaming a
directory would hold state no event explains, and the next `memstream replay` (or the next
server on a fresh data directory, or another Kafka consumer) would fold the log to the old
state. The swap is therefore itself a fact in the ledger, and the candidate is only what it
will converge to.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memstream.crypto import keyed_hash
from memstream.errors import (
    ConflictError,
    FilterError,
    LogUnavailableError,
    NotFoundError,
    RequestTooLargeError,
    ValidationError,
)
from memstream.events import (
    Actor,
    Event,
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    MessagesRecorded,
    decode_event,
    now_ms,
)
from memstream.llm.base import LLM, Usage
from memstream.log.base import EventLog, Position
from memstream.models import Tenant, WriteResult
from memstream.producers import prompts
from memstream.producers.inference import (
    MAX_SHOWN,
    PER_FACT,
    SettingsCache,
    Shown,
    _inferred_result,
    decide,
)
from memstream.producers.writer import MemoryWriter
from memstream.projector.candidate import (
    PROPOSAL_SOURCE,
    SWAP_SOURCE,
    Substitution,
    proposal_output,
)
from memstream.projector.projector import Projector
from memstream.projector.store import Generation
from memstream.query.filters import EntityMatch, compile_filters
from memstream.query.filtertree import And, Node, Not, Or
from memstream.query.filtertree import Tenant as TenantNode
from memstream.query.reader import MemoryReader
from memstream.scope import ENTITY_FIELDS, Scope
from memstream.sqlutil import sql_str

MAX_CONVERSATIONS = 100  # default bound on the conversations one reinfer re-decides (--limit)
SCOPES_PER_QUERY = 50  # scopes OR-ed into one projection query
CHANGES = ("ADD", "UPDATE", "DELETE", "EXPIRE")  # audit outcomes that change a memory
MEMORY_COLUMNS = [
    "id", "org_id", "project_id", *ENTITY_FIELDS, "text", "hash", "metadata", "categories",
    "expiration_date", "immutable", "last_offset",
]  # fmt: skip
Progress = Callable[[int, int], Any]


@dataclass
class _Memory:
    text: str
    categories: tuple[str, ...] = ()
    immutable: bool = False
    metadata: str = "{}"
    expiration_date: str | None = None


@dataclass
class ReinferPlan:
    """A proposal and what its candidate differs in from the live memories."""

    proposal_id: str
    model: str
    scopes: list[Scope] = field(default_factory=list)
    conversations: int = 0
    generation: str | None = None  # the candidate generation's directory under projections/
    appear: list[dict[str, Any]] = field(default_factory=list)  # {id, scope ids, text, ...}
    change: list[dict[str, Any]] = field(default_factory=list)  # {id, from, to, last_offset}
    go: list[dict[str, Any]] = field(default_factory=list)  # {id, text, last_offset}
    unchanged: int = 0
    usage: Usage = Usage()

    def to_api(self) -> dict[str, Any]:
        return {
            "proposal_id": self.proposal_id,
            "model": self.model,
            "generation": self.generation,
            "scopes": [_ids(s) for s in self.scopes],
            "conversations": self.conversations,
            "appear": [_public(a) for a in self.appear],
            "change": [_public(c) for c in self.change],
            "go": [_public(g) for g in self.go],
            "unchanged": self.unchanged,
            "tokens": {
                "prompt": self.usage.prompt_tokens,
                "completion": self.usage.completion_tokens,
            },
        }


def _ids(scope: Scope) -> dict[str, str]:
    return {k: v for k, v in scope.entities().items() if v is not None}


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("last_offset", "row")}


def scope_where(scope: Scope) -> str:
    """The exact scope as a predicate on projection rows (implicit null scoping)."""
    parts = [f"org_id = {sql_str(scope.org_id)}", f"project_id = {sql_str(scope.project_id)}"]
    for name, value in scope.entities().items():
        parts.append(f"{name} = {sql_str(value)}" if value is not None else f"{name} IS NULL")
    return " AND ".join(parts)


def _entity_only(node: Node) -> bool:
    match node:
        case And(children) | Or(children):
            return all(_entity_only(c) for c in children)
        case Not(child):
            return _entity_only(child)
        case EntityMatch() | TenantNode():
            return True
    return False


def _chunks(items: Sequence[Scope], n: int) -> Iterable[Sequence[Scope]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _sorted(scopes: Iterable[Scope]) -> list[Scope]:
    return sorted(scopes, key=lambda s: [(v is None, v or "") for v in s.entities().values()])


def _rows(gen: Generation, scopes: Sequence[Scope]) -> dict[str, dict[str, Any]]:
    """The unexpired memory rows of these exact scopes, by id."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(_sorted(scopes), SCOPES_PER_QUERY):
        pred = " OR ".join(f"({scope_where(s)})" for s in chunk)
        for row in gen.query_memories(f"expired_at IS NULL AND ({pred})", MEMORY_COLUMNS):
            out[row["id"]] = row
    return out


class Proposals(MemoryWriter):
    """Find a proposal in the log, build and read its candidate, swap it in, discard it:
    everything but the re-deciding itself, so none of it needs an LLM."""

    # -- finding a proposal --------------------------------------------------------------
    def _proposal_rows(self, tenant: Tenant, proposal_id: str, source: str) -> list[dict[str, Any]]:
        rows = self.projector.generation().query_events(
            f"org_id = {sql_str(tenant.org_id)} AND project_id = {sql_str(tenant.project_id)} "
            f"AND request_id = {sql_str(proposal_id)} AND event_type = 'InferenceDecided' "
            f"AND actor_source = {sql_str(source)}"
        )
        return sorted(rows, key=lambda r: (r["partition"], r["offset"]))

    async def locate(
        self, tenant: Tenant, proposal_id: str
    ) -> list[tuple[InferenceDecided, Position]]:
        """The proposal's events, read from the log (where the projection says they are)."""
        if not isinstance(proposal_id, str) or not proposal_id.strip():
            raise ValidationError("proposal: must be a non-empty id")
        rows = self._proposal_rows(tenant, proposal_id, PROPOSAL_SOURCE)
        if not rows:
            raise NotFoundError(f"no reinfer proposal {proposal_id!r} in this project")
        positions = [Position(r["partition"], r["offset"]) for r in rows]
        events = await self._read_at(positions)
        if any(e.erased for e in events.values()):  # a key made by another process since
            await self.projector.keys.refresh()
            events = await self._read_at(positions)
        out: list[tuple[InferenceDecided, Position]] = []
        for pos in positions:
            event = events[pos]
            assert isinstance(event, InferenceDecided)
            out.append((event, pos))
        return out

    async def _read_at(self, positions: list[Position]) -> dict[Position, Event]:
        end = await self.log.end_offsets()
        start = dict(end)
        for pos in positions:
            start[pos.partition] = min(start.get(pos.partition, pos.offset), pos.offset)
        want = set(positions)
        found: dict[Position, Event] = {}
        reader = await self.log.reader(start)
        try:
            empty = 0
            while want - set(found) and empty < 10:
                batch = await reader.next_batch(1000, timeout_s=0.5)
                empty = 0 if batch else empty + 1
                for record in batch:
                    if record.position in want:
                        found[record.position] = decode_event(
                            record.value, self.projector.keys.lookup
                        )
        finally:
            await reader.close()
        if missing := sorted(want - set(found)):
            raise LogUnavailableError(
                "reinfer: could not read the proposal's events at log position(s) "
                + ", ".join(f"{p.partition}:{p.offset}" for p in missing)
            )
        return found

    # -- the candidate generation ----------------------------------------------------------
    async def candidate(
        self,
        tenant: Tenant,
        proposal_id: str,
        *,
        located: list[tuple[InferenceDecided, Position]] | None = None,
        progress: Progress | None = None,
    ) -> Generation:
        """The proposal's candidate generation: the one on disk, or built now (no LLM)."""
        store = self.projector.store
        for name, marker in store.candidates().items():
            if marker.get("proposal") != proposal_id:
                continue
            if (marker.get("org_id"), marker.get("project_id")) != (
                tenant.org_id,
                tenant.project_id,
            ):
                continue
            meta = store.meta(name)
            if meta.embedder == self.projector.embedder.name and meta.log == self.log.identity:
                return store.open(name)
            await self.projector.drop_candidate(name)  # another embedder: rebuilt below
        if located is None:
            located = await self.locate(tenant, proposal_id)
        rewrite = Substitution.of(proposal_id, located)

        def describe(checkpoint: dict[int, int]) -> dict[str, Any]:
            return {
                "proposal": proposal_id, "org_id": tenant.org_id,
                "project_id": tenant.project_id, "built_at": now_ms(),
                "built_to": {str(p): o for p, o in sorted(checkpoint.items())},
            }  # fmt: skip

        return await self.projector.build_candidate(rewrite, describe, progress)

    def candidate_reader(self, gen: Generation) -> MemoryReader:
        """A reader of a candidate generation (the read commands' `--candidate`)."""
        return MemoryReader(self.projector, generation=gen)

    def compare(self, plan: ReinferPlan, gen: Generation) -> dict[str, dict[str, Any]]:
        """Fill the plan's appear / change / go / unchanged: the candidate's memories of the
        plan's scopes against the live ones, by memory id. Returns the candidate's rows."""
        live = _rows(self.projector.generation(), plan.scopes)
        cand = _rows(gen, plan.scopes)
        plan.appear, plan.change, plan.go, plan.unchanged = [], [], [], 0
        for mid in sorted(
            set(live) | set(cand), key=lambda i: ((live.get(i) or cand[i])["text"], i)
        ):
            was, will = live.get(mid), cand.get(mid)
            if was is None:
                assert will is not None
                plan.appear.append({"id": mid, **_ids(Scope.of_row(will)), "text": will["text"],
                                    "categories": list(will["categories"] or [])})  # fmt: skip
            elif will is None:
                plan.go.append({"id": mid, **_ids(Scope.of_row(was)), "text": was["text"],
                                "last_offset": int(was["last_offset"])})  # fmt: skip
            elif was["text"] != will["text"] or sorted(was["categories"] or []) != sorted(
                will["categories"] or []
            ):
                plan.change.append({
                    "id": mid, **_ids(Scope.of_row(was)), "from": was["text"], "to": will["text"],
                    "categories": list(will["categories"] or []),
                    "last_offset": int(was["last_offset"]),
                })  # fmt: skip
            else:
                plan.unchanged += 1
        return cand

    def _plan_of(
        self, proposal_id: str, located: list[tuple[InferenceDecided, Position]]
    ) -> ReinferPlan:
        first = located[0][0]
        plan = ReinferPlan(proposal_id, first.model, scopes=[e.scope for e, _ in located])
        for event, _ in located:
            output = proposal_output(event) or {}
            plan.conversations += len(output.get("conversations", []))
            plan.usage = plan.usage + Usage(event.prompt_tokens, event.completion_tokens, 0)
        return plan

    async def show(
        self, tenant: Tenant, proposal_id: str, progress: Progress | None = None
    ) -> tuple[ReinferPlan, Generation]:
        """The proposal against the live memories now (its candidate built if missing)."""
        await self.projector.catch_up()
        located = await self.locate(tenant, proposal_id)
        gen = await self.candidate(tenant, proposal_id, located=located, progress=progress)
        plan = self._plan_of(proposal_id, located)
        plan.generation = gen.path.name
        self.compare(plan, gen)
        return plan, gen

    # -- swap, discard, list -------------------------------------------------------------
    async def swap(
        self, tenant: Tenant, proposal_id: str, progress: Progress | None = None
    ) -> tuple[ReinferPlan, list[WriteResult]]:
        """Make the proposal live (see the module docstring)."""
        self.projector.check_writable()
        await self.projector.catch_up()
        located = await self.locate(tenant, proposal_id)
        adopted = {Scope.of_row(r) for r in self._proposal_rows(tenant, proposal_id, SWAP_SOURCE)}
        pending = [(e, pos) for e, pos in located if e.scope not in adopted]
        plan = self._plan_of(proposal_id, located)
        if not pending:  # swapped before: its answer again
            rows = self.reader.events_for_request(tenant, proposal_id)
            return plan, [
                _inferred_result(r) for r in rows
                if r["actor_source"] == SWAP_SOURCE and r["event_type"] != "InferenceDecided"
            ]  # fmt: skip
        if erased := [e.scope for e, _ in pending if proposal_output(e) is None]:
            raise ConflictError(
                f"reinfer proposal {proposal_id}: the conversations of "
                + ", ".join(json.dumps(_ids(s)) for s in erased)
                + " were erased after it was made; run `memstream reinfer` again"
            )
        if changed := self._changed_since(pending, proposal_id):
            raise ConflictError(
                f"reinfer proposal {proposal_id}: memories of its scopes changed after it was "
                f"made, so its candidate no longer shows what a swap would do ("
                + "; ".join(changed[:10]) + (" ..." if len(changed) > 10 else "")
                + "); nothing was written. Run `memstream reinfer` again"
            )  # fmt: skip
        gen = await self.candidate(tenant, proposal_id, located=located, progress=progress)
        plan.generation = gen.path.name
        plan.scopes = [e.scope for e, _ in pending]
        cand = self.compare(plan, gen)
        events = await self._adoption(proposal_id, pending, plan, cand)
        await self._append(events)
        changes = [e for e in events if not isinstance(e, InferenceDecided)]
        results = [_inferred_result(row) for row in await self._decisions(changes)]
        await self.projector.drop_candidate(gen.path.name)  # live now converges to it
        return plan, results

    def _changed_since(
        self, pending: list[tuple[InferenceDecided, Position]], proposal_id: str
    ) -> list[str]:
        """Memory changes in the proposal's scopes after its events (its own swap aside)."""
        gen = self.projector.generation()
        out: list[str] = []
        for event, pos in pending:
            outcomes = ", ".join(sql_str(o) for o in CHANGES)
            for row in gen.query_events(f"{scope_where(event.scope)} AND outcome IN ({outcomes})"):
                after = (row["partition"], row["offset"]) > (pos.partition, pos.offset)
                if after and row["request_id"] != proposal_id:
                    out.append(
                        f"{row['event_type']} of memory {row['memory_id']} at log position "
                        f"{row['partition']}:{row['offset']}"
                    )
        return out

    async def _adoption(
        self,
        proposal_id: str,
        pending: list[tuple[InferenceDecided, Position]],
        plan: ReinferPlan,
        cand: dict[str, dict[str, Any]],
    ) -> list[Event]:
        """Per scope an InferenceDecided adopting the proposal, then the memory events that
        turn the live memories into the candidate's: deletes first, then updates, then adds
        (an add of a text a deleted memory held must not be taken for its duplicate)."""
        who = Actor(source=SWAP_SOURCE)
        decisions: dict[Scope, InferenceDecided] = {}
        for proposal, _ in pending:
            decisions[proposal.scope] = InferenceDecided(
                scope=proposal.scope, actor=who, request_id=proposal_id,
                messages_event_id=proposal.messages_event_id, model=proposal.model,
                llm_host=proposal.llm_host, prompt_version=proposal.prompt_version,
                prompt_hash=proposal.prompt_hash, temperature=proposal.temperature,
                output=json.dumps({"adopts": proposal_id, "proposal_event_id": proposal.event_id}),
            )  # fmt: skip
        deletes: list[Event] = []
        updates: list[Event] = []
        adds: list[Event] = []
        live = _rows(self.projector.generation(), plan.scopes)
        for gone in plan.go:
            row = live[gone["id"]]
            deletes.append(MemoryDeleted(
                scope=Scope.of_row(row), memory_id=gone["id"], actor=who, request_id=proposal_id,
                reason="inference", decision_id=decisions[Scope.of_row(row)].event_id,
                expected_offset=gone["last_offset"],
            ))  # fmt: skip
        for c in plan.change:
            row, new = live[c["id"]], cand[c["id"]]
            updates.append(MemoryUpdated(
                scope=Scope.of_row(row), memory_id=c["id"], actor=who, request_id=proposal_id,
                text=new["text"], hash=new["hash"], previous_hash=row["hash"],
                categories=tuple(new["categories"] or ()),
                decision_id=decisions[Scope.of_row(row)].event_id,
                expected_offset=c["last_offset"],
            ))  # fmt: skip
        for a in plan.appear:
            new = cand[a["id"]]
            adds.append(MemoryAdded(
                scope=Scope.of_row(new), memory_id=a["id"], actor=who, request_id=proposal_id,
                text=new["text"], hash=new["hash"], metadata=new["metadata"] or "{}",
                categories=tuple(new["categories"] or ()),
                expiration_date=new["expiration_date"], immutable=bool(new["immutable"]),
                decision_id=decisions[Scope.of_row(new)].event_id,
            ))  # fmt: skip
        return [*decisions.values(), *deletes, *updates, *adds]

    async def discard(self, tenant: Tenant, proposal_id: str) -> list[str]:
        """Delete the proposal's candidate generation(s); the proposal stays in the log (a
        later `show` or `swap` rebuilds the candidate from it, without the LLM)."""
        dropped = []
        for name, marker in self.projector.store.candidates().items():
            if marker.get("proposal") == proposal_id and (
                marker.get("org_id"),
                marker.get("project_id"),
            ) == (tenant.org_id, tenant.project_id):
                await self.projector.drop_candidate(name)
                dropped.append(name)
        if not dropped:
            await self.projector.catch_up()
            if not self._proposal_rows(tenant, proposal_id, PROPOSAL_SOURCE):
                raise NotFoundError(f"no reinfer proposal {proposal_id!r} in this project")
        return dropped

    async def proposals(self, tenant: Tenant) -> list[dict[str, Any]]:
        """The project's proposals, newest first: model, scopes, whether swapped in, and
        the candidate generation on disk if there is one."""
        await self.projector.catch_up()
        rows = self.projector.generation().query_events(
            f"org_id = {sql_str(tenant.org_id)} AND project_id = {sql_str(tenant.project_id)} "
            f"AND event_type = 'InferenceDecided' AND actor_source IN "
            f"({sql_str(PROPOSAL_SOURCE)}, {sql_str(SWAP_SOURCE)}) AND request_id IS NOT NULL"
        )
        on_disk = {
            m.get("proposal"): name
            for name, m in self.projector.store.candidates().items()
            if (m.get("org_id"), m.get("project_id")) == (tenant.org_id, tenant.project_id)
        }
        found: dict[str, dict[str, Any]] = {}
        for row in sorted(rows, key=lambda r: (r["occurred_at"], r["partition"], r["offset"])):
            pid = row["request_id"]
            if row["actor_source"] == PROPOSAL_SOURCE:
                payload = json.loads(row["payload"] or "{}")
                item = found.setdefault(pid, {
                    "proposal_id": pid, "model": payload.get("model"),
                    "made_at": row["occurred_at"], "scopes": 0, "swapped_scopes": 0,
                    "generation": on_disk.get(pid),
                })  # fmt: skip
                item["scopes"] += 1
            elif pid in found:
                found[pid]["swapped_scopes"] += 1
        return sorted(found.values(), key=lambda i: -i["made_at"])


class Reinferrer(Proposals):
    """Proposals, and making them: re-deciding with an LLM (step 1 of the module docstring)."""

    def __init__(
        self,
        log: EventLog,
        projector: Projector,
        reader: MemoryReader,
        llm: LLM,
        settings: SettingsCache,
    ) -> None:
        super().__init__(log, projector, reader)
        self.llm = llm
        self.settings = settings

    def select(self, tenant: Tenant, filters: Any) -> Counter[Scope]:
        """The exact scopes with recorded conversations the filter selects, and how many
        conversations each has (not erased). Only entity ids select: a scope's
        conversations are re-decided together or not at all."""
        compiled = compile_filters(filters, org_id=tenant.org_id, project_id=tenant.project_id)
        if not _entity_only(compiled.ast):
            raise FilterError(
                "filters",
                "reinfer selects recorded conversations by entity ids only (user_id, "
                "agent_id, app_id, run_id with in / * / AND / OR / NOT); dates, categories, "
                "metadata, keywords and memory ids describe memories, not conversations",
            )
        table = self.projector.generation().events()
        if table is None:
            return Counter()
        rows = (
            table.search()
            .where(
                "event_type = 'MessagesRecorded' AND text IS NOT NULL AND "
                f"({compiled.lance_prefilter})"
            )
            .select(["org_id", "project_id", *ENTITY_FIELDS])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        return Counter(Scope.of_row(r) for r in rows if compiled.matches(r))

    async def propose(
        self,
        tenant: Tenant,
        filters: Any,
        *,
        limit: int = MAX_CONVERSATIONS,
        progress: Progress | None = None,
        build_progress: Progress | None = None,
    ) -> ReinferPlan:
        """Re-decide, record the proposal, build its candidate and compare it with the live
        memories (nothing live changes)."""
        if not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit: must be a positive number of conversations")
        self.projector.check_writable()
        await self.projector.catch_up()
        selected = self.select(tenant, filters)
        total = sum(selected.values())
        if not selected:
            raise NotFoundError(
                "reinfer: the filter selects no recorded conversation in this project (only "
                "inferred adds, `add --infer`, record one)"
            )
        if total > limit:
            raise RequestTooLargeError(
                f"reinfer: the filter selects {total} recorded conversations in "
                f"{len(selected)} scope(s), more than the limit of {limit}; narrow the filter "
                "or raise --limit (every conversation costs two LLM calls)"
            )
        settings = self.settings.get(tenant)
        await self.projector.keys.refresh()  # to open conversations sealed by other processes
        by_scope = await self._events_of(set(selected))
        proposal_id = str(uuid.uuid4())
        who = Actor(source=PROPOSAL_SOURCE)
        done = 0
        if progress is not None:
            progress(0, total)
        proposals: list[Event] = []
        for scope in _sorted(selected):

            def step() -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            key = await self._key(scope)
            assert key is not None
            conversations, usage = await self._simulate(
                scope, by_scope.get(scope, []), settings, key, step
            )
            if not conversations:
                continue
            proposals.append(InferenceDecided(
                scope=scope, actor=who, request_id=proposal_id,
                messages_event_id=conversations[-1]["messages_event_id"], model=self.llm.model,
                llm_host=self.llm.host, prompt_version=prompts.PROMPT_VERSION,
                prompt_hash=prompts.PROMPT_HASH, temperature=self.llm.temperature,
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                latency_ms=usage.latency_ms,
                output=json.dumps({"proposal": proposal_id, "conversations": conversations},
                                  ensure_ascii=False),
            ))  # fmt: skip
        if not proposals:
            raise NotFoundError("reinfer: every selected conversation was erased meanwhile")
        await self._append(proposals)  # one batch: the proposal is whole or absent
        plan, _ = await self.show(tenant, proposal_id, build_progress)
        return plan

    async def _events_of(self, scopes: set[Scope]) -> dict[Scope, list[Event]]:
        """Each scope's events in log order (one scope lives in one partition), in one pass
        over the log."""
        keys = {s.key() for s in scopes}
        reader = await self.log.reader({})
        found: dict[Scope, list[tuple[int, int, Event]]] = {}
        try:
            end = await self.log.end_offsets()
            seen, total = 0, sum(end.values())
            while seen < total:
                batch = await reader.next_batch(1000, timeout_s=1.0)
                if not batch:
                    break
                seen += len(batch)
                for record in batch:
                    if record.key not in keys:
                        continue
                    event = decode_event(record.value, self.projector.keys.lookup)
                    if event.scope in scopes:
                        found.setdefault(event.scope, []).append(
                            (record.position.partition, record.position.offset, event)
                        )
        finally:
            await reader.close()
        return {s: [e for _, _, e in sorted(items, key=lambda t: (t[0], t[1]))]
                for s, items in found.items()}  # fmt: skip

    async def _simulate(
        self,
        scope: Scope,
        events: list[Event],
        settings: Any,
        key: Any,
        step: Callable[[], None],
    ) -> tuple[list[dict[str, Any]], Usage]:
        """Re-decide one scope's conversations against its simulated state; per conversation
        the new output and its ops (what its decisions did to the state)."""
        # what the old decisions knew about each conversation's request, and their memories'
        # ids by text (an ADD of the same text reuses the id: an unchanged fact keeps its id)
        conversation_of: dict[str, str] = {}
        request: dict[str, dict[str, Any]] = {}
        old_ids: dict[str, list[str]] = {}
        for e in events:
            if e.erased:
                continue
            if isinstance(e, InferenceDecided) and e.actor.source not in (
                PROPOSAL_SOURCE,
                SWAP_SOURCE,
            ):
                conversation_of[e.event_id] = e.messages_event_id
            elif isinstance(e, MemoryAdded) and e.decision_id is not None:
                old_ids.setdefault(e.text, []).append(e.memory_id or "")
                messages = conversation_of.get(e.decision_id)
                if messages is not None and messages not in request:
                    request[messages] = {"metadata": e.metadata, "expiration_date":
                                         e.expiration_date, "immutable": e.immutable}  # fmt: skip
        claimed: set[str] = set()
        state: dict[str, _Memory] = {}
        conversations: list[dict[str, Any]] = []
        usage = Usage()
        allowed = set(settings.category_names())
        for event in events:
            if event.erased:
                continue
            if isinstance(event, MessagesRecorded):
                before = dict(state)
                outcome = await decide(
                    self.llm, settings, json.loads(event.messages), self._retrieval(state)
                )
                usage = usage + outcome.usage
                fields = request.get(event.event_id, {})
                for d in outcome.decisions:
                    text = d.text.strip()
                    cats = tuple(c for c in (d.categories or []) if c in allowed)
                    if d.event == "ADD" and text and all(m.text != text for m in state.values()):
                        reuse = [i for i in old_ids.get(text, []) if i not in claimed | set(state)]
                        mid = reuse[0] if reuse else str(uuid.uuid4())
                        claimed.add(mid)
                        state[mid] = _Memory(
                            text, cats, bool(fields.get("immutable")),
                            fields.get("metadata") or "{}", fields.get("expiration_date"),
                        )  # fmt: skip
                    elif d.event in ("UPDATE", "DELETE"):
                        target = outcome.by_temp[d.id or ""].memory_id
                        current = state.get(target)
                        if current is None or current.immutable:
                            continue
                        if d.event == "DELETE":
                            del state[target]
                        elif text:
                            state[target] = _Memory(
                                text, cats or current.categories, False, current.metadata,
                                current.expiration_date,
                            )  # fmt: skip
                conversations.append({
                    "messages_event_id": event.event_id, "facts": outcome.facts,
                    "shown": [{"id": s.temp_id, "memory_id": s.memory_id} for s in outcome.shown],
                    "memory": [d.model_dump(exclude_none=True) for d in outcome.decisions],
                    "ops": _ops(before, state, key),
                })  # fmt: skip
                step()
            elif getattr(event, "decision_id", None) is not None:
                continue  # the old model's decisions (and earlier swaps): re-decided above
            elif isinstance(event, MemoryAdded):
                if all(m.text != event.text for m in state.values()):
                    state[event.memory_id or ""] = _Memory(
                        event.text, event.categories, event.immutable, event.metadata,
                        event.expiration_date,
                    )  # fmt: skip
            elif isinstance(event, MemoryUpdated):
                current = state.get(event.memory_id or "")
                if current is not None and not current.immutable:
                    state[event.memory_id or ""] = _Memory(
                        event.text if event.text is not None else current.text,
                        event.categories if event.categories is not None else current.categories,
                        False, event.metadata if event.metadata is not None else current.metadata,
                        current.expiration_date,
                    )  # fmt: skip
            elif isinstance(event, MemoryDeleted | MemoryExpired):
                state.pop(event.memory_id or "", None)
        return conversations, usage

    def _retrieval(self, state: dict[str, _Memory]) -> Any:
        embedder = self.projector.embedder

        async def retrieve(facts: list[str]) -> list[Shown]:
            ids = list(state)
            if not ids:
                return []
            vectors = embedder.embed([state[i].text for i in ids])
            found: dict[str, None] = {}
            per_fact = [
                list(np.argsort(-(vectors @ embedder.embed_one(f)))[:PER_FACT]) for f in facts
            ]
            for rank in range(PER_FACT):
                for order in per_fact:
                    if rank < len(order) and len(found) < MAX_SHOWN:
                        found.setdefault(ids[int(order[rank])], None)
            return [
                Shown(str(n), mid, state[mid].text, "", 0, state[mid].immutable)
                for n, mid in enumerate(found)
            ]

        return retrieve


def _ops(before: dict[str, _Memory], after: dict[str, _Memory], key: Any) -> list[dict[str, Any]]:
    """What one conversation's decisions did to the simulated state, one op per memory."""
    ops: list[dict[str, Any]] = []
    for mid in before:
        if mid not in after:
            ops.append({"op": "DELETE", "memory_id": mid})
    for mid, m in after.items():
        was = before.get(mid)
        if was is None:
            ops.append({
                "op": "ADD", "memory_id": mid, "text": m.text, "hash": keyed_hash(key, m.text),
                "categories": list(m.categories), "metadata": m.metadata,
                "expiration_date": m.expiration_date, "immutable": m.immutable,
            })  # fmt: skip
        elif was != m:
            ops.append({"op": "UPDATE", "memory_id": mid, "text": m.text,
                        "hash": keyed_hash(key, m.text), "categories": list(m.categories)})  # fmt: skip
    return ops
