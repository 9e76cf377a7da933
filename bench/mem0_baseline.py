"""Mem0 OSS (`mem0ai`) on the benchmark workload, with memstream's own embedder plugged in.

`Memory.from_config` is given:

* the embedder: memstream's (MiniLM int8 ONNX or hashing) wrapped in a subclass of mem0's
  `EmbeddingBase`, so both systems spend exactly the same time per text in the model. mem0's
  config validator only accepts its own provider names, so the Memory is built with the
  `openai` embedder provider and a dummy key (constructing the OpenAI client makes no network
  call) and `memory.embedding_model` is then replaced by the wrapper before anything is added;
* the vector store: mem0's default, Qdrant, as a local in-process `QdrantClient(":memory:")`
  (no server; the in-memory mode is the fastest local mode: path mode pickles every point
  into SQLite and loaded 20k points at ~110/s here); the history store: SQLite in `workdir`;
* an LLM config that is never used: `add(..., infer=False)` stores messages verbatim. The LLM
  object's `generate_response` is replaced by a tripwire that counts calls and raises, and the
  count is reported (`llm_calls`, must be 0) so the run proves no LLM was involved.

Telemetry is switched off (MEM0_TELEMETRY=False) before mem0 is imported: no network at all.

Measured: sequential `add` (one memory per call, as the issue's orientation figures) and
`search(query, filters={"user_id": X}, top_k=10)` latency. For scales above `direct_adds`, the
store is first bulk-loaded through mem0's own `vector_store.insert` with the payload `add`
would write (same vectors from the same embedder, in batches of 1,000), so the timed adds and
searches run against `scale` memories without spending an hour on sequential adds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MEM0_TELEMETRY", "False")


class LlmTripwire:
    """Stands in for mem0's LLM: counts calls and refuses them."""

    def __init__(self) -> None:
        self.calls = 0

    def generate_response(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise RuntimeError("the benchmark's mem0 LLM was called; infer=False must not call it")


def build_memory(embedder: Any, workdir: Path) -> tuple[Any, LlmTripwire]:
    """A mem0 `Memory` on local Qdrant in `workdir`, embedding with memstream's `embedder`."""
    from mem0 import Memory
    from mem0.embeddings.base import EmbeddingBase
    from qdrant_client import QdrantClient

    class MemstreamEmbedding(EmbeddingBase):
        """mem0's embedder interface over a memstream Embedder (same model, same vectors)."""

        def __init__(self) -> None:
            super().__init__(None)
            self.config.embedding_dims = embedder.dim

        def embed(self, text: Any, memory_action: Any = None) -> list[float]:
            if isinstance(text, list):  # mem0 passes parsed messages as one string; be safe
                text = " ".join(str(t) for t in text)
            vec: list[float] = embedder.embed_one(str(text)).tolist()
            return vec

        def embed_batch(self, texts: Any, memory_action: str = "add") -> list[list[float]]:
            rows: list[list[float]] = embedder.embed([str(t) for t in texts]).tolist()
            return rows

    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": "bench",
                "embedding_model_dims": embedder.dim,
                "client": QdrantClient(location=":memory:"),
            },
        },
        "embedder": {
            "provider": "openai",
            "config": {"api_key": "sk-bench-not-used", "embedding_dims": embedder.dim},
        },
        "llm": {
            "provider": "openai",
            "config": {"api_key": "sk-bench-not-used", "model": "never-called"},
        },
        "history_db_path": str(workdir / "history.db"),
    }
    for name in ("mem0", "mem0.memory.main", "mem0.vector_stores.qdrant"):
        logging.getLogger(name).setLevel(logging.ERROR)
    memory = Memory.from_config(config)
    memory.embedding_model = MemstreamEmbedding()
    tripwire = LlmTripwire()
    memory.llm = tripwire
    return memory, tripwire


def _payload(text: str, entities: dict[str, str]) -> dict[str, Any]:
    """What mem0's `_create_memory` stores for an `infer=False` add of one user message."""
    now = datetime.now(UTC).isoformat()
    return {
        **entities,
        "role": "user",
        "data": text,
        "hash": hashlib.md5(text.encode()).hexdigest(),
        "created_at": now,
        "updated_at": now,
        "text_lemmatized": text,  # mem0's lemmatizer falls back to the text without spaCy
    }


def run_mem0(
    embedder: Any,
    workdir: Path,
    preload: list[tuple[str, dict[str, str]]],
    timed_adds: list[tuple[str, dict[str, str]]],
    queries: list[tuple[str, str]],
    *,
    warmup: int = 3,
    progress: Callable[[str], None] = print,
    vectors: Callable[[list[str]], Any] | None = None,
) -> dict[str, Any]:
    """Bulk-load `preload`, time sequential adds of `timed_adds`, then time `queries`.

    `vectors` gives the preload's vectors (e.g. read back from memstream's projection of the
    same texts, to spare a second pass of the model); by default `embedder.embed`."""
    memory, tripwire = build_memory(embedder, workdir)
    store = memory.vector_store
    t0 = time.perf_counter()
    for start in range(0, len(preload), 1000):
        chunk = preload[start : start + 1000]
        vecs = (vectors or embedder.embed)([t for t, _ in chunk])
        store.insert(
            vectors=np.asarray(vecs).tolist(),
            payloads=[_payload(t, e) for t, e in chunk],
            ids=[str(uuid.uuid4()) for _ in chunk],
        )
        if start and start % 20_000 == 0:
            progress(f"mem0 preload {start:,}/{len(preload):,}")
    preload_s = time.perf_counter() - t0

    add_ms: list[float] = []
    for text, entities in timed_adds:
        t = time.perf_counter()
        out = memory.add([{"role": "user", "content": text}], infer=False, **entities)
        add_ms.append((time.perf_counter() - t) * 1000)
        assert out["results"] and out["results"][0]["event"] == "ADD", out
    add_total_s = sum(add_ms) / 1000

    search_ms: list[float] = []
    hits: list[int] = []
    for i, (query, user) in enumerate(queries):
        t = time.perf_counter()
        res = memory.search(query, filters={"user_id": user}, top_k=10)
        dt = (time.perf_counter() - t) * 1000
        if i >= warmup:
            search_ms.append(dt)
            hits.append(len(res["results"]))
    total = len(preload) + len(timed_adds)
    count = store.client.count(collection_name=store.collection_name).count
    return {
        "scale": total,
        "stored": count,
        "preload_s": round(preload_s, 2),
        "timed_adds": len(timed_adds),
        "add_ps": round(len(timed_adds) / add_total_s, 2) if add_ms else None,
        "add_p50_ms": round(statistics.median(add_ms), 3) if add_ms else None,
        "search_p50_ms": round(statistics.median(search_ms), 3) if search_ms else None,
        "search_p95_ms": round(percentile(search_ms, 0.95), 3) if search_ms else None,
        "search_mean_hits": round(statistics.mean(hits), 2) if hits else None,
        "llm_calls": tripwire.calls,
        "vector_store": "qdrant local, in-memory (QdrantClient(':memory:'), no server)",
        "embedder": getattr(embedder, "name", type(embedder).__name__),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
