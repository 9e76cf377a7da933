"""Generations: a promote keeps the replaced one for readers still on it, then drops it."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from memstream.projector.store import RETIRED, ProjectionStore


def test_a_replaced_generation_survives_its_grace_period_then_goes(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path, dim=8, embedder="hashing-8", log_identity="file")
    first = store.current().path
    building = store.new_generation().path  # a replay in progress elsewhere: never touched
    second = store.new_generation().path
    store.promote(second.name)
    assert store.current_name() == second.name
    assert first.exists() and (first / RETIRED).exists()  # a reader on it can finish
    assert store.drop_retired(older_than_s=300) == []
    assert store.drop_retired() == [first.name]
    assert not first.exists()
    assert building.exists() and second.exists()
    third = store.new_generation().path
    store.promote(third.name)
    store.promote(second.name)  # back to a retired one: it is live again, never dropped
    assert store.drop_retired() == [third.name]
    assert second.exists() and store.current_name() == second.name


def test_the_projector_drops_a_retired_generation_once_its_grace_period_is_over(
    tmp_path: Path,
) -> None:
    """Maintenance, not only the next promote, removes a replaced generation: a server that
    replays once must not keep the old tables on disk forever."""
    import asyncio
    import time

    from memstream.embedders.hashing import HashingEmbedder
    from memstream.log.file import FileEventLog
    from memstream.projector.projector import Projector

    async def go() -> None:
        log = FileEventLog(tmp_path / "log")
        await log.start()
        projector = Projector(tmp_path, log, HashingEmbedder(dim=8))
        try:
            first = projector.generation().path
            await projector.replay()
            assert (first / RETIRED).exists()
            projector.maintain(projector.generation())
            assert first.exists()  # still inside its grace period
            (first / RETIRED).write_text(repr(time.time() - 3600))
            projector.maintain(projector.generation())
            assert not first.exists()
        finally:
            await projector.close()
            await log.close()

    asyncio.run(go())


def test_fewer_collections_is_undone_even_when_the_replay_fails() -> None:
    from memstream.projector.projector import REPLAY_GC_THRESHOLD, _fewer_collections

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _fewer_collections():
        assert gc.get_threshold() == (REPLAY_GC_THRESHOLD, *before[1:])
        raise RuntimeError("replay failed")
    assert gc.get_threshold() == before


def test_what_a_killed_replay_left_is_dropped_but_a_live_replay_is_not(tmp_path: Path) -> None:
    """A generation being built holds a BUILDING flock; once its process is gone (SIGKILL),
    `drop_abandoned` deletes it (it holds plaintext no erasure would reach), but never the
    live generation, a retired one, or one another live process is building."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from memstream.projector.store import BUILDING

    store = ProjectionStore(tmp_path, dim=8, embedder="hashing-8", log_identity="file")
    live = store.current().path
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path\n"
            "from memstream.projector.store import ProjectionStore\n"
            "s = ProjectionStore(Path(sys.argv[1]), dim=8, embedder='hashing-8', log_identity='file')\n"
            "print(s.new_generation().path.name, flush=True); time.sleep(120)"
        ), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        building = tmp_path / "projections" / child.stdout.readline().strip()
        assert (building / BUILDING).exists()
        mine = store.new_generation().path  # this process's own build: kept too
        old = tmp_path / "projections" / "gen-19700101T000000-dead01"  # no lock, old
        old.mkdir()
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        (tmp_path / "projections" / "x.tmp").write_text("stale")
        os.utime(tmp_path / "projections" / "x.tmp", (0, 0))
        assert store.drop_abandoned() == [old.name]
        assert building.exists() and mine.exists() and live.exists()
        assert not (tmp_path / "projections" / "x.tmp").exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert store.drop_abandoned() == [building.name]
        assert not building.exists() and mine.exists() and live.exists()
        store.abandon(mine.name)
        assert not mine.exists() and store.current_name() == live.name
    finally:
        child.kill()
        child.wait(timeout=30)


