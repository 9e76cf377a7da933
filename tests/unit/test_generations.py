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
