"""Before/after figures for a core change: the same measurements, two installs, one run.

    python bench/compare.py --before /tmp/basevenv/bin/python [--n 50000] [--parts ...]

`--before` is the interpreter of an install of the older core (e.g. a venv whose editable
install points at an export of an older commit); the interpreter running this script is
"after". Each part runs in a child process per interpreter, before and after alternating
(`--rounds` times), so both see the same machine load; the child imports the core of its own
interpreter and only the public API (`Memstream`, `Projector.catch_up`, `Projector.replay`).
File log, hashing embedder (so the model's cost does not hide the pipeline's).

Parts:
  corpus      `--n` MemoryAdded events appended in batches of 5,000, then `catch_up`
              (bulk_eps, cold cache), then `replay` (replay_eps, warm cache); bytes on disk
              (projections/, cache/) after each, and the replay's peak RSS growth
  seq         `--seq` sequential `add(wait=True)` on that corpus (p50 ms, adds/s, apply ms)
  concurrent  `--concurrent` adds by `--writers` writers on a fresh store, background
              projector (as the server runs it) and inline (a library user's default)

No wall-clock assertions; results (and load averages) go to bench/results/compare.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    from harness import TENANT, added_event, concurrent_adds, p50, rate, settings_for
    from workload import make_workload

    import memstream.projector.projector as pm
    from memstream.events import message_of
    from memstream.service import Memstream

    def settings(tmp: Path) -> Any:
        s = settings_for(tmp, "hashing", None)
        if args.keep_versions_s is not None and hasattr(s, "keep_versions_s"):
            s = dataclasses.replace(s, keep_versions_s=args.keep_versions_s)
        return s

    out: dict[str, Any] = {"core": str(Path(pm.__file__).resolve().parent.parent)}
    parts = set(args.parts.split(","))
    if "corpus" in parts or "seq" in parts:
        tmp = Path(tempfile.mkdtemp(prefix="memstream-compare-"))
        try:
            ms = Memstream(settings(tmp))
            await ms.start()
            try:
                mems = make_workload(args.n, queries=0, seed=13).memories
                for i in range(0, args.n, 5000):
                    await ms.log.append([message_of(added_event(m)) for m in mems[i : i + 5000]])
                t = time.perf_counter()
                await ms.projector.catch_up(timeout_s=24 * 3600)
                bulk_s = time.perf_counter() - t
                disk_bulk = {d: du(tmp / d) for d in ("projections", "cache", "log")}
                rss0 = rss_mb()
                t = time.perf_counter()
                await ms.replay()
                replay_s = time.perf_counter() - t
                disk_replay = {d: du(tmp / d) for d in ("projections", "cache", "log")}
                rows = ms.projector.generation().memories().count_rows()
                out["corpus"] = {
                    "events": args.n,
                    "rows": rows,
                    "bulk_eps": rate(args.n, bulk_s),
                    "replay_eps": rate(args.n, replay_s),
                    "disk_mb_after_bulk": {k: round(v / 1e6, 1) for k, v in disk_bulk.items()},
                    "disk_mb_after_replay": {k: round(v / 1e6, 1) for k, v in disk_replay.items()},
                    "rss_mb_before_replay": round(rss0, 1),
                    "rss_hwm_mb_after_replay": round(hwm_mb(), 1),
                }
                if "seq" in parts:
                    extra = make_workload(args.seq, queries=0, seed=17).memories
                    original = ms.projector._apply_sync
                    apply_s: list[float] = []

                    def timed(*a: Any, **kw: Any) -> Any:
                        t0 = time.perf_counter()
                        try:
                            return original(*a, **kw)
                        finally:
                            apply_s.append(time.perf_counter() - t0)

                    ms.projector._apply_sync = timed  # type: ignore[method-assign]
                    lat = []
                    for m in extra:
                        t = time.perf_counter()
                        await ms.add(m.text, tenant=TENANT, **m.entities())
                        lat.append((time.perf_counter() - t) * 1000)
                    ms.projector._apply_sync = original  # type: ignore[method-assign]
                    out["seq"] = {
                        "adds": len(lat),
                        "p50_ms": p50(lat),
                        "adds_per_s": rate(len(lat), sum(lat) / 1000),
                        "apply_ms_per_add": round(sum(apply_s) * 1000 / len(lat), 2),
                    }
            finally:
                await ms.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if "concurrent" in parts:
        mems = make_workload(args.concurrent, queries=0, seed=11).memories
        for background in (True, False):
            tmp = Path(tempfile.mkdtemp(prefix="memstream-compare-"))
            try:
                ms = Memstream(settings(tmp))
                await ms.start(background_projector=background)
                try:
                    seconds, lat, added = await concurrent_adds(ms, mems, args.writers, wait=True)
                finally:
                    await ms.close()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            key = "concurrent_background" if background else "concurrent_inline"
            out[key] = {"adds": added, "eps": rate(added, seconds), "p50_ms": p50(lat)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="python of the older install")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seq", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=600)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parts", default="corpus,seq,concurrent")
    parser.add_argument("--keep-versions-s", type=float, default=None,
                        help="Settings.keep_versions_s, on a core that has it")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "compare.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return 0
    pythons = {"after": sys.executable}
    if args.before:
        pythons = {"before": args.before, **pythons}
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in pythons}
    for r in range(args.rounds):
        for label, python in pythons.items():
            cmd = [python, __file__, "--child", "--n", str(args.n), "--seq", str(args.seq),
                   "--concurrent", str(args.concurrent), "--writers", str(args.writers),
                   "--parts", args.parts]  # fmt: skip
            if args.keep_versions_s is not None:
                cmd += ["--keep-versions-s", str(args.keep_versions_s)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"{label} failed")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["seconds"] = round(time.perf_counter() - t, 1)
            runs[label].append(res)
            print(f"round {r + 1} {label}: {json.dumps(res)}", flush=True)
    record = {
        "benchmark": "compare",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "runs": runs,
        "loadavg_start": [round(x, 2) for x in load],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out} (load {record['loadavg_start']} -> {record['loadavg_end']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
