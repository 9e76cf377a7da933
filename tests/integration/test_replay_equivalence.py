"""Replay's fast path (one pass, appends, a digest index instead of per-batch reads) decides
every event exactly as the live projector does: the rebuilt tables equal the live ones."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import pytest

import memstream.projector.projector as projector_module
from memstream.events import (
    Event,
    FeedbackGiven,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    message_of,
    new_id,
    text_hash,
)
from memstream.projector.index import DigestSet
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings


def stream(seed: int, n: int) -> list[Event]:
    """Adds (many exact duplicates), updates, deletes, expiries and feedback over 6 scopes."""
    rnd = random.Random(seed)
    scopes = [Scope("local", "default", user_id=u, run_id=r) for u in "abc" for r in (None, "r")]
    texts = [f"text {i}" for i in range(12)]
    alive: dict[str, Scope] = {}
    out: list[Event] = []
    for i in range(n):
        k = rnd.random()
        if k < 0.55 or not alive:
            scope, text, mid = rnd.choice(scopes), rnd.choice(texts), new_id()
            out.append(MemoryAdded(scope=scope, memory_id=mid, text=text, hash=text_hash(text),
                                   immutable=rnd.random() < 0.1))  # fmt: skip
            alive[mid] = scope
            continue
        mid = rnd.choice(list(alive))
        if k < 0.75:
            text = rnd.choice(texts)
            out.append(MemoryUpdated(scope=alive[mid], memory_id=mid, text=text,
                                     hash=text_hash(text), metadata=f'{{"i": {i}}}'))  # fmt: skip
        elif k < 0.85:
            out.append(MemoryDeleted(scope=alive[mid], memory_id=mid))
        elif k < 0.93:
            out.append(MemoryExpired(scope=alive[mid], memory_id=mid, reason="policy"))
        else:
            out.append(FeedbackGiven(scope=alive[mid], memory_id=mid, feedback="POSITIVE"))
    return out


def snapshot(ms: Memstream) -> tuple[list[str], list[str]]:
    gen = ms.projector.generation()

    def rows(table: Any) -> list[str]:
        return sorted(repr(sorted(r.items())) for r in table.to_arrow().to_pylist())

    return rows(gen.memories()), rows(gen.events())


@pytest.mark.parametrize("live_batch,replay_batch", [(7, 13), (1000, 10_000)])
def test_replay_rebuilds_exactly_the_live_projection(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, live_batch: int, replay_batch: int
) -> None:
    monkeypatch.setattr(projector_module, "REPLAY_BATCH", replay_batch)
    events = stream(seed=live_batch, n=400)

    async def body() -> None:
        async with Memstream(settings) as ms:
            await ms.log.append([message_of(e) for e in events])
            ms.projector.batch_size = live_batch
            await ms.catch_up()
            live = snapshot(ms)
            ms.projector.batch_size = 1  # the replay reads REPLAY_BATCH events at a time
            thresholds = gc.get_threshold()
            assert await ms.replay() == len(events)
            assert snapshot(ms) == live
            assert gc.get_threshold() == thresholds  # relaxed for the replay only
            assert len(live[1]) == len(events)  # one audit row per event

    asyncio.run(body())


def test_digest_set_never_forgets_a_key() -> None:
    seen = DigestSet()
    keys = [f"k{i}" for i in range(25_000)]
    for i in range(0, len(keys), 1000):
        seen.add(keys[i : i + 1000])
    assert seen.known(keys) == keys
    assert len(seen) == len(keys)
    others = [f"x{i}" for i in range(1000)]
    assert len(seen.known(others)) <= 1  # a 64-bit digest collision is possible, not likely
