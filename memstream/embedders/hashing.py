"""A model-free embedder: words and character trigrams hashed into signed buckets.

For tests, for development without the ONNX model, and as a lexical fallback. Vectors are
deterministic across processes and machines (blake2b, never Python's salted ``hash()``), so
they may be cached and stored like any model's. They capture shared words, not meaning.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from memstream.embedders.base import Embedder

_WORD = re.compile(r"\w+")
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5


@lru_cache(maxsize=1 << 16)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """(bucket index, sign) of one feature: the first 8 bytes of its blake2b digest."""
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


def _features(text: str) -> list[tuple[str, float]]:
    """Lowercase word tokens, plus the character trigrams of each word padded with '<' '>'."""
    out: list[tuple[str, float]] = []
    for word in _WORD.findall(text.lower()):
        out.append(("w:" + word, _WORD_WEIGHT))
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            out.append(("c:" + padded[i : i + 3], _TRIGRAM_WEIGHT))
    return out


def _fallback_vector(dim: int) -> np.ndarray:
    """The fixed unit vector of a text with no features (empty, whitespace, punctuation only):
    a pseudo-random ±1/sqrt(dim) pattern, so it is nearly orthogonal to real texts."""
    digest = hashlib.blake2b(b"memstream.hashing.empty", digest_size=64).digest()
    bits = np.unpackbits(np.frombuffer(digest * (dim // 512 + 1), dtype=np.uint8))[:dim]
    vec = np.where(bits == 1, 1.0, -1.0).astype(np.float32)
    return vec / np.float32(np.sqrt(dim))


class HashingEmbedder(Embedder):
    """Feature hashing of lowercase words (weight 1) and their character trigrams (weight 0.5)
    into ``dim`` signed buckets, L2-normalised. Stateless and thread-safe."""

    costly = False  # microseconds a text: embedding ahead would cost more than it saves

    def __init__(self, dim: int = 384) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 8:
            raise ValueError(f"HashingEmbedder dim must be an int >= 8, got {dim!r}")
        self.dim = dim
        self.name = f"hashing-{dim}"
        self._empty = _fallback_vector(dim)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_one() for one text")
        n = len(texts)
        flat_index: list[int] = []
        values: list[float] = []
        dim = self.dim
        for row, text in enumerate(texts):
            base = row * dim
            for feature, weight in _features(text):
                bucket, sign = _bucket(feature, dim)
                flat_index.append(base + bucket)
                values.append(sign * weight)
        out = np.bincount(
            np.asarray(flat_index, dtype=np.int64),
            weights=np.asarray(values, dtype=np.float64),
            minlength=n * dim,
        ).reshape(n, dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] == 0.0
        out = (out / np.where(empty[:, None], 1.0, norms)).astype(np.float32)
        out[empty] = self._empty
        return out
