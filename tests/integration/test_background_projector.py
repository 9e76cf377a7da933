"""The background projector (as `memstream serve` runs it) with many concurrent writers.

It reads ahead while a batch is written and, with a costly model, embeds ahead in another
thread and applies only records whose texts are embedded. Whatever the interleaving, every
write must be applied exactly once, in log order, with duplicates decided as without it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np

from memstream.embedders.hashing import HashingEmbedder
from memstream.log.base import Offsets
from memstream.projector.projector import DISK_LOOK_S
from memstream.projector.store import Generation
from memstream.service import Memstream
from memstream.settings import Settings


class SlowModel(HashingEmbedder):
    """The hashing embedder, made to cost like a model (and to say so)."""

    costly = True

    def __init__(self) -> None:
        super().__init__(dim=64)
        self.name = "slow-hashing-64"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(0.002 * len(texts))
        return super().embed(texts)


def test_concurrent_writers_each_see_their_own_decision(settings: Settings) -> None:
    asyncio.run(_concurrent_writers(settings))


async def _concurrent_writers(settings: Settings) -> None:
    ms = await Memstream(settings, embedder=SlowModel()).start(background_projector=True)
    try:
        texts = [f"fact {i % 150}" for i in range(300)]  # every text twice: one ADD, one NONE

        async def write(text: str) -> str:
            [result] = await ms.add(text, user_id="alice")
            return result.event

        events = await asyncio.gather(*(write(t) for t in texts))
        assert sorted(events) == ["ADD"] * 150 + ["NONE"] * 150
        page = await ms.get_all({"user_id": "alice"}, page_size=1000)
        assert sorted(m.memory for m in page.results) == sorted(set(texts))
        found = await ms.search("fact 77", {"user_id": "alice"}, top_k=1)
        assert found[0].memory == "fact 77"
        history = await ms.history(page.results[0].id)
        assert [h.event for h in history] == ["ADD", "NONE"]  # the duplicate resolved to it
        assert ms.projector._seq_ready > 0  # texts were embedded ahead of their batch
    finally:
        await ms.close()


def test_writes_without_waiting_are_all_applied_once(settings: Settings) -> None:
    asyncio.run(_without_waiting(settings))


async def _without_waiting(settings: Settings) -> None:
    ms = await Memstream(settings, embedder=SlowModel()).start(background_projector=True)
    try:
        results = await asyncio.gather(
            *(ms.add(f"note {i}", user_id=f"u{i % 7}", wait=False) for i in range(400))
        )
        assert all(r[0].pending for r in results)
        await ms.catch_up()
        for u in range(7):
            page = await ms.get_all({"user_id": f"u{u}"}, page_size=1000)
            assert sorted(m.memory for m in page.results) == sorted(
                f"note {i}" for i in range(400) if i % 7 == u
            )
    finally:
        await ms.close()


def test_consistent_reads_see_this_instances_writes(settings: Settings) -> None:
    """With a background projector, a default (consistent) read waits for what this
    instance appended: add(wait=False) and then get_all/search at once find everything."""

    async def body() -> None:
        ms = await Memstream(settings, embedder=SlowModel()).start(background_projector=True)
        try:
            for round_ in range(3):
                texts = [f"round {round_} note {i} about kayaks" for i in range(40)]
                for text in texts:
                    await ms.add(text, user_id="rita", wait=False)
                page = await ms.get_all({"user_id": "rita"}, page_size=1000)
                assert {m.memory for m in page.results} >= set(texts)
                found = await ms.search(texts[-1], {"user_id": "rita"}, top_k=1)
                assert [m.memory for m in found] == [texts[-1]]
        finally:
            await ms.close()

    asyncio.run(body())


class GatedModel(SlowModel):
    """A costly model that embeds nothing until `gate` is set: the projector stalls."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.gate.wait()
        return super().embed(texts)


def test_stalled_waiters_share_one_look_at_the_disk(settings: Settings) -> None:
    """Writers waiting on a background projector that makes no progress look at the disk
    checkpoint (another process may be projecting) at most once per DISK_LOOK_S between
    them, not each on its own: with 64 writers and a model call longer than DISK_LOOK_S
    every writer's look was a file read and a JSON parse on the event loop, CPU the model
    needed. Once the projector moves on, every writer still gets its own decision."""

    async def body() -> None:
        model = GatedModel()
        ms = await Memstream(settings, embedder=model).start(background_projector=True)
        reads = 0
        original = Generation.checkpoint

        def counted(gen: Generation) -> Offsets:
            nonlocal reads
            reads += 1
            return original(gen)

        try:
            writers = [
                asyncio.ensure_future(ms.add(f"stalled note {i}", user_id="sam")) for i in range(16)
            ]
            while sum(ms.projector.appended.values()) < len(writers):  # all appended
                await asyncio.sleep(0.01)
            Generation.checkpoint = counted  # type: ignore[method-assign]
            start = time.monotonic()
            while time.monotonic() - start < 6 * DISK_LOOK_S:  # every writer times out ~6x
                await asyncio.sleep(0.05)
            window = time.monotonic() - start
            Generation.checkpoint = original  # type: ignore[method-assign]
            assert not any(w.done() for w in writers)  # still waiting: nothing was applied
            # one look per DISK_LOOK_S for all 16 (+1 for the window's edges); each writer
            # looking on its own made ~16x as many
            assert 1 <= reads <= window / DISK_LOOK_S + 1
            model.gate.set()
            results = await asyncio.gather(*writers)
            assert sorted(r[0].event for r in results) == ["ADD"] * len(writers)
        finally:
            Generation.checkpoint = original  # type: ignore[method-assign]
            model.gate.set()
            await ms.close()

    asyncio.run(body())
