"""One benchmark scenario in a process of its own, to profile or to time a change.

    python bench/scenario.py ingest --n 8000 --writers 256 [--kafka HOST:PORT] [--embedder minilm]
    python bench/scenario.py ingest --no-wait ...   # fire-and-forget adds, then catch up
    python bench/scenario.py seq-add --corpus 20000 --n 300 [--no-wait]
    python bench/scenario.py replay --corpus 100000
    py-spy record -r 200 --threads -o ingest.svg -- python bench/scenario.py ingest --n 8000

`run.py` measures everything in one run and keeps the figures; this runs one thing so a
profiler sees only it (py-spy: `--threads`, and leave out the import phase with
`--format raw` and a filter, see bench/README.md). It prints one line of figures. A fresh
temporary data dir every time; `--kafka` uses a running broker (`scripts/kafka-local start`),
otherwise the file log.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import (  # noqa: E402
    TENANT,
    concurrent_adds,
    corpus_messages,
    count_batches,
    p50,
    settings_for,
)
from workload import make_workload  # noqa: E402

from memstream.service import Memstream  # noqa: E402


async def load_corpus(ms: Memstream, memories: list[Any]) -> float:
    """Append `memories` as the sealed MemoryAdded events `add` would append, and project
    them; returns events/s."""
    for i in range(0, len(memories), 5000):
        await ms.log.append(await corpus_messages(ms, memories[i : i + 5000]))
    start = time.perf_counter()
    await ms.projector.catch_up(timeout_s=24 * 3600)
    return len(memories) / (time.perf_counter() - start)


async def ingest(args: argparse.Namespace, data_dir: Path) -> str:
    wl = make_workload(args.n)
    ms = await Memstream(settings_for(data_dir, args.embedder, args.kafka)).start(
        background_projector=True
    )
    try:
        sizes = count_batches(ms)
        ms.embedder.embed(["warm up the model"])
        start = time.perf_counter()
        seconds, lat, _ = await concurrent_adds(
            ms, wl.memories, args.writers, wait=not args.no_wait
        )
        await ms.catch_up()
        total = time.perf_counter() - start
    finally:
        await ms.close()
    return (
        f"ingest: {args.n / total:,.0f} memories/s end to end (appends {args.n / seconds:,.0f}/s), "
        f"add p50 {p50(lat)} ms, {len(sizes)} batches of {sum(sizes) / max(1, len(sizes)):.0f}"
    )


async def seq_add(args: argparse.Namespace, data_dir: Path) -> str:
    wl = make_workload(args.corpus + args.n)
    ms = await Memstream(settings_for(data_dir, args.embedder, None)).start()
    try:
        await load_corpus(ms, wl.memories[: args.corpus])
        lat = []
        start = time.perf_counter()
        for m in wl.memories[args.corpus :]:
            t = time.perf_counter()
            await ms.add(m.text, tenant=TENANT, **m.entities(), wait=not args.no_wait)
            lat.append((time.perf_counter() - t) * 1000)
        await ms.catch_up()
        total = time.perf_counter() - start
    finally:
        await ms.close()
    return f"seq-add: {args.n / total:,.1f} memories/s until searchable, add p50 {p50(lat)} ms"


async def replay(args: argparse.Namespace, data_dir: Path) -> str:
    wl = make_workload(args.corpus)
    ms = await Memstream(settings_for(data_dir, args.embedder, None)).start()
    try:
        bulk = await load_corpus(ms, wl.memories)
        start = time.perf_counter()
        events = await ms.replay()
        seconds = time.perf_counter() - start
    finally:
        await ms.close()
    return f"replay: {events / seconds:,.0f} events/s (bulk projection {bulk:,.0f} events/s)"


SCENARIOS = {"ingest": ingest, "seq-add": seq_add, "replay": replay}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--n", type=int, default=5000, help="memories added")
    parser.add_argument("--corpus", type=int, default=20_000, help="memories loaded first")
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--no-wait", action="store_true", help="add(wait=False)")
    parser.add_argument("--embedder", default="hashing")
    parser.add_argument("--kafka", default=None, help="bootstrap servers of a running broker")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix=f"memstream-{args.scenario}-"))
    try:
        print(asyncio.run(SCENARIOS[args.scenario](args, data_dir)), flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
