"""Stage 4: the corpus appended to a file log, bulk projection (cold embedding cache)
and replay (warm cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import Run, corpus_messages, on_batches, rate, say, settings_for
from workload import Workload

from memstream.service import Memstream

MARK = ".bench-corpus.json"
"""Written into a corpus data dir once it is complete, so `--keep DIR --reuse-corpus` can
time reads on it again (e.g. on a quieter machine) without rebuilding it."""


def kept_corpus(data_dir: Path, scale: int, embedder: str) -> dict[str, object] | None:
    """The mark of a complete corpus of this scale and embedder in `data_dir`, or None."""
    try:
        mark = json.loads((data_dir / MARK).read_text())
    except (OSError, ValueError):
        return None
    if mark.get("events") != scale or mark.get("embedder") != embedder:
        return None
    return dict(mark)


# -- 4. corpus: bulk projection and replay ---------------------------------------------------
async def stage_corpus(run: Run, wl: Workload, data_dir: Path) -> None:
    a = run.args
    corpus = wl.memories[: a.scale]
    ms = Memstream(settings_for(data_dir, a.embedder, None))
    await ms.start()
    try:
        start = time.perf_counter()
        for i in range(0, len(corpus), 5000):
            await ms.log.append(await corpus_messages(ms, corpus[i : i + 5000]))
        append_s = time.perf_counter() - start
        say(f"appended {len(corpus):,} events in {append_s:.1f}s; projecting (cold cache) ...")

        done = 0
        start = time.perf_counter()

        def progress(size: int) -> None:
            nonlocal done
            done += size
            if done % 50_000 < size:
                say(f"  projected {done:,}/{len(corpus):,}")

        undo = on_batches(ms, progress)
        await ms.projector.catch_up(timeout_s=24 * 3600)
        project_s = time.perf_counter() - start
        undo()
        say(f"bulk projection: {rate(len(corpus), project_s):,} events/s; replaying (warm) ...")

        start = time.perf_counter()
        replayed = await ms.replay(
            lambda d, t: say(f"  replayed {d:,}/{t:,}") if d % 100_000 < 1000 else None
        )
        replay_s = time.perf_counter() - start
        rows = ms.projector.generation().memories().count_rows()
    finally:
        await ms.close()
    if rows != len(corpus):
        raise RuntimeError(f"corpus: {rows} rows for {len(corpus)} events")
    run.result["replay_eps"] = rate(replayed, replay_s)
    run.result["bulk_project_eps"] = rate(len(corpus), project_s)
    run.details["corpus"] = {
        "events": len(corpus),
        "rows": rows,
        "users": len(wl.users),
        "append_eps": rate(len(corpus), append_s),
        "bulk_project_s": round(project_s, 2),
        "replay_s": round(replay_s, 2),
        "replay_includes": "re-applying every event into a new generation + building the "
        "scalar indexes + compaction (Projector.replay, maintain(force=True))",
    }
    say(f"replay_eps {run.result['replay_eps']:,} ({replayed:,} events in {replay_s:.1f}s)")
    (data_dir / MARK).write_text(
        json.dumps(
            {
                "events": len(corpus),
                "embedder": a.embedder,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **run.details["corpus"],
            }
        )
    )
