"""Stage 3: concurrent writers through Memstream.add (ingest_eps, pipeline_eps and
the inline and fire-and-forget variants).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    TENANT,
    Run,
    concurrent_adds,
    count_batches,
    p50,
    p95,
    rate,
    ratio,
    say,
    settings_for,
)
from workload import Memory, Workload

from memstream.service import Memstream


# -- 3. ingest -------------------------------------------------------------------------------
async def measure_ingest(
    label: str,
    embedder_name: str,
    memories: list[Memory],
    writers: int,
    kafka: str | None,
    *,
    background: bool,
    wait: bool = True,
) -> dict[str, Any]:
    """Fresh data dir (and topic): add `memories` with `writers` concurrent tasks, then check
    every one is projected and searchable (one search per writer scope)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"memstream-bench-{label}-"))
    try:
        ms = Memstream(settings_for(tmp, embedder_name, kafka))
        await ms.start(background_projector=background)
        try:
            applied = count_batches(ms)
            ms.embedder.embed(["warm up the model"])
            seconds, lat, added = await concurrent_adds(ms, memories, writers, wait=wait)
            total = seconds
            if not wait:
                start = time.perf_counter()
                await ms.catch_up()
                total += time.perf_counter() - start
            # the fresh tier holds what was applied since its last write (and a due tier may
            # be under way in the background): write it, then count the table's rows
            await ms.projector.flush_tier()
            table = ms.projector.generation().memories()
            rows = table.count_rows() if table is not None else 0
            probe = memories[-1]
            found = await ms.search(probe.text, probe.entities(), tenant=TENANT, top_k=3)
            searchable = bool(found) and found[0].memory == probe.text
        finally:
            await ms.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "memories": len(memories),
        "writers": writers,
        "log": "kafka" if kafka else "file",
        "projector": "background task (as the server runs it)" if background else "inline",
        "wait": wait,
        "seconds": round(total, 2),
        "eps": rate(len(memories), total),
        "add_p50_ms": p50(lat),
        "add_p95_ms": p95(lat),
        "added": added if wait else None,
        "rows": rows,
        "last_memory_searchable": searchable,
        "projector_batches": len(applied),
        "mean_batch": round(statistics.mean(applied), 1) if applied else None,
    }
    if not wait:
        out["append_eps"] = rate(len(memories), seconds)
    if rows != len(memories):
        raise RuntimeError(f"{label}: {rows} rows projected for {len(memories)} adds")
    say(
        f"{label}: {out['eps']:,} memories/s ({len(memories)} by {writers} writers, "
        f"{out['log']} log, {out['projector']}, mean projector batch {out['mean_batch']})"
    )
    return out


async def stage_ingest(run: Run, wl: Workload, kafka: str | None) -> None:
    a = run.args
    quick = a.quick
    n_ingest = a.ingest or (
        (300 if quick else 2000) if a.embedder == "minilm" else (600 if quick else 5000)
    )
    mems = wl.memories[:n_ingest]
    main = await measure_ingest("ingest", a.embedder, mems, a.writers, kafka, background=True)
    run.details["ingest"] = main
    run.result["ingest_eps"] = main["eps"]
    run.result["ingest_ratio"] = ratio(main["eps"], run.result.get("embed_raw_sps"))

    if a.embedder == "hashing":
        pipe = main
    else:
        n_pipe = 600 if quick else 5000
        pipe = await measure_ingest(
            "pipeline", "hashing", wl.memories[:n_pipe], a.writers, kafka, background=True
        )
    run.details["pipeline"] = pipe
    run.result["pipeline_eps"] = pipe["eps"]

    # Variants that explain the headline: the projector inline in the writers' wait (a
    # library user without background_projector), and fire-and-forget adds + one catch_up.
    n_inline = 64 if quick else 256
    inline = await measure_ingest(
        "ingest-inline", a.embedder, wl.memories[:n_inline], a.writers, kafka, background=False
    )
    run.details["ingest_inline"] = inline
    run.result["ingest_inline_eps"] = inline["eps"]
    nowait = await measure_ingest(
        "ingest-nowait", a.embedder, mems, a.writers, kafka, background=False, wait=False
    )
    run.details["ingest_nowait"] = nowait
    run.result["ingest_nowait_eps"] = nowait["eps"]
