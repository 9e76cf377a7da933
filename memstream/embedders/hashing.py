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
    return [f for word in _WORD.findall(text.lower()) for f in _word_features(word)]


def _word_features(word: str) -> list[tuple[str, float]]:
    out = [("w:" + word, _WORD_WEIGHT)]
    padded = f"<{word}>"
    out.extend(("c:" + padded[i : i + 3], _TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
    return out


@lru_cache(maxsize=1 << 16)
def _word_buckets(word: str, dim: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The buckets and signed weights of one word's features, in `_features` order.
    Words repeat far more than texts do: a text costs a cache hit per word."""
    buckets: list[int] = []
    values: list[float] = []
    for feature, weight in _word_features(word):
        bucket, sign = _bucket(feature, dim)
        buckets.append(bucket)
        values.append(sign * weight)
    return tuple(buckets), tuple(values)


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
        dim = self.dim
        buckets: list[int] = []
        values: list[float] = []
        per_row = np.zeros(n, dtype=np.int64)
        for row, text in enumerate(texts):
            before = len(buckets)
            for word in _WORD.findall(text.lower()):
                word_buckets, word_values = _word_buckets(word, dim)
                buckets.extend(word_buckets)
                values.extend(word_values)
            per_row[row] = len(buckets) - before
        # the same (index, weight) sequence as feature by feature, so the same sums
        flat = np.repeat(np.arange(n, dtype=np.int64) * dim, per_row)
        flat += np.asarray(buckets, dtype=np.int64)
        out = np.bincount(
            flat, weights=np.asarray(values, dtype=np.float64), minlength=n * dim
        ).reshape(n, dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] == 0.0
        out = (out / np.where(empty[:, None], 1.0, norms)).astype(np.float32)
        out[empty] = self._empty
        return out
