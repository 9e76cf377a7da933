"""The fresh tier (projector/tier.py, query/tiered.py): reads over tables + tier are exactly
the reads of a projection built without a tier from the same log, at every point.

The reference is a second `Projector` with the tier off, folding the same log into its own
data directory (sharing the subject keys, so erasures are the same), read by its own
`MemoryReader`: get_all (several filters, with and without expired memories, both read
plans), search (both plans), get of every id ever made, history (with its inference
explanations), every event's outcome, and every async add's settlement. Operations: adds
(with duplicates, expiry dates in the past, metadata), updates, deletes, delete_all,
inferred changes (an add, an update or delete of a memory as the LLM read it or as it was
before -- a conflict --, each with its messages and decision), async adds and their
settlings (a decision, a second decision, a failure: the first one in log order applies),
erasures, expiry sweeps, flushes and replays, in random order (hypothesis). The inference
events are appended as the pipeline appends them (producers/inference.py), without an LLM:
what is under test is how the projector and the readers treat them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.errors import NotFoundError
from memstream.events import (
    Event,
    InferenceDecided,
    InferenceFailed,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
    new_id,
    text_hash,
)
from memstream.models import Tenant
from memstream.projector.apply import scope_of_row
from memstream.projector.projector import Projector
from memstream.query.explain import settlement
from memstream.query.reader import MemoryReader
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

TENANT = Tenant("local", "default")
USERS = ("ann", "bob")
AGENTS = (None, "bot")
TEXTS = tuple(f"likes {w}" for w in ("tea", "coffee", "chess", "rain", "jazz", "maps"))
FILTERS: tuple[dict[str, Any], ...] = (
    {"user_id": "ann"},
    {"user_id": "bob"},
    {"user_id": "ann", "agent_id": "*"},
    {"user_id": {"in": ["ann", "bob"]}, "agent_id": "bot"},
    {"OR": [{"user_id": "ann"}, {"user_id": "bob"}]},
    {"AND": [{"user_id": "bob", "agent_id": "*"}, {"metadata": {"n": 1}}]},
)

OP = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(USERS),
        st.sampled_from(AGENTS),
        st.integers(0, len(TEXTS) - 1),
        st.integers(0, 2),
        st.booleans(),
    ),  # fmt: skip
    st.tuples(st.just("update"), st.integers(0, 40), st.integers(0, len(TEXTS) - 1)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("delete_all"), st.sampled_from(USERS)),
    st.tuples(
        st.just("infer"),
        st.sampled_from(USERS),
        st.sampled_from(("ADD", "UPDATE", "DELETE")),
        st.integers(0, 40),
        st.integers(0, len(TEXTS) - 1),
        st.booleans(),
    ),  # fmt: skip
    st.tuples(st.just("async_add"), st.sampled_from(USERS), st.integers(0, len(TEXTS) - 1)),
    st.tuples(st.just("settle"), st.integers(0, 40), st.booleans()),
    st.tuples(st.just("erase"), st.sampled_from(USERS)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("replay")),
    st.tuples(st.just("check")),
)


def views(items: list[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(m) for m in items]


@dataclasses.dataclass
class Seen:
    """What the operations made: memory ids, every event appended, async adds' messages."""

    ids: list[str] = dataclasses.field(default_factory=list)
    events: list[str] = dataclasses.field(default_factory=list)
    pending: list[MessagesRecorded] = dataclasses.field(default_factory=list)


def _outcome(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["event_type"], row["outcome"], row["text"], row["old_text"], row["payload"])


