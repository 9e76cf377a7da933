"""The scoped read plan through the whole stack: Memstream's search and get_all (the plan in
query/scoped.py) answer exactly what the plan before it answers (the whole predicate in
LanceDB), and what a scope too large for the plan falls back to, on a projection with
updates, deletes, expiry dates, a retention policy, metadata and two tenants."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from memstream.models import Tenant
from memstream.query.reader import MemoryReader
from memstream.service import Memstream
from memstream.settings import Settings

OTHER = Tenant("other-org", "other-proj")
FILTERS: list[dict[str, Any]] = [
    {"user_id": "alice"},
    {"user_id": "alice", "agent_id": "*"},
    {"user_id": {"in": ["alice", "bob"]}},
    {"user_id": ["alice", "bob"], "run_id": "*"},
    {"user_id": "bob", "agent_id": "a1"},
    {"user_id": "alice", "NOT": {"agent_id": "a2"}},
    {"AND": [{"user_id": "alice"}, {"OR": [{"agent_id": "a1"}, {"run_id": "*"}]}]},
    {"user_id": "alice", "metadata": {"topic": "food"}},
    {"user_id": "alice", "agent_id": "*", "run_id": "*", "categories": {"in": ["work"]}},
    {"run_id": "r1", "user_id": "*"},
    {"agent_id": "a1"},
    {"user_id": "nobody"},
]
QUERIES = ["food", "the weather on tuesday", "work notes about a deadline"]


async def populate(m: Memstream) -> None:
    users, agents, runs = ["alice", "bob", None], [None, "a1", "a2"], [None, "r1"]
    n = 0
    for user, agent, run in itertools.product(users, agents, runs):
        ids = {k: v for k, v in (("user_id", user), ("agent_id", agent), ("run_id", run)) if v}
        if not ids:
            continue
        for topic in ("food", "work", "weather"):
            n += 1
            await m.add(
                f"memory {n} about {topic} for {ids}",
                **ids,
                metadata={"topic": topic},
                categories=[topic],
                wait=False,
            )
            await m.add(f"another tenant's {topic} {n}", **ids, tenant=OTHER, wait=False)
    await m.catch_up()
    page = await m.get_all({"user_id": "alice", "agent_id": "*", "run_id": "*"})
    ids_ = [r.id for r in page.results]
    await m.delete(ids_[0])
    await m.update(ids_[1], text="alice now prefers tea over coffee")
    await m.update(ids_[2], expiration_date="2001-01-01")
    await m.set_retention_policy(field="run_id", pattern="r*", ttl="365d")
    await m.catch_up()


def test_scoped_reads(tmp_path: Path) -> None:
    async def go() -> None:
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            await populate(ms)
            equal_the_whole_predicate_in_lance(ms)
            other_tenants_rows_under_the_same_lead_stay_out(ms)

    asyncio.run(go())


def equal_the_whole_predicate_in_lance(ms: Memstream) -> None:
    plain = MemoryReader(ms.projector, scoped=False)
    tight = MemoryReader(ms.projector, max_search_rows=1, max_get_all_rows=1)  # falls back
    tenant = ms.tenant
    compared = 0
    for filters, query, show_expired in itertools.product(FILTERS, QUERIES, (False, True)):
        kw: dict[str, Any] = {"show_expired": show_expired}
        fast = ms.reader.search(tenant, query, filters, top_k=5, **kw)
        slow = plain.search(tenant, query, filters, top_k=5, **kw)
        assert [m.id for m in fast] == [m.id for m in slow], filters
        for a, b in zip(fast, slow, strict=True):  # float32 distances, rounded to 6 places
            assert a.score is not None and b.score is not None
            assert abs(a.score - b.score) <= 2e-6
        assert [m.id for m in tight.search(tenant, query, filters, top_k=5, **kw)] == [
            m.id for m in fast
        ]
        everything = ms.reader.search(tenant, query, filters, top_k=1000, **kw)
        assert {m.id for m in everything} == {
            m.id for m in plain.search(tenant, query, filters, top_k=1000, **kw)
        }
        page = ms.reader.get_all(tenant, filters, page_size=1000, **kw)
        assert [m.to_api() for m in page.results] == [
            m.to_api() for m in plain.get_all(tenant, filters, page_size=1000, **kw).results
        ]
        assert page.count == len(everything)
        compared += len(fast)
    assert compared > 100  # the filters select something


def other_tenants_rows_under_the_same_lead_stay_out(ms: Memstream) -> None:
    for filters in FILTERS:
        mine = ms.reader.get_all(ms.tenant, filters, page_size=1000).results
        theirs = ms.reader.get_all(OTHER, filters, page_size=1000).results
        assert all("another tenant" not in m.memory for m in mine)
        assert all("another tenant" in m.memory for m in theirs)
        hits = ms.reader.search(OTHER, "food", filters, top_k=50)
        assert all("another tenant" in m.memory for m in hits)
