"""Vectors embedded ahead of need: in background mode, while one batch is written, the
texts of the batch after it are embedded in another thread (see `Projector._read_ahead`),
and the apply takes them from here instead of asking the model again."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from memstream.embedders.base import Embedder
from memstream.events import KeyLookup, MemoryAdded, MemoryUpdated, decode_event, text_hash
from memstream.log.base import LogRecord

AHEAD_ITEMS = 10_000  # vectors embedded ahead and not used yet (a reset reader strands some)


class AheadVectors:
    """text_hash -> vector, filled by the embedding-ahead thread, emptied by the apply."""

    def __init__(self) -> None:
        self._ahead: dict[str, np.ndarray] = {}  # text_hash -> vector
        self._ahead_lock = threading.Lock()

    def embed_records(
        self, records: list[LogRecord], lookup: KeyLookup, embedder: Embedder
    ) -> None:
        texts: dict[str, str] = {}
        for rec in records:
            event = decode_event(rec.value, lookup)
            if isinstance(event, MemoryAdded | MemoryUpdated) and event.text and not event.erased:
                texts.setdefault(text_hash(event.text), event.text)
        with self._ahead_lock:
            todo = {k: t for k, t in texts.items() if k not in self._ahead}
        if not todo:
            return
        vectors = embedder.embed(list(todo.values()))
        with self._ahead_lock:
            if len(self._ahead) > AHEAD_ITEMS:
                self._ahead.clear()
            self._ahead.update(zip(todo, vectors, strict=True))

    def take(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors embedded ahead for `keys`, removed from here."""
        with self._ahead_lock:
            return {k: v for k in keys if (v := self._ahead.pop(k, None)) is not None}
