"""The Embedder interface: texts in, L2-normalised float32 vectors out, in batches.

Embedding is the dominant cost of the pipeline, so the interface is batch-first and the
projector caches results by (model, sha256(text)); `name` is the cache's model key and must
change whenever the vectors would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    name: str
    """Stable id of the model and its settings, e.g. 'minilm-l6-v2-int8' or 'hashing-384'."""
    dim: int
    costly: bool = True
    """Whether the projector should embed ahead (overlapping the model with its writes)."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, each row L2-normalised."""

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
