"""Before/after figures for the core changes bench/README.md proposes, without editing the core.

    python bench/whatif.py [--n 1000] [--writers 64] [--replay-n 20000] [--profile]

A and B have landed in the core since (e7920f4): on a core that has them, their "after"
equals their "before", which is the check that the landed change is the emulated one.
C and D are still open.

Each proposal is emulated by an in-process patch of this run only (nothing under memstream/,
producers/, projector/ or query/ changes), and measured against the unpatched code in the
same run, on the hashing embedder by default (so the model's cost does not hide the
pipeline's; `--embedder minilm --parts A` shows what A does to ingest_ratio):

A. `writer-outcomes`: `MemoryWriter.add(wait=True)` reads the projector's decision back with
   `MemoryReader.outcomes` -- a synchronous LanceDB query on the events table, on the event
   loop, once per add. Patched: the projector remembers the audit rows of the batches it
   applied (here: a wrapper around `apply_event`) and the writer takes the outcome from
   there, falling back to the query on a miss.
B. `wait-convoy`: without a background projector, every waiting writer runs
   `Projector.step` itself, one after the other under `_alock`, and each step applies only
   what was appended since the previous one (batches of ~1). Patched: a writer whose
   positions another step already covers returns without stepping; a writer that finds a
   step running waits for its progress event instead of queueing for the lock (group
   commit: one step applies everything appended meanwhile).
C. `replay-batch`: `Projector.replay` with `batch_size` 1,000 (the default) vs 5,000 and
   10,000 -- how much of the replay cost is per batch rather than per event.
D. `seq-add`: 40 sequential `add(wait=True)` calls on the replayed corpus (profiled with
   --profile: event loop and apply thread separately).

With --profile, pyinstrument profiles of the unpatched concurrent ingest (event-loop thread)
and of replay (the projector's apply thread) are written to bench/results/profiles/.
Results go to bench/results/whatif.json. No wall-clock assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402
    ORG,
    PROJECT,
    TENANT,
    added_event,
    concurrent_adds,
    p50,
    rate,
    say,
    settings_for,
)
from workload import make_workload  # noqa: E402

import memstream.projector.projector as projector_module  # noqa: E402
from memstream.events import message_of  # noqa: E402
from memstream.projector.projector import covers, required_offsets  # noqa: E402
from memstream.service import Memstream  # noqa: E402

PROFILES = BENCH / "results" / "profiles"
EMBEDDER = ["hashing"]  # --embedder


# -- the emulated changes ------------------------------------------------------------------
RECENT: dict[str, dict[str, Any]] = {}
_original_apply_event = projector_module.apply_event


def _recording_apply_event(state: Any, event: Any, position: Any, decided: Any = None) -> Any:
    row = _original_apply_event(state, event, position, decided)
    RECENT[row["event_id"]] = row
    return row


def patch_outcomes(ms: Memstream) -> None:
    """A: outcomes of freshly applied events come from memory, not from a LanceDB query."""
    projector_module.apply_event = _recording_apply_event
    query = ms.reader.outcomes

    def outcomes(event_ids: list[str]) -> dict[str, dict[str, Any]]:
        if all(e in RECENT for e in event_ids):
            return {e: RECENT.pop(e) for e in event_ids}
        return query(event_ids)

    ms.reader.outcomes = outcomes  # type: ignore[method-assign]


def unpatch_outcomes() -> None:
    projector_module.apply_event = _original_apply_event
    RECENT.clear()


def patch_convoy(ms: Memstream) -> None:
    """B: group commit in Projector.wait_for when no background projector runs."""
    proj = ms.projector
    original = proj.wait_for

    async def wait_for(positions: Any, timeout_s: float = 60.0) -> None:
        if proj._background:
            return await original(positions, timeout_s)
        required = required_offsets(positions)
        deadline = time.monotonic() + timeout_s
        while not covers(proj.checkpoint, required):
            if time.monotonic() > deadline:
                return await original(positions, 0.0)  # raises ProjectionTimeout
            if proj._alock.locked():  # a step is running: ride on it
                proj._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proj._progress.wait(), 0.25)
                continue
            await proj.step(timeout_s=0.05)

    proj.wait_for = wait_for  # type: ignore[method-assign]


# -- measurements ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def fresh(background: bool) -> AsyncIterator[Memstream]:
    tmp = Path(tempfile.mkdtemp(prefix="memstream-whatif-"))
    ms = Memstream(settings_for(tmp, EMBEDDER[0], None))
    await ms.start(background_projector=background)
    try:
        yield ms
    finally:
        await ms.close()
        unpatch_outcomes()
        shutil.rmtree(tmp, ignore_errors=True)


async def ingest(n: int, writers: int, *, background: bool, outcomes: bool, convoy: bool,
                 profile: str | None = None) -> dict[str, Any]:  # fmt: skip
    mems = make_workload(n, queries=0, seed=11).memories
    async with fresh(background) as ms:
        ms.embedder.embed(["warm up the model"])
        if outcomes:
            patch_outcomes(ms)
        if convoy:
            patch_convoy(ms)
        batches: list[int] = []
        original = ms.projector._apply_sync

        def counting(gen: Any, records: Any, cp: Any) -> Any:
            batches.append(len(records))
            return original(gen, records, cp)

        ms.projector._apply_sync = counting  # type: ignore[method-assign]
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="disabled", interval=0.001)
            profiler.start()
        seconds, lat, added = await concurrent_adds(ms, mems, writers, wait=True)
        if profiler is not None:
            profiler.stop()
            PROFILES.mkdir(parents=True, exist_ok=True)
            (PROFILES / f"{profile}.txt").write_text(
                profiler.output_text(unicode=False, color=False, show_all=False)
            )
        assert added == n, (added, n)
    return {
        "eps": rate(n, seconds),
        "add_p50_ms": p50(lat),
        "mean_batch": round(sum(batches) / len(batches), 1) if batches else None,
        "batches": len(batches),
    }


async def replay(n: int, batch_sizes: list[int], profile: bool) -> dict[str, Any]:
    mems = make_workload(n, queries=0, seed=13).memories
    out: dict[str, Any] = {"events": n}
    async with fresh(False) as ms:
        for i in range(0, n, 5000):
            await ms.log.append([message_of(added_event(m)) for m in mems[i : i + 5000]])
        await ms.projector.catch_up()
        for size in batch_sizes:
            ms.projector.batch_size = size
            profiler = None
            if profile and size == batch_sizes[0]:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.001)
                original = ms.projector._apply_sync

                def profiled(*args: Any, _o: Any = original, _p: Any = profiler) -> Any:
                    _p.start()
                    try:
                        return _o(*args)
                    finally:
                        _p.stop()

                ms.projector._apply_sync = profiled  # type: ignore[method-assign]
            start = time.perf_counter()
            await ms.replay()
            seconds = time.perf_counter() - start
            if profiler is not None:
                ms.projector._apply_sync = original  # type: ignore[method-assign]
                PROFILES.mkdir(parents=True, exist_ok=True)
                (PROFILES / "replay_apply.txt").write_text(
                    profiler.output_text(unicode=False, color=False, show_all=False)
                )
            out[f"batch_{size}"] = {"eps": rate(n, seconds), "seconds": round(seconds, 2)}
            say(f"replay batch_size {size}: {out[f'batch_{size}']['eps']:,} events/s")
        ms.projector.batch_size = 1000
        out["seq_add"] = await seq_adds(ms, 40, profile)
        say(f"sequential adds on {n:,} memories: {out['seq_add']}")
    return out


async def seq_adds(ms: Memstream, n: int, profile: bool) -> dict[str, Any]:
    """D: one writer, add(wait=True), on a loaded corpus; where does one add's time go?"""
    mems = make_workload(n, queries=0, seed=17).memories
    original = ms.projector._apply_sync
    apply_s: list[float] = []
    apply_profiler = loop_profiler = None
    if profile:
        from pyinstrument import Profiler

        apply_profiler = Profiler(interval=0.0005, async_mode="disabled")
        loop_profiler = Profiler(async_mode="disabled", interval=0.0005)

    def timed(*args: Any) -> Any:
        if apply_profiler is not None:
            apply_profiler.start()
        t = time.perf_counter()
        try:
            return original(*args)
        finally:
            apply_s.append(time.perf_counter() - t)
            if apply_profiler is not None:
                apply_profiler.stop()

    ms.projector._apply_sync = timed  # type: ignore[method-assign]
    if loop_profiler is not None:
        loop_profiler.start()
    lat = []
    for m in mems:
        t = time.perf_counter()
        await ms.add(m.text, tenant=TENANT, **m.entities())
        lat.append((time.perf_counter() - t) * 1000)
    if loop_profiler is not None and apply_profiler is not None:
        loop_profiler.stop()
        PROFILES.mkdir(parents=True, exist_ok=True)
        (PROFILES / "seq_add_loop.txt").write_text(
            loop_profiler.output_text(unicode=False, color=False, show_all=False)
        )
        (PROFILES / "seq_add_apply.txt").write_text(
            apply_profiler.output_text(unicode=False, color=False, show_all=False)
        )
    ms.projector._apply_sync = original  # type: ignore[method-assign]
    return {
        "adds": n,
        "p50_ms": p50(lat),
        "adds_per_s": rate(n, sum(lat) / 1000),
        "apply_ms_per_add": round(sum(apply_s) * 1000 / n, 2),
        "apply_batches": len(apply_s),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    n, w = args.n, args.writers
    parts = set(args.parts.split(","))
    if "A" in parts and EMBEDDER[0] != "hashing":
        from memstream.embedders import get_embedder

        emb = get_embedder(EMBEDDER[0])
        texts = [m.text for m in make_workload(512, queries=0, seed=11).memories]
        emb.embed(texts[:64])
        t = time.perf_counter()
        for i in range(0, len(texts), 64):
            emb.embed(texts[i : i + 64])
        res["embed_sps"] = rate(len(texts), time.perf_counter() - t)
        say(f"{EMBEDDER[0]} alone: {res['embed_sps']} sentences/s (calls of 64)")
    if "A" in parts:
        say(f"ingest, background projector, {n} adds by {w} writers (file log, {EMBEDDER[0]})")
        res["background_before"] = await ingest(n, w, background=True, outcomes=False, convoy=False,
                                                profile="ingest_loop" if args.profile else None)  # fmt: skip
        say(f"  before: {res['background_before']}")
        res["background_after_A"] = await ingest(n, w, background=True, outcomes=True, convoy=False)
        say(f"  after A (outcomes from memory): {res['background_after_A']}")
    if "B" in parts:
        n_inline = max(64, n // 4)
        say(f"ingest, inline projector, {n_inline} adds by {w} writers")
        res["inline_before"] = await ingest(
            n_inline, w, background=False, outcomes=False, convoy=False
        )
        say(f"  before: {res['inline_before']}")
        res["inline_after_B"] = await ingest(
            n_inline, w, background=False, outcomes=False, convoy=True
        )
        say(f"  after B (group commit in wait_for): {res['inline_after_B']}")
        res["inline_after_AB"] = await ingest(
            n_inline, w, background=False, outcomes=True, convoy=True
        )
        say(f"  after A+B: {res['inline_after_AB']}")
    if "C" in parts:
        say(f"replay of {args.replay_n:,} events with a warm cache")
        res["replay"] = await replay(args.replay_n, [1000, 5000, 10000], args.profile)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--replay-n", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--parts", default="A,B,C", help="which of A,B,C(+D) to run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "whatif.json")
    args = parser.parse_args()
    EMBEDDER[0] = args.embedder
    load = os.getloadavg()
    res = asyncio.run(main_async(args))
    record = {
        "benchmark": "whatif",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "n": args.n,
            "writers": args.writers,
            "replay_n": args.replay_n,
            "embedder": args.embedder,
            "parts": args.parts,
            "log": "file",
            "tenant": [ORG, PROJECT],
        },  # fmt: skip
        "results": res,
        "loadavg_start": [round(x, 2) for x in load],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
