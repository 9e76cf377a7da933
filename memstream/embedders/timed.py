"""An embedder that reports its latency to Prometheus (memstream_embed_seconds).

The service wraps whatever model it runs, so the projector's batches and the queries'
single texts are both measured, in one place and without touching either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from memstream import metrics
from memstream.embedders.base import Embedder


class TimedEmbedder(Embedder):
    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.costly = inner.costly

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            metrics.EMBED_SECONDS.observe(time.perf_counter() - started)
            metrics.EMBED_TEXTS.inc(len(texts))

    def embed_one(self, text: str) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.embed_one(text)
        finally:
            metrics.EMBED_SECONDS.observe(time.perf_counter() - started)
            metrics.EMBED_TEXTS.inc()

    def __getattr__(self, name: str) -> Any:  # anything else the model offers
        return getattr(self.inner, name)


def timed(embedder: Embedder) -> Embedder:
    return embedder if isinstance(embedder, TimedEmbedder) else TimedEmbedder(embedder)
