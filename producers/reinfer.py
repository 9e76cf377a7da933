"""`reinfer`: re-decide a scope's recorded conversations with another model, compare, and
(on request) swap the result in.

The recorded `MessagesRecorded` events of the scope are replayed in log order against a
state simulated in memory: direct writes (no `decision_id`) are applied as recorded, the
old model's decisions are left out, and at each conversation the new model decides against
the simulated state (retrieval by the projection's embedder over it). The final simulated
state is compared with the live one: memories that would appear, change or go.

Why the result is not kept as an unswapped projection generation: a generation built from
decisions that are not in the log would not survive a replay (the log is the only source of
truth). So the plan is computed beside the live projection and only printed; `swap=True`
appends the difference as events, in one batch: an `InferenceDecided` recording the
re-decision (model, prompt, cost, every conversation's new output) and the MemoryAdded /
MemoryUpdated / MemoryDeleted that turn the live state into the planned one, each naming
it, UPDATE and DELETE with the version they were planned against (a memory changed since
is a CONFLICT, not overwritten). Replay reproduces the swapped state without any LLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memstream.crypto import keyed_hash
from memstream.errors import ValidationError
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
    new_id,
)
from memstream.llm.base import LLM, Usage
from memstream.log.base import EventLog
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
from memstream.projector.projector import Projector
from memstream.query.reader import MemoryReader
from memstream.scope import ENTITY_FIELDS, Scope
from memstream.sqlutil import sql_in


@dataclass
class _Memory:
    text: str
    categories: tuple[str, ...] = ()
    immutable: bool = False


@dataclass
class ReinferPlan:
    """What the new model would make of the scope, against what is live."""

    scope: Scope
    model: str
    llm_host: str
    conversations: int = 0
    appear: list[dict[str, Any]] = field(default_factory=list)  # {text, categories}
    change: list[dict[str, Any]] = field(default_factory=list)  # {id, from, to, last_offset}
    go: list[dict[str, Any]] = field(default_factory=list)  # {id, text, last_offset}
    unchanged: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)  # per conversation
    usage: Usage = Usage()
    last_messages_event_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "scope": {k: getattr(self.scope, k) for k in ENTITY_FIELDS if getattr(self.scope, k)},
            "model": self.model,
            "conversations": self.conversations,
            "appear": self.appear,
            "change": self.change,
            "go": self.go,
            "unchanged": self.unchanged,
            "tokens": {
                "prompt": self.usage.prompt_tokens,
                "completion": self.usage.completion_tokens,
            },
        }


class Reinferrer(MemoryWriter):
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

    async def plan(self, tenant: Tenant, **ids: Any) -> ReinferPlan:
        scope = Scope.of(tenant.org_id, tenant.project_id, **ids)
        await self.projector.catch_up()
        settings = self.settings.get(tenant)
        plan = ReinferPlan(scope, self.llm.model, self.llm.host)
        state: dict[str, _Memory] = {}
        planned = 0
        for event in await self._scope_events(scope):
            if event.erased:
                continue
            if isinstance(event, MessagesRecorded):
                conversation = json.loads(event.messages)
                outcome = await decide(
                    self.llm, settings, conversation, self._simulated_retrieval(state)
                )
                plan.conversations += 1
                plan.usage = plan.usage + outcome.usage
                plan.last_messages_event_id = event.event_id
                plan.decisions.append(
                    {"messages_event_id": event.event_id, **json.loads(outcome.output())}
                )
                allowed = set(settings.category_names())
                for d in outcome.decisions:
                    text = d.text.strip()
                    cats = tuple(c for c in (d.categories or []) if c in allowed)
                    if d.event == "ADD" and text and all(m.text != text for m in state.values()):
                        planned += 1
                        state[f"planned-{planned}"] = _Memory(text, cats)
                    elif d.event in ("UPDATE", "DELETE"):
                        target = outcome.by_temp[d.id or ""].memory_id
                        if state[target].immutable:
                            continue
                        if d.event == "DELETE":
                            del state[target]
                        elif text:
                            state[target] = _Memory(text, cats or state[target].categories)
            elif getattr(event, "decision_id", None) is not None:
                continue  # the old model's decisions: re-decided above
            elif isinstance(event, MemoryAdded):
                if all(m.text != event.text for m in state.values()):
                    state[event.memory_id or ""] = _Memory(
                        event.text, event.categories, event.immutable
                    )
            elif isinstance(event, MemoryUpdated):
                current = state.get(event.memory_id or "")
                if current is not None and not current.immutable and event.text is not None:
                    state[event.memory_id or ""] = _Memory(
                        event.text, event.categories or current.categories
                    )
            elif isinstance(event, MemoryDeleted | MemoryExpired):
                state.pop(event.memory_id or "", None)
        self._compare(tenant, scope, state, plan)
        return plan

    async def swap(self, tenant: Tenant, plan: ReinferPlan) -> list[WriteResult]:
        """Append the planned difference (see the module docstring)."""
        if plan.last_messages_event_id is None:
            raise ValidationError("reinfer: the scope has no recorded conversation to re-decide")
        scope = plan.scope
        key = await self._key(scope)
        assert key is not None
        who = Actor(source="reinfer")
        decision = InferenceDecided(
            scope=scope, actor=who, messages_event_id=plan.last_messages_event_id,
            model=self.llm.model, llm_host=self.llm.host,
            prompt_version=prompts.PROMPT_VERSION, prompt_hash=prompts.PROMPT_HASH,
            temperature=self.llm.temperature, prompt_tokens=plan.usage.prompt_tokens,
            completion_tokens=plan.usage.completion_tokens, latency_ms=plan.usage.latency_ms,
            output=json.dumps({"reinfer": True, "conversations": plan.decisions}),
        )  # fmt: skip
        changes: list[Event] = []
        for gone in plan.go:
            changes.append(MemoryDeleted(
                scope=scope, memory_id=gone["id"], actor=who, reason="reinfer",
                decision_id=decision.event_id, expected_offset=gone["last_offset"],
            ))  # fmt: skip
        for c in plan.change:
            changes.append(MemoryUpdated(
                scope=scope, memory_id=c["id"], actor=who, text=c["to"],
                hash=keyed_hash(key, c["to"]), decision_id=decision.event_id,
                expected_offset=c["last_offset"],
            ))  # fmt: skip
        for new in plan.appear:
            changes.append(MemoryAdded(
                scope=scope, memory_id=new_id(), actor=who, text=new["text"],
                hash=keyed_hash(key, new["text"]), categories=tuple(new["categories"]),
                decision_id=decision.event_id,
            ))  # fmt: skip
        await self._append([decision, *changes])
        return [_inferred_result(row) for row in await self._decisions(changes)]

    async def _scope_events(self, scope: Scope) -> list[Event]:
        """The scope's events in log order (one scope lives in one partition)."""
        reader = await self.log.reader({})
        found: list[tuple[int, int, Event]] = []
        try:
            end = await self.log.end_offsets()
            seen = 0
            total = sum(end.values())
            while seen < total:
                batch = await reader.next_batch(1000, timeout_s=1.0)
                if not batch:
                    break
                seen += len(batch)
                for record in batch:
                    if record.key != scope.key():
                        continue
                    event = decode_event(record.value, self.projector.keys.lookup)
                    if event.scope == scope:
                        found.append((record.position.partition, record.position.offset, event))
        finally:
            await reader.close()
        found.sort(key=lambda t: (t[0], t[1]))
        return [e for _, _, e in found]

    def _simulated_retrieval(self, state: dict[str, _Memory]) -> Any:
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

    def _compare(
        self, tenant: Tenant, scope: Scope, state: dict[str, _Memory], plan: ReinferPlan
    ) -> None:
        filters = {k: getattr(scope, k) for k in ENTITY_FIELDS if getattr(scope, k)}
        live: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            chunk = self.reader.get_all(tenant, filters, page=page, page_size=1000)
            live.update({m.id: {"text": m.memory} for m in chunk.results})
            if page * chunk.page_size >= chunk.count:
                break
            page += 1
        if live:
            for row in self.projector.generation().query_memories(
                sql_in("id", list(live)), ["id", "last_offset"]
            ):
                live[row["id"]]["last_offset"] = int(row["last_offset"])
        live_only = {mid: v for mid, v in live.items() if mid not in state}
        sim_only = {mid: m for mid, m in state.items() if mid not in live}
        for mid in sorted(set(live) & set(state)):
            if live[mid]["text"] != state[mid].text:
                plan.change.append({
                    "id": mid, "from": live[mid]["text"], "to": state[mid].text,
                    "last_offset": live[mid].get("last_offset"),
                })  # fmt: skip
            else:
                plan.unchanged += 1
        sim_texts = {m.text for m in sim_only.values()}
        live_texts = {v["text"] for v in live_only.values()}
        for mid, v in live_only.items():
            if v["text"] in sim_texts:
                plan.unchanged += 1
            else:
                plan.go.append({"id": mid, "text": v["text"], "last_offset": v.get("last_offset")})
        for m in sim_only.values():
            if m.text not in live_texts:
                plan.appear.append({"text": m.text, "categories": list(m.categories)})
