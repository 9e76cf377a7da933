"""Stage: time from append to searchable under a steady open-loop stream (issue 16, section 4).

Closed-loop writers that each wait for their own memory measure their own latency, not the
system's: a slow step slows the offered load too. Here the load does not wait:

1. **capacity**: `capacity_n` sealed MemoryAdded events are appended to a fresh topic and a
   fresh projection catches up with them (`Projector.catch_up`): events/s the projector
   applies on this machine now (`details.visibility.capacity_eps`).
2. **the stream**: a server-like process (this one: `Memstream` with the background
   projector, as `memstream serve` runs it) on another fresh topic, and `--visibility-writers`
   writer processes, each adding memories (`Memstream.add(wait=False)`) on a fixed schedule
   (`rate / writers` adds/s each, issued on time whether or not earlier adds have returned)
   for `seconds` (60, or 5 at --quick), together 50% of the measured capacity (or a fixed
   `--visibility-rate`, to compare two builds at the same offered load on a noisy machine).
3. Each writer records when it called `add` for each event id; the projector process
   records when each applied batch (its log positions) was written to the projection, i.e.
   searchable; afterwards the log is read once to map positions to event ids.
   `visible_p50_ms` / `_p95` / `_p99`: from the `add` call to searchable, over every event
   of the stream (clock: `time.time()`, one machine). `details.visibility.batch_sizes`:
   the projector's batches (p50, max; `direct`: written straight to the tables by
   `Projector._apply_sync`, without the fresh tier, rather than decided into it).
4. Meanwhile one more writer in the projector process adds with `wait=True`, one add after
   another: `visible_waiting_writer_p50_ms` (and p95), the latency a synchronous client sees
   under that load.

With MEMSTREAM_BENCH_VISIBILITY_TRACE=FILE the stage also writes a timeline there (JSON):
per batch its end time, size, the earliest add call among its events and whether it was
direct; per background write of the fresh tier (and per table maintenance, size -1) its
start, end and events -- where the tail came from (bench/README.md, round 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # a writer process: bench/ on sys.path like run.py's stages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (  # noqa: E402
    ORG,
    PROJECT,
    TENANT,
    Run,
    corpus_messages,
    p50,
    p95,
    percentile,
    say,
)
from workload import Workload, make_workload  # noqa: E402

from memstream.events import decode_event  # noqa: E402
from memstream.service import Memstream  # noqa: E402
from memstream.settings import Settings  # noqa: E402

WAITING_ADDS = 3000  # at most, for the one waiting writer
TRACE_ENV = "MEMSTREAM_BENCH_VISIBILITY_TRACE"


def texts(n: int) -> Workload:
    """The stage's memories: the same first n in every process (fixed users, fixed seed)."""
    return make_workload(n, queries=1, users=50)


def settings(data_dir: Path, kafka: str, topic: str, master_key: str) -> Settings:
    return Settings(
        data_dir=data_dir, kafka_bootstrap=kafka, embedder="hashing", org_id=ORG,
        project_id=PROJECT, topic=topic, partitions=3, master_key=master_key,
    )  # fmt: skip


async def capacity(base: Settings, wl: Workload, n: int) -> float:
    """Events/s the projector applies: `n` sealed adds appended, then one catch-up."""
    async with Memstream(replace(base, topic=f"vis-cap-{uuid.uuid4().hex[:8]}")) as ms:
        for i in range(0, n, 1000):
            await ms.log.append(await corpus_messages(ms, wl.memories[i : min(n, i + 1000)]))
        start = time.perf_counter()
        await ms.projector.catch_up(timeout_s=600)
        return n / (time.perf_counter() - start)


# -- a writer process ------------------------------------------------------------------------
async def write_open_loop(args: argparse.Namespace) -> None:
    """Add memories at `args.rate`/s for `args.seconds`, on schedule; print the call times."""
    wl = texts(args.offset + int(args.rate * args.seconds) + 10)
    memories = wl.memories[args.offset :]
    base = settings(Path(args.data_dir), args.kafka, args.topic, args.master_key)
    async with Memstream(base) as ms:
        await ms.add("warm up", user_id=f"warm-{args.offset}", tenant=TENANT, wait=False)
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        calls: dict[str, float] = {}
        errors = 0
        pending: set[asyncio.Task[None]] = set()

        async def one(m: Any) -> None:
            nonlocal errors
            called = time.time()
            try:
                [result] = await ms.add(m.text, tenant=TENANT, **m.entities(), wait=False)
            except Exception:  # counted: an add the stream lost is not a latency
                errors += 1
                return
            calls[result.event_id] = called

        n = int(args.rate * args.seconds)
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(memories[i]))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        lateness = time.monotonic() - t0 - n / args.rate
    Path(args.out).write_text(json.dumps({"calls": calls, "errors": errors,
                                          "late_s": round(lateness, 3)}))  # fmt: skip