async def same_reads(ms: Memstream, ref: Projector, seen: Seen, *, scoped: bool = True) -> None:
    """Every read of `ms` (tables + its tier) equals the reference projection's."""
    ids = seen.ids
    await ref.catch_up()
    mine = MemoryReader(ms.projector, scoped=scoped)
    theirs = MemoryReader(ref, scoped=scoped)
    for f in FILTERS:
        for show in (False, True):
            a = await asyncio.to_thread(mine.get_all, TENANT, f, page_size=1000, show_expired=show)
            b = await asyncio.to_thread(
                theirs.get_all, TENANT, f, page_size=1000, show_expired=show
            )
            assert views(a.results) == views(b.results), (f, show)
            assert a.count == b.count
        for q in TEXTS[:3]:
            a_s = await asyncio.to_thread(mine.search, TENANT, q, f, top_k=4)
            b_s = await asyncio.to_thread(theirs.search, TENANT, q, f, top_k=4)
            assert views(a_s) == views(b_s), (f, q, scoped)
    for mid in ids:
        try:
            got: Any = dataclasses.asdict(mine.get(TENANT, mid))
        except NotFoundError:
            got = None
        try:
            want: Any = dataclasses.asdict(theirs.get(TENANT, mid))
        except NotFoundError:
            want = None
        assert got == want, mid
        try:
            got_h: Any = views(mine.history(TENANT, mid))
        except NotFoundError:
            got_h = None
        try:
            want_h: Any = views(theirs.history(TENANT, mid))
        except NotFoundError:
            want_h = None
        assert got_h == want_h, mid
    got_o = mine.outcomes(seen.events)
    want_o = theirs.outcomes(seen.events)
    assert {i: _outcome(r) for i, r in got_o.items()} == {i: _outcome(r) for i, r in want_o.items()}
    gen, ref_gen = ms.projector.generation(), ref.generation()
    view = ms.projector.tier_view(gen)
    for recorded in seen.pending:
        a = settlement(gen, recorded.event_id, None, view)
        b = settlement(ref_gen, recorded.event_id)
        assert (a is None) == (b is None), recorded.event_id
        if a is not None and b is not None:
            assert (a.event_id, a.failed, [r["event_id"] for r in a.rows]) == (
                b.event_id, b.failed, [r["event_id"] for r in b.rows],
            )  # fmt: skip


def _memory_row(ms: Memstream, memory_id: str) -> dict[str, Any] | None:
    """The memory's current row as this process sees it (its tier's, else the table's)."""
    gen = ms.projector.generation()
    view = ms.projector.tier_view(gen)
    if memory_id in view.rows:
        return view.rows[memory_id]
    found = gen.query_memories(f"id = '{memory_id}'")
    return found[0] if found else None


def _decision(recorded: MessagesRecorded, *, settles: bool = False) -> InferenceDecided:
    return InferenceDecided(
        scope=recorded.scope, messages_event_id=recorded.event_id, model="scripted-1",
        llm_host="127.0.0.1", prompt_version="v-test", prompt_hash="h", settles=settles,
        output='{"facts": ["from the test"]}',
    )  # fmt: skip


def _inferred(ms: Memstream, op: tuple[Any, ...], n: int, seen: Seen) -> list[Event]:
    """An inferred add's events as the pipeline appends them (producers/inference.py):
    the messages, the decision, the memory event naming it -- an UPDATE or DELETE of a
    memory as the LLM read it (its last_offset), or of an older version (a conflict)."""
    _, user, verb, target, t, stale = op
    row = _memory_row(ms, seen.ids[target % len(seen.ids)]) if seen.ids else None
    scope = scope_of_row(row) if row is not None else Scope("local", "default", user_id=user)
    recorded = MessagesRecorded(scope=scope, messages=f'[{{"role": "user", "content": "{n}"}}]')
    decided = _decision(recorded)
    text = f"{TEXTS[t]} inferred {n}"
    change: Event
    if verb == "ADD" or row is None:
        change = MemoryAdded(scope=scope, memory_id=new_id(), text=text, hash=text_hash(text),
                             decision_id=decided.event_id)  # fmt: skip
        seen.ids.append(change.memory_id or "")
    else:
        expected = row["last_offset"] - 1 if stale else row["last_offset"]
        if verb == "UPDATE":
            change = MemoryUpdated(scope=scope, memory_id=row["id"], text=text,
                                   hash=text_hash(text), decision_id=decided.event_id,
                                   expected_offset=expected)  # fmt: skip
        else:
            change = MemoryDeleted(scope=scope, memory_id=row["id"], reason="inference",
                                   decision_id=decided.event_id,
                                   expected_offset=expected)  # fmt: skip
    return [recorded, decided, change]


