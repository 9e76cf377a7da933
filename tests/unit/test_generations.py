"""Generations: a promote keeps the replaced one for readers still on it, then drops it."""

from __future__ import annotations

from pathlib import Path

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
