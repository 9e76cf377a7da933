"""`memstream.light_reads`: get_all and search of a current projection through `lance` alone
answer exactly what `Memstream` answers, and decline (None / PlanDeclined) whenever they
could not: a projection behind the log, an interrupted erasure, another embedder, an older
projection format. The store is the one of test_scoped_reads (updates, deletes, an expired
date, a retention policy, metadata, two tenants)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from memstream.keystore.base import Subject
from memstream.light_reads import LightReads, PlanDeclined, open_light_reads
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_scoped_reads import FILTERS, OTHER, QUERIES, populate


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedder="hashing")


def light(settings: Settings) -> LightReads | None:
    return asyncio.run(open_light_reads(settings))


def compare(ms: Memstream, reads: LightReads) -> tuple[int, int]:
    """Every filter x query x show_expired: the same pages and hits, or a decline."""
    answered = declined = 0
    tenant = reads.tenant
    for filters, query, show_expired in itertools.product(FILTERS, QUERIES, (False, True)):
        kw: dict[str, Any] = {"show_expired": show_expired}
        try:
            hits = reads.search(query, filters, top_k=5, **kw)
            page = reads.get_all(filters, page=2, page_size=3, **kw)
        except PlanDeclined:
            declined += 1
            continue
        full = asyncio.run(ms.search(query, filters, tenant=tenant, top_k=5, **kw))
        assert [m.to_api() for m in hits] == [m.to_api() for m in full], filters
        whole = asyncio.run(ms.get_all(filters, tenant=tenant, page=2, page_size=3, **kw))
        assert (page.count, page.page, page.page_size) == (
            whole.count, whole.page, whole.page_size,
        )  # fmt: skip
        assert [m.to_api() for m in page.results] == [m.to_api() for m in whole.results]
        answered += 1
    return answered, declined


def test_light_reads_answer_what_memstream_answers(settings: Settings) -> None:
    async def build() -> None:
        async with Memstream(settings) as ms:
            await populate(ms)

    asyncio.run(build())
    ms = Memstream(settings)
    asyncio.run(ms.start())  # a start: its erasure scan stamps the generation
    try:
        for who in (settings, dataclasses.replace(settings, org_id=OTHER.org_id,
                                                  project_id=OTHER.project_id)):  # fmt: skip
            reads = light(who)
            assert reads is not None
            answered, _ = compare(ms, reads)
            assert answered > len(FILTERS)  # the light path answered (each filter has a lead)
        reads = light(settings)
        assert reads is not None
        with pytest.raises(PlanDeclined):  # no indexed lead: the full path answers it
            reads.get_all({"OR": [{"user_id": "alice"}, {"agent_id": "a1"}]})
    finally:
        asyncio.run(ms.close())


def test_bad_input_gets_the_full_paths_error(settings: Settings) -> None:
    asyncio.run(_add_one(settings))
    reads = light(settings)
    assert reads is not None
    from memstream.errors import ValidationError

    ms = Memstream(settings)
    for call, full in (
        (lambda: reads.get_all({"user_id": "a"}, page=0), lambda: ms.get_all({"user_id": "a"}, page=0)),
        (lambda: reads.search(" ", {"user_id": "a"}), lambda: ms.search(" ", {"user_id": "a"})),
        (lambda: reads.get_all({"user_id": {"bogus": 1}}), lambda: ms.get_all({"user_id": {"bogus": 1}})),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as light_error:
            call()
        with pytest.raises(ValidationError) as full_error:
            asyncio.run(full())
        assert light_error.value.message == full_error.value.message


async def _add_one(settings: Settings, **kw: Any) -> None:
    async with Memstream(settings) as ms:
        await ms.add("alice likes green tea", user_id="alice", **kw)
    async with Memstream(settings):  # a clean scan after the write
        pass


def test_a_projection_behind_the_log_is_left_to_the_full_path(settings: Settings) -> None:
    asyncio.run(_add_one(settings))
    assert light(settings) is not None

    async def append_only() -> None:  # durable, not projected (no catch-up, no server)
        async with Memstream(settings) as ms:
            await ms.add("written but not projected", user_id="alice", wait=False)

    asyncio.run(append_only())
    assert light(settings) is None


def test_an_interrupted_erasure_is_left_to_the_full_path(settings: Settings) -> None:
    asyncio.run(_add_one(settings))

    async def destroy_only() -> None:  # an erase killed after destroying the keys
        async with Memstream(settings) as ms:
            await ms.projector.keys.destroy(Subject("local", "default", "user_id", "alice"))

    asyncio.run(destroy_only())
    assert light(settings) is None


def test_another_embedder_or_an_older_format_is_left_to_the_full_path(
    settings: Settings,
) -> None:
    asyncio.run(_add_one(settings))
    assert light(dataclasses.replace(settings, embedder="hashing:256")) is None
    root = settings.data_dir / "projections"
    meta_path = root / (root / "CURRENT").read_text().strip() / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": meta["version"] - 1}))
    assert light(settings) is None


def test_a_pinned_generation_is_read_as_memstream_reads_it(settings: Settings) -> None:
    async def build() -> None:
        async with Memstream(settings) as ms:
            for i in range(4):
                await ms.add(f"memory {i} about tea", user_id="alice")
            await ms.replay(to_position="0:1")  # the state after the first two adds
        async with Memstream(settings):
            pass

    asyncio.run(build())
    reads = light(settings)
    assert reads is not None
    page = reads.get_all({"user_id": "alice"})
    assert sorted(m.memory for m in page.results) == ["memory 0 about tea", "memory 1 about tea"]
    ms = Memstream(settings)
    asyncio.run(ms.start())
    try:
        full = asyncio.run(ms.get_all({"user_id": "alice"}))
        assert [m.to_api() for m in page.results] == [m.to_api() for m in full.results]
    finally:
        asyncio.run(ms.close())
