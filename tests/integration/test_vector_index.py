"""The vector index of a large memories table (projector/vector_index.py) through the whole
stack: a replay builds it past MEMSTREAM_ANN_MIN_ROWS rows (not below; upkeep between writes
never does), a search with no indexed lead uses it and finds nearly what a brute-force scan
finds, never fewer rows than the scope holds, rows written after the build are found, and
searches with a lead stay exact. The threshold is lowered so a test-sized table gets an
index."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memstream.errors import ValidationError
from memstream.models import Tenant
from memstream.projector.vector_index import ann_min_rows, has_vector_index
from memstream.query.scoped import cosine_distances, rank
from memstream.service import Memstream
from memstream.settings import Settings

SMALL = Tenant("small-org", "small-proj")
WORDS = [
    "tea",
    "coffee",
    "paris",
    "berlin",
    "dentist",
    "monday",
    "piano",
    "garden",
    "invoice",
    "ticket",
    "laptop",
    "bicycle",
    "sister",
    "birthday",
    "allergy",
    "peanuts",
    "marathon",
    "spanish",
    "novel",
    "chess",
    "keyboard",
    "window",
    "harbour",
    "violin",
    "pepper",
    "winter",
    "summer",
    "deadline",
    "budget",
    "printer",
    "museum",
    "jacket",
    "river",
    "mountain",
]


def texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.sample(WORDS, 6)) + f" note {rng.randrange(10**6)}" for _ in range(n)]


def messages(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts(rng, n)]


async def populate(ms: Memstream, rng: random.Random) -> None:
    for u in range(40):  # 1,200 user memories in the default project
        await ms.add(messages(rng, 30), user_id=f"user-{u}", wait=False)
    await ms.add(messages(rng, 60), user_id="user-0", agent_id="helper", wait=False)
    await ms.add(messages(rng, 12), user_id="lone", tenant=SMALL, wait=False)  # a small scope
    await ms.catch_up()


def brute_force(ms: Memstream, tenant: Tenant, vector: Any, k: int, **entities: Any) -> list[str]:
    """The exact top k of every live row of `tenant` whose user, agent and run are as given
    (None: must be null, "*": any non-null), by cosine distance, ties by id."""
    rows = ms.projector.generation().memories().to_arrow().to_pylist()
    kept = [
        r
        for r in rows
        if (r["org_id"], r["project_id"]) == (tenant.org_id, tenant.project_id)
        and all((r[f] is not None) if want == "*" else r[f] == want for f, want in entities.items())
    ]
    matrix = np.asarray([r["vector"] for r in kept], dtype=np.float32)
    ids = [r["id"] for r in kept]
    return [ids[i] for i in rank(ids, cosine_distances(matrix, vector), k)]


def test_a_large_tables_vector_index_answers_no_lead_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        rng = random.Random(16)
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            await populate(ms, rng)
            await ms.replay()  # the default threshold: 100,000 rows
            assert not has_vector_index(ms.projector.generation().memories())
            assert ms.status()["vector_index"] == "none"

            monkeypatch.setenv("MEMSTREAM_ANN_MIN_ROWS", "1000")
            # upkeep between writes (ensure_indexes as maintain calls it unforced) never
            # builds it: a build would hold the writers up for 40-75 s
            gen = ms.projector.generation()
            await asyncio.to_thread(gen.ensure_indexes)
            assert not has_vector_index(gen.memories())
            assert ms.status()["vector_index"] == "due"
            await ms.replay()
            table = ms.projector.generation().memories()
            assert has_vector_index(table)
            assert ms.status()["vector_index"] == "built"

            everyone = {"user_id": "*"}
            prepared = ms.reader.prepare_search(ms.tenant, everyone)
            prepared.rows(ms.embedder.embed_one("tea"), 10)
            assert prepared._indexed  # the search went through the index
            entities = {"user_id": "*", "agent_id": None, "app_id": None, "run_id": None}
            recalls = []
            for query in texts(rng, 20):
                got = [r.id for r in await ms.search(query, everyone, top_k=10)]
                vector = ms.embedder.embed_one(query)
                exact = brute_force(ms, ms.tenant, vector, 10, **entities)
                assert len(got) == 10  # never shorter than the scope allows
                recalls.append(len(set(got) & set(exact)) / 10)
            assert np.mean(recalls) >= 0.9, recalls

            # a small scope the index's probes may miss: the exact search answers it whole
            lone = await ms.search("tea coffee", everyone, top_k=10, tenant=SMALL)
            exact = brute_force(ms, SMALL, ms.embedder.embed_one("tea coffee"), 10, **entities)
            assert [r.id for r in lone] == exact

            # with one probe the index misses most of a small scope: the exact search
            # answers it whole (and a large scope still gets a whole answer)
            with monkeypatch.context() as patched:
                patched.setattr("memstream.query.reader.NPROBES", 1)
                for query in texts(rng, 5):
                    vector = ms.embedder.embed_one(query)
                    lone = await ms.search(query, everyone, top_k=10, tenant=SMALL)
                    assert [r.id for r in lone] == brute_force(ms, SMALL, vector, 10, **entities)
                    assert len(await ms.search(query, everyone, top_k=10)) == 10

            # a row written after the build (in the table, not in the index) is found
            new_text = "zebra quokka axolotl narwhal okapi pangolin"
            [added] = await ms.add(new_text, user_id="user-7")
            await ms.projector.flush_tier()
            assert ms.projector.tier_view(ms.projector.generation()).rows == {}
            first = (await ms.search(new_text, everyone, top_k=3))[0]
            assert first.id == added.id

            # an erased subject's rows leave the index too (its quantised vectors included)
            await ms.erase(user_id="user-9")
            table = ms.projector.generation().memories()
            stats = table.to_lance().stats.index_stats("vector_idx")
            assert stats["num_indexed_rows"] + stats["num_unindexed_rows"] == table.count_rows()
            assert table.count_rows("user_id = 'user-9'") == 0

            # a search with a lead never uses the index: exact
            for query in texts(rng, 5):
                got = [r.id for r in await ms.search(query, {"user_id": "user-3"}, top_k=10)]
                vector = ms.embedder.embed_one(query)
                assert got == brute_force(
                    ms, ms.tenant, vector, 10, user_id="user-3", agent_id=None, run_id=None
                )

    asyncio.run(go())


def test_the_threshold_is_a_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMSTREAM_ANN_MIN_ROWS", raising=False)
    assert ann_min_rows() == 100_000
    monkeypatch.setenv("MEMSTREAM_ANN_MIN_ROWS", "0")
    assert ann_min_rows() == 0
    for bad in ("abc", "-5", "1e5"):
        monkeypatch.setenv("MEMSTREAM_ANN_MIN_ROWS", bad)
        with pytest.raises(ValidationError, match="MEMSTREAM_ANN_MIN_ROWS"):
            ann_min_rows()
