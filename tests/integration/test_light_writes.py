"""`memstream.light_writes`: an add written and applied through `lance` alone (the CLI's
`add` without a server) leaves the log, the tables and the answer the full path would, and
goes nowhere it could not finish alone.

The reference is the full projector itself: after any mix of light and full adds (exact
duplicates, two users, agent scopes, metadata), the live tables equal a replay of the log by
`Memstream` (LanceDB), row for row, and every answer is the decision recorded for its event.
Real files, real lance/LanceDB; nothing mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import lance
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from memstream.embedders import get_embedder
from memstream.events import Actor
from memstream.light_writes import NotOwn, OwnAdds, light_add
from memstream.log.base import LogRecord, Position
from memstream.log.file import FileEventLog
from memstream.models import Tenant, WriteResult
from memstream.producers.writer import MemoryWriter
from memstream.projector.compaction import SMALL_FRAGMENTS
from memstream.query.reader import MemoryReader
from memstream.service import Memstream
from memstream.settings import Settings

TEXTS = ["alice likes green tea", "flights on tuesday", "a deadline on friday"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedder="hashing")


async def _seed(settings: Settings) -> None:
    """A current projection whose tables (and embedding cache) exist."""
    async with Memstream(settings) as ms:
        await ms.add("the seed memory", user_id="alice")


async def _full_add(settings: Settings, text: str, **kw: Any) -> list[WriteResult]:
    async with Memstream(settings) as ms:
        return await ms.add(text, actor=Actor(source="cli"), **kw)


def _light(settings: Settings, text: str, **kw: Any) -> list[WriteResult] | None:
    return asyncio.run(light_add(settings, text, **kw))


def _live(settings: Settings) -> Path:
    root = settings.data_dir / "projections"
    return root / (root / "CURRENT").read_text().strip()


def _rows(generation: Path, table: str, key: tuple[str, ...]) -> list[dict[str, Any]]:
    ds = lance.dataset(str(generation / "lance" / f"{table}.lance"))
    return sorted(ds.to_table().to_pylist(), key=lambda r: tuple(r[k] for k in key))


def _log_end(settings: Settings) -> int:
    return asyncio.run(FileEventLog(settings.data_dir / "log").end_offsets()).get(0, 0)


ADDS = st.lists(
    st.tuples(
        st.booleans(),  # light or full
        st.sampled_from(["alice", "bob"]),
        st.sampled_from([None, "travel"]),
        st.sampled_from(TEXTS),
        st.sampled_from([None, {"k": 1}]),
    ),
    min_size=1,
    max_size=6,
)


@hsettings(max_examples=8, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(adds=ADDS)
def test_light_adds_leave_the_tables_a_replay_of_the_log_builds(
    tmp_path_factory: pytest.TempPathFactory, adds: list[tuple[bool, str, str | None, str, Any]]
) -> None:
    settings = Settings(data_dir=tmp_path_factory.mktemp("light") / "data", embedder="hashing")
    asyncio.run(_seed(settings))
    answers: list[WriteResult] = []
    for light, user, agent, text, meta in adds:
        kw = {"user_id": user, "agent_id": agent, "metadata": meta}
        if light:
            got = _light(settings, text, **kw)
            assert got is not None  # a current projection: the light path answers
        else:
            got = asyncio.run(_full_add(settings, text, **kw))
        answers += got
    live = _live(settings)
    before = {
        "memories": _rows(live, "memories", ("id",)),
        "events": _rows(live, "events", ("partition", "offset")),
    }

    async def replay() -> None:
        async with Memstream(settings) as ms:
            await ms.replay()

    asyncio.run(replay())
    rebuilt = _live(settings)
    assert rebuilt != live
    assert _rows(rebuilt, "memories", ("id",)) == before["memories"]
    assert _rows(rebuilt, "events", ("partition", "offset")) == before["events"]
    decided = {row["event_id"]: row for row in before["events"]}
    for answer in answers:
        row = decided[answer.event_id]
        assert answer.event == row["outcome"]
        assert answer.id == (
            row["resolved_memory_id"] if answer.event == "NONE" else row["memory_id"]
        )


def test_a_light_add_is_read_by_the_full_path_and_a_duplicate_is_none(settings: Settings) -> None:
    asyncio.run(_seed(settings))
    first = _light(settings, "carol drinks oolong", user_id="carol", metadata={"a": 1})
    assert first is not None and [(r.event, r.memory) for r in first] == [
        ("ADD", "carol drinks oolong")
    ]
    again = _light(settings, "carol drinks oolong", user_id="carol")
    assert again is not None and [(r.event, r.id) for r in again] == [("NONE", first[0].id)]

    async def read() -> tuple[list[str], list[str]]:
        async with Memstream(settings) as ms:
            page = await ms.get_all({"user_id": "carol"})
            history = await ms.history(first[0].id)
            return [m.id for m in page.results], [h.event for h in history]

    ids, history = asyncio.run(read())
    assert ids == [first[0].id]
    assert history == ["ADD", "NONE"]  # the duplicate is in its history, as on the full path


def test_no_wait_and_request_ids_answer_as_the_full_path(settings: Settings) -> None:
    asyncio.run(_seed(settings))
    pending = _light(settings, "dave is pending", user_id="dave", wait=False)
    assert pending is not None and pending[0].pending
    # the log now ends past the projection: the next add is the full path's (it applies both)
    assert _light(settings, "dave again", user_id="dave", request_id="r-1") is None
    full = asyncio.run(_full_add(settings, "dave again", user_id="dave", request_id="r-1"))
    retried = _light(settings, "dave again", user_id="dave", request_id="r-1")
    assert retried is not None  # a retry: the original answer, nothing appended
    assert [(r.id, r.event, r.event_id) for r in retried] == [
        (r.id, r.event, r.event_id) for r in full
    ]


def test_it_declines_before_appending_where_it_cannot_finish(settings: Settings) -> None:
    assert _light(settings, "nothing projected yet", user_id="erin") is None
    assert _log_end(settings) == 0
    asyncio.run(_seed(settings))
    end = _log_end(settings)
    assert _light(settings, "no entity") is None  # the full path then says what is wrong
    assert _light(settings, "x", user_id="erin", metadata=[1]) is None
    assert _log_end(settings) == end

    async def pin() -> None:
        async with Memstream(settings) as ms:
            await ms.replay(to_position="0:0")

    asyncio.run(pin())
    assert _light(settings, "pinned", user_id="erin") is None
    assert _light(dataclasses.replace(settings, embedder="hashing:256"), "x", user_id="e") is None
    assert _log_end(settings) == end


def test_events_another_process_appended_first_go_to_the_full_path(settings: Settings) -> None:
    """The light projector applies only its own events while they are next in the log; here
    another writer appends between the light add's checks and its append, so it raises
    before writing anything, and `Memstream.add_results` (what the CLI calls then) applies
    both and answers."""
    asyncio.run(_seed(settings))

    async def race() -> tuple[list[WriteResult], list[WriteResult], list[str]]:
        log = FileEventLog(settings.data_dir / "log")
        projector = OwnAdds(settings.data_dir, log, get_embedder("hashing"), settings)
        writer = MemoryWriter(log, projector, MemoryReader(projector), settings.limits)
        await log.start()
        await projector.keys.start()
        try:
            async with Memstream(settings) as other:  # another writer, its own log handle
                foreign = await other.add("frank was first", user_id="frank", wait=False)
            with pytest.raises(NotOwn):
                await writer.add(Tenant("local", "default"), "frank came second", user_id="frank")
            positions = [Position(p, o) for p, o in sorted(projector.own)]
        finally:
            await projector.close()
            await projector.keys.close()
            await log.close()
        async with Memstream(settings) as ms:
            results = await ms.add_results(positions)
            page = await ms.get_all({"user_id": "frank"})
        return foreign, results, sorted(m.memory for m in page.results)

    foreign, results, memories = asyncio.run(race())
    assert foreign[0].pending
    assert [(r.event, r.memory) for r in results] == [("ADD", "frank came second")]
    assert memories == ["frank came second", "frank was first"]


def test_a_missing_table_declines_the_facade_creates_none(settings: Settings) -> None:
    asyncio.run(_seed(settings))
    shutil.rmtree(settings.data_dir / "cache")
    end = _log_end(settings)
    assert _light(settings, "no cache table", user_id="gina") is None
    assert _log_end(settings) == end


def test_own_adds_admits_its_own_prefix_and_nothing_else(settings: Settings) -> None:
    """What `OwnAdds` applies of the next unapplied records: its own ones up to the first
    foreign one; none at all (a server's projector applied them first); and it refuses a
    foreign one first."""
    asyncio.run(_seed(settings))
    log = FileEventLog(settings.data_dir / "log")
    projector = OwnAdds(settings.data_dir, log, get_embedder("hashing"), settings)
    try:
        projector.note_appended([Position(0, 5), Position(0, 6)])

        def records(*offsets: int) -> list[LogRecord]:
            return [LogRecord(Position(0, o), b"k", b"v", 0) for o in offsets]

        assert projector._admit([], {0: 7}) == []
        mine = projector._admit(records(5, 6, 7), {0: 5})
        assert [r.position.offset for r in mine] == [5, 6]
        with pytest.raises(NotOwn):
            projector._admit(records(4, 5, 6), {0: 4})
    finally:
        asyncio.run(projector.close())


def test_light_adds_compact_and_index_the_tables_as_the_full_path(settings: Settings) -> None:
    """Each one-shot add looks at the tables' fragments (Projector.maintain on its first
    batch); after SMALL_FRAGMENTS light adds compaction is due and runs through the facade:
    the BTree indexes memstream keeps, fewer fragments, and still the tables a replay of the
    log builds."""
    asyncio.run(_seed(settings))
    for i in range(SMALL_FRAGMENTS + 2):
        assert _light(settings, f"memory number {i}", user_id=f"u{i % 3}") is not None
    live = _live(settings)
    memories = lance.dataset(str(live / "lance" / "memories.lance"))
    events = lance.dataset(str(live / "lance" / "events.lance"))
    assert {tuple(d.field_names) for d in memories.describe_indices()} >= {
        ("id",),
        ("org_id",),
        ("project_id",),
        ("user_id",),
        ("hash",),
    }
    assert {("event_id",), ("user_id",)} <= {
        tuple(d.field_names) for d in events.describe_indices()
    }
    assert len(memories.get_fragments()) < SMALL_FRAGMENTS
    before = _rows(live, "memories", ("id",))

    async def replay_and_read() -> int:
        async with Memstream(settings) as ms:
            await ms.replay()
            return (await ms.get_all({"user_id": "u1"})).count

    assert asyncio.run(replay_and_read()) == len([r for r in before if r["user_id"] == "u1"])
    assert _rows(_live(settings), "memories", ("id",)) == before
