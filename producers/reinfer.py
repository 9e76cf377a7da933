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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from memstream.crypto import keyed_hash
from memstream.errors import FilterError, NotFoundError, RequestTooLargeError, ValidationError
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
)
from memstream.llm.base import LLM, Usage
from memstream.log.base import EventLog
from memstream.models import Tenant
from memstream.producers import prompts
from memstream.producers.inference import MAX_SHOWN, PER_FACT, SettingsCache, Shown, decide
from memstream.producers.proposals import Progress, Proposals, ReinferPlan, sorted_scopes
from memstream.projector.candidate import PROPOSAL_SOURCE, SWAP_SOURCE
from memstream.projector.projector import Projector
from memstream.query.filters import EntityMatch, compile_filters
from memstream.query.filtertree import And, Node, Not, Or
from memstream.query.filtertree import Tenant as TenantNode
from memstream.query.reader import MemoryReader
from memstream.scope import ENTITY_FIELDS, Scope

__all__ = ["MAX_CONVERSATIONS", "Proposals", "ReinferPlan", "Reinferrer"]

MAX_CONVERSATIONS = 100  # default bound on the conversations one reinfer re-decides (--limit)


@dataclass
class _Memory:
    text: str
    categories: tuple[str, ...] = ()
    immutable: bool = False
    metadata: str = "{}"
    expiration_date: str | None = None


def _entity_only(node: Node) -> bool:
    match node:
        case And(children) | Or(children):
            return all(_entity_only(c) for c in children)
        case Not(child):
            return _entity_only(child)
        case EntityMatch() | TenantNode():
            return True
    return False


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
        for scope in sorted_scopes(selected):

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