def _settling(op: tuple[Any, ...], n: int, seen: Seen) -> list[Event]:
    """A settling of an async add (a second one of the same add is a DUPLICATE): a
    decision adding a memory, or a failure."""
    _, which, fails = op
    recorded = seen.pending[which % len(seen.pending)]
    if fails:
        return [InferenceFailed(scope=recorded.scope, messages_event_id=recorded.event_id,
                                model="scripted-1", llm_host="127.0.0.1",
                                reason=f"failure {n}")]  # fmt: skip
    decided = _decision(recorded, settles=True)
    text = f"settled {n}"
    added = MemoryAdded(scope=recorded.scope, memory_id=new_id(), text=text,
                        hash=text_hash(text), decision_id=decided.event_id)  # fmt: skip
    seen.ids.append(added.memory_id or "")
    return [decided, added]


def _in_tier(ms: Memstream, events: list[Event]) -> bool:
    view = ms.projector.tier_view(ms.projector.generation())
    held = {a["event_id"] for a in view.audits}
    return all(e.event_id in held for e in events)


async def run_ops(root: Path, ops: list[tuple[Any, ...]], tier_rows: int = 100_000) -> None:
    settings_ = Settings(data_dir=root / "data", embedder="hashing", tier_rows=tier_rows,
                         tier_age_s=3600.0)  # fmt: skip
    async with Memstream(settings_) as ms:
        ref = Projector(root / "ref", ms.log, ms.embedder, keys=ms.projector.keys, tier_rows=0)
        seen = Seen()
        ids = seen.ids
        in_tier = 0
        try:
            for n, op in enumerate(ops):
                kind = op[0]
                if kind == "add":
                    _, user, agent, t, meta, past = op
                    out = await ms.add(
                        TEXTS[t], user_id=user, agent_id=agent, metadata={"n": meta},
                        expiration_date="2001-01-01" if past else None,
                    )  # fmt: skip
                    for r in out:
                        ids.append(r.id)
                        if r.event == "ADD":  # the fast path is the one under test
                            view = ms.projector.tier_view(ms.projector.generation())
                            assert view.rows.get(r.id) is not None
                            in_tier += 1
                elif kind == "update" and ids:
                    mid = ids[op[1] % len(ids)]
                    with contextlib.suppress(NotFoundError):
                        await ms.update(mid, text=f"{TEXTS[op[2]]} now {n}")
                elif kind == "delete" and ids:
                    with contextlib.suppress(NotFoundError):
                        await ms.delete(ids[op[1] % len(ids)])
                elif kind == "delete_all":
                    await ms.delete_all({"user_id": op[1]})
                elif kind in ("infer", "async_add", "settle"):
                    if kind == "infer":
                        events = _inferred(ms, op, n, seen)
                    elif kind == "async_add":
                        scope = Scope("local", "default", user_id=op[1])
                        content = f'[{{"role": "user", "content": "{TEXTS[op[2]]}"}}]'
                        recorded = MessagesRecorded(scope=scope, messages=content, pending=True)
                        seen.pending.append(recorded)
                        events = [recorded]
                    elif seen.pending:
                        events = _settling(op, n, seen)
                    else:
                        events = []
                    if events:
                        await ms.writer._append(events)
                        seen.events.extend(e.event_id for e in events)
                        # the batch stays in the tier, as a plain add's does
                        assert _in_tier(ms, events)
                elif kind == "erase":
                    await ms.erase(user_id=op[1])
                elif kind == "expire":
                    await ms.expire()
                elif kind == "flush":
                    await ms.projector.flush_tier()
                    assert not ms.projector.tier_view(ms.projector.generation())
                elif kind == "replay":  # both: a replay opens events erased since
                    await ms.replay()
                    await ref.replay()
                elif kind == "check":
                    await same_reads(ms, ref, seen)
                # the reference applies each event when ms does (before an erasure destroys
                # the keys it was sealed under, as ms did)
                await ref.catch_up()
            await same_reads(ms, ref, seen)
            await same_reads(ms, ref, seen, scoped=False)
        finally:
            await ref.close()