# -- the stage -------------------------------------------------------------------------------
async def stage_visibility(run: Run, wl: Workload, kafka: str | None) -> None:
    a = run.args
    out: dict[str, Any] = {}
    run.details["visibility"] = out
    if kafka is None:
        out["kafka"] = "not measured: no broker in this run"
        return
    seconds = 5.0 if a.quick else 60.0
    writers = a.visibility_writers
    cap_n = 2000 if a.quick else 10_000
    vw = texts(cap_n + WAITING_ADDS)
    master_key = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="memstream-visibility-") as tmp:
        base = settings(Path(tmp) / "server", kafka, f"vis-{uuid.uuid4().hex[:8]}", master_key)
        cap = await capacity(replace(base, data_dir=Path(tmp) / "capacity"), vw, cap_n)
        rate = a.visibility_rate if a.visibility_rate else cap * 0.5
        out.update(capacity_eps=round(cap, 1), rate_eps=round(rate, 1), seconds=seconds,
                   writer_processes=writers)  # fmt: skip
        say(f"visibility: projector capacity {cap:,.0f} events/s; streaming {rate:,.0f} adds/s "
            f"from {writers} processes for {seconds:.0f} s")  # fmt: skip
        ms = Memstream(base)
        await ms.start(background_projector=True)
        applied: list[tuple[float, list[tuple[int, int]]]] = []
        direct: set[int] = set()  # indexes in `applied` of batches written without the tier
        apply = ms.projector._apply_sync

        def observed(gen: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
            result = apply(gen, records, *args, **kwargs)
            direct.add(len(applied))
            applied.append((time.time(), [(r.position.partition, r.position.offset)
                                          for r in records]))  # fmt: skip
            return result

        apply_tier = ms.projector._apply_tier_sync

        def observed_tier(gen: Any, tier: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
            # with the fresh tier (projector/tier.py) a batch is searchable once the tier
            # has applied and published it, before it is flushed to the tables
            result = apply_tier(gen, tier, records, *args, **kwargs)
            applied.append((time.time(), [(r.position.partition, r.position.offset)
                                          for r in records]))  # fmt: skip
            return result

        writes: list[tuple[float, float, int]] = []
        if os.environ.get(TRACE_ENV):
            _trace_writes(ms, writes)
        ms.projector._apply_sync = observed  # type: ignore[method-assign]
        ms.projector._apply_tier_sync = observed_tier  # type: ignore[method-assign]
        procs: list[subprocess.Popen[str]] = []
        outs = [Path(tmp) / f"writer-{i}.json" for i in range(writers)]
        per_writer = int(rate * seconds / writers) + 10
        try:
            for i in range(writers):
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--kafka", kafka, "--topic", base.topic,
                     "--master-key", master_key, "--data-dir", str(Path(tmp) / f"w{i}"),
                     "--rate", str(rate / writers), "--seconds", str(seconds),
                     "--offset", str(cap_n + WAITING_ADDS + i * per_writer),
                     "--out", str(outs[i])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                ))  # fmt: skip
            for p in procs:  # every writer has opened the log and added once
                assert p.stdout is not None
                line = await asyncio.to_thread(p.stdout.readline)
                if line.strip() != "ready":
                    raise RuntimeError(f"a writer process did not start: {line!r}")
            await ms.catch_up()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            waiting: list[float] = []
            deadline = time.monotonic() + seconds
            mine = vw.memories[cap_n:]
            k = 0
            while time.monotonic() < deadline and k < len(mine):
                m, k = mine[k], k + 1
                t = time.perf_counter()
                await ms.add(m.text, tenant=TENANT, **m.entities(), wait=True)
                waiting.append((time.perf_counter() - t) * 1000)
            for p in procs:
                if await asyncio.to_thread(p.wait, seconds * 4 + 120) != 0:
                    raise RuntimeError(f"a writer process exited with {p.returncode}")
            await ms.catch_up()
            calls: dict[str, float] = {}
            errors = late = 0.0
            for path in outs:
                data = json.loads(path.read_text())
                calls.update(data["calls"])
                errors += data["errors"]
                late = max(late, data["late_s"])
            ids = await event_ids(ms)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            await ms.close()
    when = {pos: t for t, positions in applied for pos in positions}
    if trace := os.environ.get(TRACE_ENV):
        added = {pos: calls[eid] for pos, eid in ids.items() if eid in calls}
        batches = [(t, len(ps), min((added.get(p, t) for p in ps), default=t), k in direct)
                   for k, (t, ps) in enumerate(applied)]  # fmt: skip
        Path(trace).write_text(json.dumps({"batches": batches, "writes": writes}))
    sizes = sorted(len(ps) for _, ps in applied)
    latencies = [(when[pos] - calls[eid]) * 1000 for pos, eid in ids.items()
                 if eid in calls and pos in when]  # fmt: skip
    if len(latencies) < len(calls):
        run.notes.append(f"visibility: {len(calls) - len(latencies)} of {len(calls)} streamed "
                         "adds were not seen applied")  # fmt: skip
    run.result["visible_p50_ms"] = p50(latencies)
    run.result["visible_p95_ms"] = p95(latencies)
    run.result["visible_p99_ms"] = round(percentile(latencies, 0.99), 3) if latencies else None
    run.result["visible_waiting_writer_p50_ms"] = p50(waiting)
    out.update(
        streamed=len(calls), measured=len(latencies), errors=int(errors),
        writers_late_s=late, waiting_writer_adds=len(waiting),
        visible_waiting_writer_p95_ms=p95(waiting),
        offered_eps=round(len(calls) / seconds, 1),
        projector_batches=len(applied),
        batch_sizes={"p50": sizes[len(sizes) // 2] if sizes else None,
                     "max": sizes[-1] if sizes else None, "direct": len(direct)},
        what="open loop: adds issued on a fixed schedule by writer processes at 50% of the "
        "projector's measured capacity; append call -> applied to the projection (searchable)",
    )  # fmt: skip
    say(f"visibility: p50 {run.result['visible_p50_ms']} ms, p95 {run.result['visible_p95_ms']} "
        f"ms, p99 {run.result['visible_p99_ms']} ms over {len(latencies):,} adds; one waiting "
        f"writer p50 {run.result['visible_waiting_writer_p50_ms']} ms")  # fmt: skip


def _trace_writes(ms: Memstream, writes: list[tuple[float, float, int]]) -> None:
    """Record each background write of the fresh tier (start, end, events) and each
    table maintenance (events -1) of `ms`'s projector into `writes`."""
    projector = ms.projector
    write, maintain = projector._write_frozen, projector.maintain

    def traced_write(gen: Any, tier: Any) -> Any:
        t0 = time.time()
        try:
            return write(gen, tier)
        finally:
            writes.append((t0, time.time(), len(tier.eids)))

    def traced_maintain(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return maintain(*args, **kwargs)
        finally:
            writes.append((t0, time.time(), -1))

    projector._write_frozen = traced_write  # type: ignore[method-assign]
    projector.maintain = traced_maintain  # type: ignore[method-assign]


async def event_ids(ms: Memstream) -> dict[tuple[int, int], str]:
    """Log position -> event id of every event in `ms`'s log."""
    end = await ms.log.end_offsets()
    reader = await ms.log.reader()
    out: dict[tuple[int, int], str] = {}
    try:
        while sum(end.values()) > len(out):
            batch = await reader.next_batch(5000, timeout_s=1.0)
            if not batch:
                break
            for r in batch:
                out[(r.position.partition, r.position.offset)] = decode_event(r.value).event_id
    finally:
        await reader.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one open-loop writer of the visibility stage")
    for name in ("--kafka", "--topic", "--master-key", "--data-dir", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--offset", type=int, required=True)
    asyncio.run(write_open_loop(parser.parse_args()))
    os._exit(0)  # noqa: SLF001 - skip slow interpreter teardown of lancedb's threads
