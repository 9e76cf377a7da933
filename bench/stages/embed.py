"""Stage 1: the embedder alone, sentences/s in calls of 64 (embed_raw_sps)."""

from __future__ import annotations

import time

from harness import Run, p50, rate, ratio, say
from workload import Workload

from memstream.embedders.base import Embedder
from memstream.embedders.onnx import MiniLMOnnxEmbedder


# -- 1. the embedder alone -------------------------------------------------------------------
async def stage_embed(run: Run, embedder: Embedder, wl: Workload) -> None:
    """Sentences/s of the embedder alone, in calls of 64. Run twice, before and after the
    ingest stage, and the faster run kept: the machine is shared, and a denominator measured
    in a quiet moment makes ingest_ratio conservative rather than flattering. MiniLM is
    timed with onnxruntime's thread spinning off (as memstream runs it) and on (its
    default), and the faster kept too: the denominator is the model's best, whichever
    setting that is on this machine at this moment."""
    n = min(len(wl.memories), 1024 if embedder.name.startswith("minilm") else 20_000)
    texts = wl.texts()[:n]
    variants: list[tuple[str, Embedder]] = [("as configured", embedder)]
    if isinstance(embedder, MiniLMOnnxEmbedder):
        twin = MiniLMOnnxEmbedder(
            embedder.intra_op_num_threads,
            embedder.batch_size,
            max_length=embedder.max_length,
            allow_spinning=not embedder.allow_spinning,
        )
        variants.append((f"allow_spinning={twin.allow_spinning}", twin))
    runs = run.details.setdefault("embed", {"sentences": n, "batch": 64, "runs_sps": []})
    for label, model in variants:
        model.embed(texts[:64])  # load the model / warm caches
        start = time.perf_counter()
        for i in range(0, n, 64):
            model.embed(texts[i : i + 64])
        seconds = time.perf_counter() - start
        runs["runs_sps"].append(rate(n, seconds))
        runs.setdefault("runs_by_variant", {}).setdefault(label, []).append(rate(n, seconds))
    run.result["embed_raw_sps"] = max(runs["runs_sps"])
    if "embed_one_p50_ms" not in runs:
        lat = []
        for text in texts[:50]:
            t = time.perf_counter()
            embedder.embed_one(text)
            lat.append((time.perf_counter() - t) * 1000)
        runs["embed_one_p50_ms"] = p50(lat)
    if run.result.get("ingest_eps") is not None:
        run.result["ingest_ratio"] = ratio(run.result["ingest_eps"], run.result["embed_raw_sps"])
    say(
        f"embed_raw_sps {runs['runs_sps'][-len(variants) :]} ({n} texts, batch 64); "
        f"kept {run.result['embed_raw_sps']:,}"
    )