@settings(max_examples=25)
@given(ops=st.lists(OP, min_size=1, max_size=18))
def test_reads_over_tier_and_tables_equal_a_projection_without_tier(
    ops: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_ops(Path(tmp), ops))


@settings(max_examples=20)
@given(ops=st.lists(OP, min_size=1, max_size=18))
def test_reads_equal_a_projection_without_tier_across_background_flushes(
    ops: list[tuple[Any, ...]],
) -> None:
    """The same, with a tier due every 2 events: a due tier is frozen and written in the
    background while the next batches are decided into a tier on top of it (every read
    then merges tables + frozen tier + top tier), landing at a later step."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_ops(Path(tmp), ops, tier_rows=2))


# -- crash: a process killed with a non-empty tier loses nothing -----------------------------

CHILD = """
import asyncio, json, sys
from pathlib import Path
from memstream.service import Memstream
from memstream.settings import Settings

async def main() -> None:
    fields = json.loads(sys.argv[1])
    fields["data_dir"] = Path(fields["data_dir"])
    ms = await Memstream(Settings(**fields)).start()
    ids = [(await ms.add(f"fact {i}", user_id="ann"))[0].id for i in range(int(sys.argv[2]))]
    gen = ms.projector.generation()
    held = [i for i in ids if ms.projector.tier_view(gen).rows.get(i) is not None]
    print(json.dumps({"ids": ids, "held": held, "flushed": sum(gen.checkpoint().values())}),
          flush=True)
    await asyncio.sleep(3600)  # killed here, the tier full

