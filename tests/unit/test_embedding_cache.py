"""The embedding cache: vectors come back exactly as stored, from memory or from LanceDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import memstream.projector.store as store
from memstream.projector.store import EmbeddingCache


def test_a_cold_cache_reads_back_exactly_what_was_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    stored = {f"key-{i:05d}": rng.standard_normal(48).astype(np.float32) for i in range(300)}
    writer = EmbeddingCache(tmp_path, "model-a", 48)
    writer.put_many(dict(list(stored.items())[:200]))
    writer.put_many(dict(list(stored.items())[200:]))  # a second fragment: several chunks

    cold = EmbeddingCache(tmp_path, "model-a", 48)  # another process: nothing in memory
    wanted = sorted(stored)[::3] + ["never-stored"]
    found = cold.get_many(wanted)
    assert sorted(found) == sorted(stored)[::3]
    for key, vector in found.items():
        assert vector.dtype == np.float32 and vector.shape == (48,)
        assert np.array_equal(vector, stored[key])
    assert EmbeddingCache(tmp_path, "model-b", 48).get_many(wanted) == {}  # per model


def test_lookups_larger_than_one_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    stored = {f"k{i}": rng.standard_normal(8).astype(np.float32) for i in range(25)}
    EmbeddingCache(tmp_path, "m", 8).put_many(stored)
    monkeypatch.setattr(store, "LOOKUP_CHUNK", 4)  # seven queries
    found = EmbeddingCache(tmp_path, "m", 8).get_many(sorted(stored))
    assert {k: v.tolist() for k, v in found.items()} == {k: v.tolist() for k, v in stored.items()}


def test_a_put_racing_the_background_flush_is_never_lost(tmp_path: Path) -> None:
    """The fresh tier's background write flushes the cache on its own thread while the apply
    thread keeps putting. The race, made to happen: the flush runs just as a put is about to
    add its vector to the pending dict. Whatever the interleaving, every vector put ends up
    written (or still pending for the next flush), never dropped."""
    import threading

    cache = EmbeddingCache(tmp_path, "m", 8)
    rng = np.random.default_rng(9)
    first = {"k-first": rng.standard_normal(8).astype(np.float32)}
    racing = {"k-racing": rng.standard_normal(8).astype(np.float32)}
    cache.put_many(first, defer=True)
    flusher: list[threading.Thread] = []

    class FlushMidPut(dict[str, np.ndarray]):
        def update(self, *args: object, **kwargs: object) -> None:
            if not flusher:  # the apply thread is inside put_many: the flush runs now
                flusher.append(threading.Thread(target=cache.flush))
                flusher[0].start()
                flusher[0].join(timeout=0.5)  # it may wait for this put to finish
            super().update(*args, **kwargs)  # type: ignore[arg-type]

    cache._pending = FlushMidPut(cache._pending)
    cache.put_many(racing, defer=True)
    flusher[0].join()
    cache.flush()
    cold = EmbeddingCache(tmp_path, "m", 8)  # what the table holds, nothing from memory
    assert sorted(cold.get_many(["k-first", "k-racing"])) == ["k-first", "k-racing"]
