"""A reinfer proposal after it is made: find it in the log, build and read its candidate
generation, compare it with the live memories, swap it in, discard the candidate, list the
project's proposals. None of it calls an LLM: a proposal is a fact in the log and its
candidate a fold of the log (projector/candidate.py). How proposals are made, and why the
candidate is never promoted but swapped in as events: producers/reinfer.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memstream.errors import ConflictError, LogUnavailableError, NotFoundError, ValidationError
from memstream.events import (
    Actor,
    Event,
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    decode_event,
    now_ms,
)
from memstream.llm.base import Usage
from memstream.log.base import Position
from memstream.models import Tenant, WriteResult
from memstream.producers.inference import _inferred_result
from memstream.producers.writer import MemoryWriter
from memstream.projector.candidate import (
    PROPOSAL_SOURCE,
    SWAP_SOURCE,
    Substitution,
    proposal_output,
)
from memstream.projector.store import Generation
from memstream.query.reader import MemoryReader
from memstream.scope import ENTITY_FIELDS, Scope
from memstream.sqlutil import sql_str

SCOPES_PER_QUERY = 50  # scopes OR-ed into one projection query
CHANGES = ("ADD", "UPDATE", "DELETE", "EXPIRE")  # audit outcomes that change a memory
MEMORY_COLUMNS = [
    "id", "org_id", "project_id", *ENTITY_FIELDS, "text", "hash", "metadata", "categories",
    "expiration_date", "immutable", "last_offset",
]  # fmt: skip
Progress = Callable[[int, int], Any]


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


def _chunks(items: Sequence[Scope], n: int) -> Iterable[Sequence[Scope]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def sorted_scopes(scopes: Iterable[Scope]) -> list[Scope]:
    return sorted(scopes, key=lambda s: [(v is None, v or "") for v in s.entities().values()])


def _rows(gen: Generation, scopes: Sequence[Scope]) -> dict[str, dict[str, Any]]:
    """The unexpired memory rows of these exact scopes, by id."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(sorted_scopes(scopes), SCOPES_PER_QUERY):
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
        if not pending:  # swapped before: its answer again (and no candidate left behind)
            await self.discard(tenant, proposal_id)
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
