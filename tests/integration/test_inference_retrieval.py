"""Inference's retrieval fast path answers exactly what the per-fact path answered.

An inferred add reads its scope once (`MemoryReader.prepare_search`, while the LLM extracts
facts), embeds every fact in one batch and ranks each against that read (`nearest`). Before,
each fact was one `search_rows` (its own embedding, its own read of the table). These tests
hold the two to the same answer, row for row, on a projection with several scopes of one
user (implicit null scoping), another tenant, updates, a delete, an expired memory and a
retention policy; on the scoped plan and on its Lance fallback; and through a real inferred
add, whose LLM must be shown what per-fact retrieval finds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from memstream.events import InferenceDecided, decode_event
from memstream.producers.inference import PER_FACT, nearest, scope_filters, shown_of
from memstream.query.reader import MemoryReader
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_scoped_reads import FILTERS, QUERIES, populate
from tests.llm_server import ScriptedLLM, decide, facts

FACTS = [
    "food",
    "work notes about a deadline",
    "the weather on tuesday",
    "alice now prefers tea",
    "memory 7 about weather",
]


def test_a_prepared_search_ranks_every_vector_exactly_as_search_rows(tmp_path: Path) -> None:
    async def go() -> None:
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            await populate(ms)
            embedder = ms.projector.embedder
            readers = {
                "scoped": ms.reader,
                "fallback": MemoryReader(ms.projector, max_search_rows=1),  # Lance per vector
                "unscoped": MemoryReader(ms.projector, scoped=False),
            }
            compared = 0
            planned = dict.fromkeys(readers, 0)  # prepared searches that read the scope
            for (name, reader), filters, show_expired in itertools.product(
                readers.items(), FILTERS, (False, True)
            ):
                prepared = reader.prepare_search(ms.tenant, filters, show_expired=show_expired)
                planned[name] += prepared.scope is not None
                # one read, several vectors: each answer is search_rows' answer, every column
                for query in [*QUERIES, *FACTS]:
                    got = prepared.rows(embedder.embed_one(query), 5)
                    want = reader.search_rows(
                        ms.tenant, query, filters, top_k=5, show_expired=show_expired
                    )
                    assert got == want, (name, filters, query)
                    compared += len(got)
            assert compared > 500  # the filters select something
            # both plans were compared: the fallback reader asks Lance for most filters
            assert planned["unscoped"] == 0 and planned["fallback"] < planned["scoped"] // 2
            assert planned["scoped"] >= 2 * len(FILTERS) - 4

    asyncio.run(go())


def test_batched_retrieval_shows_what_per_fact_retrieval_showed(tmp_path: Path) -> None:
    async def go() -> None:
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            await populate(ms)
            scopes = [
                Scope(ms.tenant.org_id, ms.tenant.project_id, user_id="alice"),
                Scope(ms.tenant.org_id, ms.tenant.project_id, user_id="alice", agent_id="a1"),
                Scope(ms.tenant.org_id, ms.tenant.project_id, user_id="bob", run_id="r1"),
                Scope(ms.tenant.org_id, ms.tenant.project_id, agent_id="a2"),
                Scope(ms.tenant.org_id, ms.tenant.project_id, user_id="nobody"),
            ]
            shown_somewhere = 0
            for scope, n in itertools.product(scopes, (1, 2, len(FACTS))):
                filters = scope_filters(scope)
                per_fact = [
                    ms.reader.search_rows(ms.tenant, fact, filters, top_k=PER_FACT)
                    for fact in FACTS[:n]
                ]
                batched = nearest(
                    ms.reader.prepare_search(ms.tenant, filters), ms.projector.embedder, FACTS[:n]
                )
                assert batched == shown_of(per_fact), (scope, n)
                # exactly the scope: implicit null scoping leaves alice's agent memories out
                for s in batched:
                    row = ms.reader.get(ms.tenant, s.memory_id)
                    assert (row.user_id, row.agent_id, row.app_id, row.run_id) == (
                        scope.user_id, scope.agent_id, scope.app_id, scope.run_id,
                    )  # fmt: skip
                shown_somewhere += len(batched)
            assert shown_somewhere > 20

    asyncio.run(go())


def test_an_inferred_add_shows_the_llm_what_per_fact_retrieval_finds(tmp_path: Path) -> None:
    """Through the whole pipeline (the scope caught up and read while the extraction call
    is in flight): the decision call lists the memories per-fact search_rows finds, in its
    order, including those appended just before the add and not projected yet."""

    async def go() -> None:
        with ScriptedLLM() as llm:
            settings = Settings(
                data_dir=tmp_path / "data", embedder="hashing", llm_base_url=llm.base_url,
                llm_model="scripted-1", llm_max_retries=0,
            )  # fmt: skip
            async with Memstream(settings) as ms:
                await populate(ms)
                scopes: list[dict[str, str]] = [
                    {"user_id": "alice"},
                    {"user_id": "bob", "agent_id": "a1"},
                ]
                topics = ["tea", "deadlines", "rain", "tuesday", "coffee", "weather", "food"]
                for scope_ids in scopes:
                    # appended, not projected yet: the add must catch up before it reads
                    for i, topic in enumerate(topics * 3):
                        await ms.add(f"note {i}: {scope_ids} on {topic}", wait=False, **scope_ids)
                    assert ms.projected_events() < sum((await ms.log.end_offsets()).values())
                    asked = len(llm.requests)
                    llm.push(facts(*FACTS), decide({"id": "0", "event": "NONE", "text": ""}))
                    assert await ms.add("a long chat", infer=True, **scope_ids) == []
                    # what per-fact retrieval finds now (the add changed no memory)
                    expected = shown_of(
                        [
                            ms.reader.search_rows(ms.tenant, fact, scope_ids, top_k=PER_FACT)
                            for fact in FACTS
                        ]
                    )
                    # ranking mattered: more than one fact's worth, less than the scope
                    scope_size = (await ms.get_all(scope_ids)).count
                    assert PER_FACT < len(expected) < scope_size
                    assert any(s.text.startswith("note ") for s in expected)
                    shown = _shown_in(llm.requests[asked + 1])
                    assert shown == [{"id": s.temp_id, "text": s.text} for s in expected]
                    recorded = await _recorded_shown(ms)
                    assert recorded == [
                        {"id": s.temp_id, "memory_id": s.memory_id, "text": s.text,
                         "offset": s.last_offset}
                        for s in expected
                    ]  # fmt: skip

    asyncio.run(go())


def _shown_in(request: dict[str, Any]) -> list[dict[str, str]]:
    """The memories a decision request lists (prompts.decide_user: the JSON on line 2)."""
    content = request["messages"][1]["content"]
    shown: list[dict[str, str]] = json.loads(content.split("\n")[1])
    return shown


async def _recorded_shown(ms: Memstream) -> list[dict[str, Any]]:
    """The `shown` list of the log's last InferenceDecided, as the ledger recorded it."""
    reader = await ms.log.reader({})
    try:
        end = sum((await ms.log.end_offsets()).values())
        records: list[Any] = []
        while len(records) < end:
            records.extend(await reader.next_batch(1000, timeout_s=1.0))
    finally:
        await reader.close()
    decided = [
        e
        for r in records
        if isinstance(e := decode_event(r.value, ms.projector.keys.lookup), InferenceDecided)
    ]
    shown: list[dict[str, Any]] = json.loads(decided[-1].output)["shown"]
    return shown
