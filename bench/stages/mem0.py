"""Stage 8: Mem0 OSS `Memory` (infer=False, local Qdrant) with the same embedder."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Run, ratio, say, version
from workload import Workload

from memstream.embedders.base import Embedder


# -- 8. Mem0 OSS -----------------------------------------------------------------------------
def projected_vectors(data_dir: Path) -> Callable[[list[str]], Any] | None:
    """text -> vector as memstream projected it (same model, same texts), or None."""
    import lancedb

    root = data_dir / "projections"
    if not (root / "CURRENT").exists():
        return None
    current = (root / "CURRENT").read_text().strip()
    table = lancedb.connect(root / current / "lance").open_table("memories")
    data = table.to_arrow().select(["text", "vector"])
    dim = data.schema.field("vector").type.list_size
    matrix = data["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    index = {t: i for i, t in enumerate(data["text"].to_pylist())}

    def lookup(texts: list[str]) -> Any:
        return matrix[[index[t] for t in texts]]

    return lookup


async def stage_mem0(run: Run, wl: Workload, embedder: Embedder, data_dir: Path) -> None:
    a = run.args
    if version("mem0ai") is None:
        run.notes.append("mem0 skipped: mem0ai is not installed (pip install mem0ai)")
        say("mem0: skipped (mem0ai is not installed)")
        return
    warnings.filterwarnings("ignore", module="mem0")
    warnings.filterwarnings("ignore", message=".*Payload indexes.*")
    from mem0_baseline import run_mem0

    scale = min(a.scale, a.mem0_scale)
    n_adds = min(a.seq_adds, scale)
    corpus = [(m.text, m.entities()) for m in wl.memories[:scale]]
    vectors = None
    with contextlib.suppress(Exception):  # fall back to embedding the preload again
        vectors = projected_vectors(data_dir)
    workdir = Path(tempfile.mkdtemp(prefix="memstream-bench-mem0-"))
    try:
        out = await asyncio.to_thread(
            run_mem0, embedder, workdir, corpus[: scale - n_adds], corpus[scale - n_adds :],
            wl.queries[: a.mem0_queries + 3], progress=say, vectors=vectors,
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if out["llm_calls"]:
        raise RuntimeError(f"mem0 called its LLM {out['llm_calls']} times")
    run.details["mem0"] = {**out, "version": version("mem0ai")}
    run.result["mem0_add_ps"] = out["add_ps"]
    run.result["mem0_search_p50_ms"] = out["search_p50_ms"]
    ours_search = run.details.get("search", {}).get("variants", {}).get("scoped", {}).get("p50_ms")
    # one writer each; memstream's add returns when durable in its log (the projection
    # follows, reads catch up), mem0's when its vector store has the point
    run.result["vs_mem0_add"] = ratio(run.result.get("seq_add_durable_ps"), out["add_ps"])
    run.result["vs_mem0_add_sync"] = ratio(run.result.get("seq_add_ps"), out["add_ps"])
    run.result["vs_mem0_add_concurrent"] = ratio(run.result.get("ingest_eps"), out["add_ps"])
    run.result["vs_mem0_search"] = ratio(out["search_p50_ms"], ours_search)
    if scale != a.scale:
        run.notes.append(
            f"mem0 measured at {scale:,} memories (--mem0-scale), memstream at {a.scale:,}"
        )
    say(f"mem0: add {out['add_ps']}/s, search p50 {out['search_p50_ms']} ms at {scale:,} "
        f"memories; llm calls {out['llm_calls']}")  # fmt: skip