asyncio.run(main())
"""


def test_a_process_killed_with_a_full_tier_loses_nothing(settings: Settings) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    fields = {
        "data_dir": str(settings.data_dir), "embedder": "hashing", "tier_rows": 100_000,
        "tier_age_s": 3600.0, "kafka_bootstrap": settings.kafka_bootstrap,
        "topic": settings.topic,
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(fields), "12"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        said = json.loads(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert len(said["ids"]) == 12 and said["held"] == said["ids"]  # all in the tier
    assert said["flushed"] < 12  # ... and not in the tables when the process died

    async def after_restart() -> list[str]:
        async with Memstream(settings) as ms:
            page = await ms.get_all({"user_id": "ann"}, page_size=100)
            return sorted(m.id for m in page.results)

    assert asyncio.run(after_restart()) == sorted(said["ids"])


# -- other processes (another Memstream on the data directory, e.g. a CLI command) -----------


def test_other_processes_read_their_own_and_the_tiers_writes(settings: Settings) -> None:
    async def go() -> None:
        tiered = dataclasses.replace(settings, tier_rows=100_000, tier_age_s=3600.0)
        async with Memstream(tiered) as a:
            first = (await a.add("likes tea", user_id="ann"))[0].id
            assert a.projector.tier_view(a.projector.generation()).rows.get(first) is not None
            # another process (no tier: as an older CLI would) projects the log itself
            async with Memstream(dataclasses.replace(settings, tier_rows=0)) as b:
                seen = await b.get_all({"user_id": "ann"})
                assert [m.id for m in seen.results] == [first]
                second = (await b.add("likes jazz", user_id="ann"))[0].id
            # the tier now sits on a stale checkpoint: rebuilt, nothing lost, nothing twice
            page = await a.get_all({"user_id": "ann"})
            assert sorted(m.id for m in page.results) == sorted([first, second])
            more = [(await a.add(f"likes {w}", user_id="ann"))[0].id for w in "abcde"]
            everything = sorted([first, second, *more])
            # another process applies part of the tier's events (one small step) ...
            async with Memstream(dataclasses.replace(settings, tier_rows=0)) as b:
                b.projector.batch_size = 2
                for _ in range(50):  # a Kafka consumer's first reads may come back empty
                    if await b.projector.step(timeout_s=0.5):
                        break
                part = b.reader.get_all(TENANT, {"user_id": "ann"}, page_size=100)
                assert 2 < part.count < len(everything)
            # ... meanwhile this process's readers still see all of it, exactly once
            mine = a.reader.get_all(TENANT, {"user_id": "ann"}, page_size=100)
            assert sorted(m.id for m in mine.results) == everything
            await a.projector.step()  # rebuilds the tier on the moved checkpoint
            mine = a.reader.get_all(TENANT, {"user_id": "ann"}, page_size=100)
            assert sorted(m.id for m in mine.results) == everything
            hits = a.reader.search(TENANT, "likes tea", {"user_id": "ann"}, top_k=20)
            assert sorted(m.id for m in hits) == everything
        # closed: the tier was flushed; a fresh process reads everything from the tables
        async with Memstream(dataclasses.replace(settings, tier_rows=0)) as c:
            assert sum(c.projector.generation().checkpoint().values()) == len(everything)
            page = await c.get_all({"user_id": "ann"}, page_size=100)
            assert sorted(m.id for m in page.results) == everything

    asyncio.run(go())


# -- a flush that fails half-way ---------------------------------------------------------------


async def _written_once(ms: Memstream, ids: list[str]) -> None:
    """After a failed flush was rebuilt and written: ann's memories `ids` (the only events
    of the log) are each in the tables once, the checkpoint covers them, and reads agree."""
    gen = ms.projector.generation()
    assert gen.memories().count_rows() == len(ids)  # no row twice
    assert gen.events().count_rows() == len(ids)  # no audit row twice
    assert sum(gen.checkpoint().values()) == len(ids)
    page = await ms.get_all({"user_id": "ann"}, page_size=100)
    assert sorted(m.id for m in page.results) == sorted(ids)


def test_a_failed_flush_is_redone_from_the_log_once(settings: Settings, monkeypatch: Any) -> None:
    from memstream import metrics
    from memstream.projector import projector as projector_module

    real = projector_module.write_rows
    failures = [1]

    def fails_after_writing(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the rows are in the tables, the checkpoint is not
        if failures:
            failures.pop()
            raise OSError("disk went away")

    def projected() -> float:
        return sum(
            s.value
            for m in metrics.EVENTS_PROJECTED.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("type") == "MemoryAdded"
        )

    async def go() -> None:
        tiered = dataclasses.replace(settings, tier_rows=100_000, tier_age_s=3600.0)
        async with Memstream(tiered) as ms:
            before = projected()
            ids = [(await ms.add(f"likes {w}", user_id="ann"))[0].id for w in "abcdef"]
            monkeypatch.setattr(projector_module, "write_rows", fails_after_writing)
            try:
                await ms.projector.flush_tier()
            except OSError:
                pass
            else:
                raise AssertionError("the flush should have failed")
            # counted when applied (searchable), and not again for the failed flush
            assert projected() == before + len(ids)
            page = await ms.get_all({"user_id": "ann"}, page_size=100)
            assert sorted(m.id for m in page.results) == sorted(ids)
            await ms.projector.flush_tier()  # rebuilt from the log, then written
            assert projected() == before + len(ids)  # the rebuild decided them again: once
            await _written_once(ms, ids)

    asyncio.run(go())


# -- a due flush is written in the background (issue 16, section 4) ----------------------------


def _flock_free(data_dir: Path) -> bool:
    """Whether another process could take the projector's lock now (a second descriptor of
    the lock file, as another process would open it)."""
    import fcntl
    import os

    fd = os.open(data_dir / "projector.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (closing the descriptor releases a lock it took)
    return True


def test_batches_are_applied_and_released_while_a_due_flush_is_held_up(
    settings: Settings, monkeypatch: Any
) -> None:
    """A tier that became due is written while the writers of the batch that made it due
    are released, and the next batches are decided, searchable and released before that
    write is done -- deciding exactly as one tier would (an update of a frozen row, a
    duplicate of a frozen row's text) -- and the write keeps the cross-process lock until it
    lands. The write is the real one, held at a gate."""
    import threading

    from memstream.projector import projector as projector_module

    real = projector_module.write_rows
    entered, gate, written = threading.Event(), threading.Event(), threading.Event()
    calls = [0]

    def held(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:  # the first flush: held until the test opens the gate
            entered.set()
            gate.wait(timeout=30)  # (without the background write the add waits this long)
        real(*args, **kwargs)
        if calls[0] == 1:
            written.set()

    async def go() -> None:
        # due by age after every batch (a tier due by rows would wait for the write under
        # way before taking more: FLIGHT_BACKLOG)
        tiered = dataclasses.replace(settings, tier_rows=100_000, tier_age_s=1e-9)
        async with Memstream(tiered) as ms:
            monkeypatch.setattr(projector_module, "write_rows", held)
            try:
                a = (await ms.add("likes tea", user_id="ann"))[0].id  # the tier is due
                b = (await ms.add("likes jazz", user_id="ann"))[0].id
                await asyncio.to_thread(entered.wait)
                # the writer of the batch that made the tier due was released before the
                # write of the tier was done
                assert not written.is_set()
                gen = ms.projector.generation()
                assert sum(gen.checkpoint().values()) == 0  # nothing in the tables yet
                c = (await ms.add("likes chess", user_id="ann"))[0].id
                await ms.update(a, text="likes green tea")
                again = await ms.add("likes jazz", user_id="ann")  # b's text: a duplicate
                assert not written.is_set()  # all of it decided beside the held write
                assert [r.event for r in again] != ["ADD"]
                page = await ms.get_all({"user_id": "ann"}, page_size=100)
                got = {m.id: m.memory for m in page.results}
                assert got == {a: "likes green tea", b: "likes jazz", c: "likes chess"}
                hits = await ms.search("likes chess", {"user_id": "ann"}, top_k=10)
                assert sorted(m.id for m in hits) == sorted([a, b, c])
                # no batch is being applied now, but the write still holds the cross-process
                # lock: another process cannot apply the log under it
                assert not _flock_free(tiered.data_dir)
            finally:
                gate.set()
            await ms.projector.flush_tier()
            assert written.is_set()
            assert _flock_free(tiered.data_dir)  # released once the last holder let go
            gen = ms.projector.generation()
            assert gen.memories().count_rows() == 3  # the update merged, nothing twice
            rows = {r["id"]: r["text"] for r in gen.query_memories("true")}
            assert rows == {a: "likes green tea", b: "likes jazz", c: "likes chess"}
            events = gen.events().count_rows()
            assert events == sum(gen.checkpoint().values())  # one audit row per event
            assert not ms.projector.tier_view(gen)
        async with Memstream(dataclasses.replace(settings, tier_rows=0)) as other:
            page = await other.get_all({"user_id": "ann"}, page_size=100)
            assert {m.id: m.memory for m in page.results} == got

    asyncio.run(go())


def test_a_failed_background_flush_is_redone_from_the_log(
    settings: Settings, monkeypatch: Any
) -> None:
    """A background write that fails half-way (rows written, checkpoint not) leaves the tier
    on top broken: it is rebuilt from the log over both layers' events, nothing is lost,
    nothing is written twice, and the readers see every memory throughout."""
    import threading

    from memstream.projector import projector as projector_module

    real = projector_module.write_rows
    failed = threading.Event()

    def fails_after_writing(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        if not failed.is_set():
            failed.set()
            raise OSError("disk went away")

    async def go() -> None:
        tiered = dataclasses.replace(settings, tier_rows=2, tier_age_s=3600.0)
        async with Memstream(tiered) as ms:
            monkeypatch.setattr(projector_module, "write_rows", fails_after_writing)
            ids = [(await ms.add(f"likes {w}", user_id="ann"))[0].id for w in "ab"]
            await asyncio.to_thread(failed.wait)  # the frozen tier's write failed ...
            flight = ms.projector._flight
            if flight is not None:  # ... and has finished failing
                await asyncio.wait([asyncio.wrap_future(flight)])
            ids += [(await ms.add(f"likes {w}", user_id="ann"))[0].id for w in "cde"]
            page = await ms.get_all({"user_id": "ann"}, page_size=100)
            assert sorted(m.id for m in page.results) == sorted(ids)
            await ms.projector.flush_tier()
            await _written_once(ms, ids)

    asyncio.run(go())
