"""The column-wise path (projector/columnar.py) writes exactly the tables the per-event path
writes: the same memories rows (vectors included) and the same events-table rows.

Random mixes of events (hypothesis) are appended to one file log: adds (new, exact
duplicates in a scope, reused memory ids, the same event appended twice, inferred adds,
sealed under the subject's key or plain), updates (to texts other adds hold), deletes,
expiries, feedback, poison records (bytes that do not decode, an add without text) and
erasures between them. Two projectors fold the log at the same points: the service's own
(column-wise, a bulk catch-up in small batches past its fresh tier) and a reference with
MEMSTREAM_PROJECT_PER_EVENT=1 (no tier). Their tables must be equal, and so must the tables
of a column-wise replay and a per-event replay of the whole log.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memstream.projector.projector as projector_module
from memstream.crypto import keyed_hash
from memstream.events import (
    Event,
    FeedbackGiven,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    encode_event,
    new_id,
    text_hash,
)
from memstream.keystore.base import Subject
from memstream.projector import columnar
from memstream.projector.projector import Projector
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

USERS = ("ann", "bob", "cy")
TEXTS = tuple(f"likes {w}" for w in ("tea", "coffee", "chess", "rain"))

ADD = st.tuples(
    st.just("add"),
    st.sampled_from(USERS),
    st.sampled_from((None, "bot")),  # agent
    st.integers(0, len(TEXTS) - 1),
    st.booleans(),  # sealed under the subject's key
    st.sampled_from(("new", "new", "new", "reuse_id", "twice", "inferred")),
)
EVENT = st.one_of(
    ADD,
    ADD,
    st.tuples(st.just("update"), st.integers(0, 30), st.integers(0, len(TEXTS) - 1)),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.integers(0, 30)),
    st.tuples(st.just("feedback"), st.integers(0, 30)),
    st.tuples(st.just("poison"), st.booleans()),
)
STEP = st.one_of(
    st.lists(EVENT, min_size=1, max_size=25).map(lambda events: ("append", events)),
    st.tuples(st.just("erase"), st.sampled_from(USERS)),
)


@contextmanager
def per_event() -> Iterator[None]:
    before = os.environ.get(columnar.PER_EVENT_ENV)
    os.environ[columnar.PER_EVENT_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[columnar.PER_EVENT_ENV]
        else:
            os.environ[columnar.PER_EVENT_ENV] = before


def snapshot(projector: Projector) -> tuple[list[str], list[str]]:
    gen = projector.generation()

    def rows(table: Any) -> list[str]:
        if table is None:
            return []
        return sorted(repr(sorted(r.items())) for r in table.to_arrow().to_pylist())

    return rows(gen.memories()), rows(gen.events())


async def messages(ms: Memstream, specs: list[tuple[Any, ...]], made: list[Event]) -> list[Any]:
    """The log messages of `specs`; `made` collects the adds (targets of later events)."""
    out: list[tuple[bytes, bytes]] = []
    for spec in specs:
        kind = spec[0]
        if kind == "poison":
            out.append((b"k", b"\xc3\x01not avro at all" if spec[1] else b"garbage"))
            continue
        if kind == "add":
            _, user, agent, t, sealed, how = spec
            scope = Scope("local", "default", user_id=user, agent_id=agent)
            text = TEXTS[t]
            key = await ms.projector.keys.key_for(Subject.of_scope(scope)) if sealed else None  # type: ignore[arg-type]
            digest = keyed_hash(key, text) if key is not None else text_hash(text)
            adds = [e for e in made if isinstance(e, MemoryAdded)]
            mid = adds[-1].memory_id if how == "reuse_id" and adds else new_id()
            event = MemoryAdded(
                scope=scope, memory_id=mid, text=text, hash=digest,
                decision_id=new_id() if how == "inferred" else None,
            )  # fmt: skip
            message = (scope.key(), encode_event(event, key))
            out.append(message)
            if how == "twice":  # the same event appended twice (a retried append)
                out.append(message)
            made.append(event)
            continue
        adds = [e for e in made if isinstance(e, MemoryAdded)]
        if not adds:
            continue
        target = adds[spec[1] % len(adds)]
        scope, mid = target.scope, target.memory_id
        made_event: Event
        if kind == "update":
            text = f"{TEXTS[spec[2]]}"
            made_event = MemoryUpdated(scope=scope, memory_id=mid, text=text,
                                       hash=text_hash(text), metadata='{"u": 1}')  # fmt: skip
        elif kind == "delete":
            made_event = MemoryDeleted(scope=scope, memory_id=mid)
        elif kind == "expire":
            made_event = MemoryExpired(scope=scope, memory_id=mid, reason="policy")
        else:
            made_event = FeedbackGiven(scope=scope, memory_id=mid, feedback="POSITIVE")
        out.append((scope.key(), encode_event(made_event)))
    return out


async def fold(root: Path, steps: list[tuple[Any, ...]]) -> None:
    settings_ = Settings(data_dir=root / "data", embedder="hashing", tier_rows=100_000,
                         tier_age_s=3600.0)  # fmt: skip
    async with Memstream(settings_) as ms:
        ref = Projector(root / "ref", ms.log, ms.embedder, keys=ms.projector.keys, tier_rows=0)
        ms.projector.batch_size = 1  # a bulk catch-up then reads replay_batch at a time
        made: list[Event] = []
        try:
            for step in steps:
                if step[0] == "append":
                    await ms.log.append(await messages(ms, step[1], made))
                    await ms.projector.catch_up()  # column-wise, in bulk mode (see the test)
                else:
                    await ms.erase(user_id=step[1])
                with per_event():
                    await ref.catch_up()
            assert snapshot(ms.projector) == snapshot(ref)
            await ms.replay()
            with per_event():
                await ref.replay()
            assert snapshot(ms.projector) == snapshot(ref)
        finally:
            await ref.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=6), replay_batch=st.integers(1, 40))
def test_column_wise_projection_writes_the_tables_of_the_per_event_one(
    steps: list[tuple[Any, ...]], replay_batch: int
) -> None:
    saved = projector_module.REPLAY_BATCH, projector_module.BULK_BACKLOG
    projector_module.REPLAY_BATCH = replay_batch  # runs cut anywhere
    projector_module.BULK_BACKLOG = 1  # every catch_up a bulk one (past the fresh tier)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(fold(Path(tmp), steps))
    finally:
        projector_module.REPLAY_BATCH, projector_module.BULK_BACKLOG = saved


def test_the_per_event_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(columnar.PER_EVENT_ENV, raising=False)
    assert columnar.enabled()
    monkeypatch.setenv(columnar.PER_EVENT_ENV, "1")
    assert not columnar.enabled()


def test_runs_of_new_memories_take_the_column_wise_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The property above is not vacuous: new memories do go the column-wise way (in a
    replay and in a bulk catch-up), and an add that is a duplicate does not."""
    taken: list[int] = []
    split = columnar.split

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = split(*args, **kwargs)
        taken.append(len(out[2]))
        return out

    monkeypatch.setattr(columnar, "split", spy)
    monkeypatch.setattr(projector_module, "BULK_BACKLOG", 1)
    specs = [("add", "ann", None, t % 4, t < 3, "new") for t in range(6)]
    specs.append(("add", "ann", None, 3, False, "new"))  # an exact duplicate of the 4th

    async def body() -> None:
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            await ms.log.append(await messages(ms, specs, []))
            await ms.projector.catch_up()
            assert sum(taken) == 5  # sealed and plain hashes differ: all new but the pair
            taken.clear()
            await ms.replay()
            assert sum(taken) == 5
            memories, events = snapshot(ms.projector)
            assert len(memories) == 6 and len(events) == 7

    asyncio.run(body())


def test_concurrent_bulk_catch_ups_put_the_live_batch_size_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bulk catch-ups at once (e.g. two readers of a CLI process after a pause): the one
    that ends last must not leave the replay-sized batches behind for the live path."""
    monkeypatch.setattr(projector_module, "BULK_BACKLOG", 1)
    specs = [("add", "ann", None, t % 4, False, "new") for t in range(6)]

    async def body() -> None:
        async with Memstream(Settings(data_dir=tmp_path / "data", embedder="hashing")) as ms:
            live = ms.projector.batch_size
            await ms.log.append(await messages(ms, specs, []))
            seen: list[int] = []
            wait = ms.projector._wait_until

            async def watching(*args: Any, **kwargs: Any) -> None:
                seen.append(ms.projector.batch_size)
                await asyncio.sleep(0)  # let the other catch_up start while this one waits
                await wait(*args, **kwargs)

            monkeypatch.setattr(ms.projector, "_wait_until", watching)
            await asyncio.gather(ms.projector.catch_up(), ms.projector.catch_up())
            assert seen == [projector_module.REPLAY_BATCH] * 2  # both were bulk
            assert ms.projector.batch_size == live
            assert not ms.projector._bulk

    asyncio.run(body())
