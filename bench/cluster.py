"""Scoped reads on a memories table in arrival order against the same table in scope order,
side by side in one run (issue 16, section 1; projector/cluster.py).

    python bench/cluster.py [--scale 100000] [--queries 40] [--embedder hashing]

Builds one corpus (`--scale` memories of scale/200 users, arriving interleaved, as in
bench/run.py) on the file log and projects it; copies the data directory; replays one copy
with MEMSTREAM_CLUSTER=0 (arrival order: the baseline) and the other with clustering on
(scope order); then times the same searches ({"user_id": X}, with "agent_id": "*", and a
list of two users) and get_all calls on both, taking turns, and checks that both answer
exactly the same ids. Prints p50s and the ratio clustered / arrival order, and writes
bench/results/cluster.json. Nothing asserts on wall-clock numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import TENANT, TOP_K, corpus_messages, p50, ratio, say, settings_for  # noqa: E402
from stages.search import search_filters  # noqa: E402
from workload import make_workload  # noqa: E402

from memstream.service import Memstream  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.json"


async def build(data_dir: Path, a: argparse.Namespace, wl: Any) -> None:
    ms = Memstream(settings_for(data_dir, a.embedder, None))
    await ms.start()
    try:
        corpus = wl.memories[: a.scale]
        for i in range(0, len(corpus), 5000):
            await ms.log.append(await corpus_messages(ms, corpus[i : i + 5000]))
        say(f"appended {len(corpus):,} events; projecting ...")
        await ms.projector.catch_up(timeout_s=24 * 3600)
    finally:
        await ms.close()


async def replay(data_dir: Path, a: argparse.Namespace, clustered: bool) -> float:
    os.environ["MEMSTREAM_CLUSTER"] = "1" if clustered else "0"
    ms = Memstream(settings_for(data_dir, a.embedder, None))
    await ms.start()
    try:
        start = time.perf_counter()
        await ms.replay()
        return time.perf_counter() - start
    finally:
        await ms.close()
        os.environ.pop("MEMSTREAM_CLUSTER", None)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--embedder", default="hashing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    warm = 3
    wl = make_workload(a.scale, queries=a.queries + warm, users=max(20, a.scale // 200))
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        arrival, scoped = Path(tmp) / "arrival", Path(tmp) / "scoped"
        await build(arrival, a, wl)
        shutil.copytree(arrival, scoped, symlinks=True)
        replay_s = {
            "arrival": await replay(arrival, a, clustered=False),
            "scoped": await replay(scoped, a, clustered=True),
        }
        say(f"replayed: arrival order {replay_s['arrival']:.1f}s, scope order "
            f"{replay_s['scoped']:.1f}s; timing reads ...")  # fmt: skip
        stores = {name: Memstream(settings_for(d, a.embedder, None))
                  for name, d in (("arrival", arrival), ("scoped", scoped))}  # fmt: skip
        for ms in stores.values():
            await ms.start()
        times: dict[str, dict[str, list[float]]] = {}
        mismatches = 0
        try:
            for i, (query, user) in enumerate(wl.queries[: a.queries + warm]):
                other = wl.queries[(i + 1) % len(wl.queries)][1]
                for variant, filters in search_filters(user, other).items():
                    for kind in ("search", "get_all"):
                        key = f"{kind}_{variant}"
                        order = list(stores) if i % 2 == 0 else list(reversed(stores))
                        answers: dict[str, list[str]] = {}
                        for name in order:
                            ms = stores[name]
                            t = time.perf_counter()
                            if kind == "search":
                                found = await ms.search(query, filters, tenant=TENANT,
                                                        top_k=TOP_K, consistent=False)  # fmt: skip
                            else:
                                page = await ms.get_all(filters, tenant=TENANT, page_size=1000,
                                                        consistent=False)  # fmt: skip
                                found = page.results
                            took = (time.perf_counter() - t) * 1000
                            answers[name] = sorted(m.id for m in found)
                            if i >= warm:
                                times.setdefault(key, {}).setdefault(name, []).append(took)
                        mismatches += answers["arrival"] != answers["scoped"]
        finally:
            for ms in stores.values():
                await ms.close()
    out: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": a.scale,
        "users": max(20, a.scale // 200),
        "queries": a.queries,
        "embedder": a.embedder,
        "replay_s": {k: round(v, 1) for k, v in replay_s.items()},
        "p50_ms": {k: {n: p50(v) for n, v in d.items()} for k, d in times.items()},
        "scoped_vs_arrival": {
            k: ratio(p50(d["scoped"]), p50(d["arrival"])) for k, d in times.items()
        },
        "mismatches": mismatches,
        "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.perf_counter() - started, 1),
    }
    for k in times:
        say(f"{k}: arrival order p50 {out['p50_ms'][k]['arrival']} ms, scope order "
            f"{out['p50_ms'][k]['scoped']} ms, ratio {out['scoped_vs_arrival'][k]}")  # fmt: skip
    say(f"answers that differed: {mismatches}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    say(f"wrote {a.out}")


if __name__ == "__main__":
    asyncio.run(main())