def test_a_finished_candidate_outlives_the_clean_up_and_a_half_built_one_does_not(
    tmp_path: Path,
) -> None:
    """A reinfer candidate is kept (marked) until discarded; a candidate whose build was
    killed before it was marked is what `drop_abandoned` removes at start-up."""
    import os
    import time

    from memstream.projector.store import BUILDING, CANDIDATE

    store = ProjectionStore(tmp_path, dim=8, embedder="hashing-8", log_identity="file")
    live = store.current().path
    kept = store.new_generation().path
    store.mark_candidate(kept.name, {"proposal": "p1"})
    assert (kept / CANDIDATE).exists() and not (kept / BUILDING).exists()
    killed = store.new_generation().path
    os.close(store._building.pop(killed.name))  # as if its process were gone: lock released
    os.utime(killed, (time.time() - 3600, time.time() - 3600))
    fresh = ProjectionStore(tmp_path, dim=8, embedder="hashing-8", log_identity="file")
    assert fresh.drop_abandoned() == [killed.name]
    assert kept.exists() and live.exists()
    assert fresh.candidates() == {kept.name: {"proposal": "p1"}}
    assert fresh.open(kept.name).path == kept
    fresh.drop(live.name)  # never the live one
    fresh.drop(kept.name)
    assert live.exists() and not kept.exists() and fresh.candidates() == {}


def test_tables_are_created_in_the_lance_format_chosen_for_point_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LanceDB's default format (2.2) reads a few rows of a constant page as slowly as the
    whole page (store.py LANCE_FILE_VERSION); MEMSTREAM_LANCE_FORMAT picks another, and a
    name Lance would not know is refused before any table is made."""
    import pyarrow as pa

    from memstream.errors import ValidationError
    from memstream.projector.store import LANCE_FILE_VERSION, connect_lancedb

    schema = pa.schema([pa.field("id", pa.string())])
    made = connect_lancedb(tmp_path).create_table("default", schema=schema)
    assert made.to_lance().data_storage_version == LANCE_FILE_VERSION != "2.2"
    monkeypatch.setenv("MEMSTREAM_LANCE_FORMAT", "2.0")
    made = connect_lancedb(tmp_path).create_table("older", schema=schema)
    made.add(pa.table({"id": ["a"]}))
    assert made.to_lance().data_storage_version == "2.0"
    monkeypatch.setenv("MEMSTREAM_LANCE_FORMAT", "stable-ish")
    with pytest.raises(ValidationError, match="MEMSTREAM_LANCE_FORMAT: 'stable-ish'"):
        connect_lancedb(tmp_path)


def test_upkeep_compacts_one_due_table_a_pass_and_a_replay_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction runs inside the fresh tier's background write; all three tables at once
    held that write (and the tier behind it) for seconds in a stream. A pass between writes
    compacts the first due table only; the next passes take the others; a replay's end
    (`force`) compacts every table together."""
    import asyncio

    from memstream.embedders.hashing import HashingEmbedder
    from memstream.log.file import FileEventLog
    from memstream.projector import compaction
    from memstream.projector.projector import Projector

    compacted: list[str] = []

    def due(table: object, index: object) -> bool:  # due until compacted once
        return str(getattr(table, "name", table)) not in compacted

    def compact(table: object, index: object, **_: object) -> None:
        compacted.append(str(getattr(table, "name", table)))

    async def go() -> None:
        log = FileEventLog(tmp_path / "log")
        await log.start()
        projector = Projector(tmp_path, log, HashingEmbedder(dim=8))
        try:
            from memstream.events import MemoryAdded, message_of, new_id, text_hash
            from memstream.scope import Scope

            scope = Scope("o", "p", user_id="u")
            await log.append([message_of(MemoryAdded(scope=scope, memory_id=new_id(),
                                                      text="tea", hash=text_hash("tea")))])  # fmt: skip
            await projector.catch_up()
            gen = projector.generation()
            monkeypatch.setattr(compaction, "due", due)
            monkeypatch.setattr(compaction, "compact", compact)
            passes = []
            for _ in range(4):
                projector.maintain(gen)
                passes.append(list(compacted))
            assert [len(p) for p in passes] == [1, 2, 3, 3]  # one a pass, then nothing due
            assert passes[2] == ["memories", "events", "embeddings_hashing_8"]
            compacted.clear()
            projector.maintain(gen, force=True)
            assert compacted == ["memories", "events", "embeddings_hashing_8"]
        finally:
            await projector.close()
            await log.close()

    asyncio.run(go())
