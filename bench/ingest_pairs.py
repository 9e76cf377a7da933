"""`ingest_ratio` of two installs, paired: the real model through Kafka, alternating.

    python bench/ingest_pairs.py --before /tmp/basevenv/bin/python --kafka HOST:PORT \
        [--n 1500] [--writers 64] [--rounds 4]

Each round runs one child process per interpreter (before, then after; the order flips every
round), and each child measures, as `bench/run.py`'s embed and ingest stages do: the model
alone (`embed()` of the first 1,024 benchmark texts in calls of 64, with onnxruntime's thread
spinning on and off, the faster kept), `--n` adds by
`--writers` concurrent `Memstream.add(wait=True)` tasks on a fresh Kafka topic with the
background projector, then the model alone again; `ingest_ratio` = memories/s over the faster
of the two model runs. So both installs see the same machine, and each ratio's numerator and
denominator the same moment of it.

Each child also reports where the CPU went during its ingest: its own threads (the model's
onnxruntime threads, the event loop, worker threads) and the broker's process (`--kafka-pid`,
found by its port when not given), from /proc, and `cpu_ratio`: the model's CPU per text
alone over the whole ingest's CPU per memory (this process and the broker), i.e. the ratio
both would reach saturating the cores, with the other tenants' load taken out. Results, medians and load averages go to
bench/results/ingest_pairs.json. No wall-clock assertions anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(stat_path: Path) -> float:
    """user + system CPU seconds of a process or thread, from its /proc stat line."""
    text = stat_path.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _threads() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[int(task.name)] = (name, _cpu_s(task / "stat"))
        except OSError:
            continue
    return out


def _kafka_pid(bootstrap: str) -> int | None:
    """The broker process listening on the bootstrap port (a local `scripts/kafka-local`)."""
    port = bootstrap.rsplit(":", 1)[-1]
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    for part in out.split("pid=")[1:]:
        return int(part.split(",", 1)[0])
    return None


def _classify(tid: int, name: str, python_names: dict[int, str]) -> str:
    if tid == os.getpid():
        return "main (event loop)"
    if tid in python_names:
        pname = python_names[tid]
        if pname.startswith("memstream-flush"):
            return "flush thread"
        if pname.startswith("asyncio"):
            return "asyncio worker threads (apply, embed ahead, reads)"
        return f"python: {pname.split('_')[0]}"
    return f"native: {name}"


def _alone_models() -> list[Any]:
    """The model alone, twice: onnxruntime's intra-op threads spinning (its default) and
    not, whichever install this is (an older one has no `allow_spinning`: its session
    options are set as it loads). The comparator keeps the faster: the model's best."""
    import onnxruntime as ort

    from memstream.embedders.onnx import MiniLMOnnxEmbedder

    models = []
    for spin in (True, False):
        try:
            models.append(MiniLMOnnxEmbedder(allow_spinning=spin))  # type: ignore[call-arg]
            continue
        except TypeError:
            pass
        original = ort.SessionOptions

        class Options(original):  # type: ignore[misc, valid-type]
            spinning = str(int(spin))

            def __init__(self) -> None:
                super().__init__()
                self.add_session_config_entry("session.intra_op.allow_spinning", self.spinning)

        model = MiniLMOnnxEmbedder()
        ort.SessionOptions = Options
        try:
            model.embed(["load it now"])
        finally:
            ort.SessionOptions = original
        models.append(model)
    return models


async def child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    from harness import concurrent_adds, rate, settings_for
    from workload import make_workload

    import memstream.projector.projector as pm
    from memstream.service import Memstream

    wl = make_workload(max(args.n, args.alone_texts))
    texts = wl.texts()[: args.alone_texts]
    out: dict[str, Any] = {"core": str(Path(pm.__file__).resolve().parent.parent)}
    tmp = Path(tempfile.mkdtemp(prefix="memstream-ingest-pairs-"))
    kafka_pid = args.kafka_pid or _kafka_pid(args.kafka)
    try:
        ms = Memstream(settings_for(tmp, "minilm", args.kafka))
        await ms.start(background_projector=True)
        try:
            models = _alone_models()

            alone_cpu: list[float] = []  # CPU ms per text of each model-alone run

            def model_alone() -> float:
                best = 0.0
                for model in models:
                    model.embed(texts[:64])
                    t, c = time.perf_counter(), time.process_time()
                    for i in range(0, len(texts), 64):
                        model.embed(texts[i : i + 64])
                    best = max(best, rate(len(texts), time.perf_counter() - t))
                    alone_cpu.append((time.process_time() - c) * 1000 / len(texts))
                return best

            alone = [model_alone()]
            before = _threads()
            kafka0 = _cpu_s(Path(f"/proc/{kafka_pid}/stat")) if kafka_pid else None
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            seconds, lat, added = await concurrent_adds(
                ms, wl.memories[: args.n], args.writers, wait=True
            )
            wall = time.perf_counter() - t0
            after = _threads()
            kafka1 = _cpu_s(Path(f"/proc/{kafka_pid}/stat")) if kafka_pid else None
            names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
            cpu: dict[str, float] = {}
            for tid, (name, s1) in after.items():
                s0 = before.get(tid, (name, 0.0))[1]
                key = _classify(tid, name, names)
                cpu[key] = cpu.get(key, 0.0) + s1 - s0
            if kafka0 is not None and kafka1 is not None:
                cpu["kafka broker (JVM)"] = kafka1 - kafka0
            alone.append(model_alone())
            await ms.projector.flush_tier()
            rows = ms.projector.generation().memories().count_rows()
        finally:
            await ms.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    eps = rate(args.n, seconds)
    out.update(
        ingest_eps=eps,
        embed_raw_sps=max(alone),
        embed_runs_sps=alone,
        ingest_ratio=round(eps / max(alone), 3),
        added=added,
        rows=rows,
        load_start=round(load0, 2),
        load_end=round(os.getloadavg()[0], 2),
        cpu_share_of_2_cores={
            k: round(v / (wall * (os.cpu_count() or 1)), 3)
            for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
        },
        cpu_ms_per_memory={k: round(v * 1000 / args.n, 2) for k, v in cpu.items()},
        alone_cpu_ms_per_text=round(min(alone_cpu), 2),
        # CPU the model needs for a text alone over what the whole ingest (this process and
        # the broker) spent per memory: what ingest_ratio would be with both saturating
        # the cores, i.e. the ratio with the external load taken out
        cpu_ratio=round(min(alone_cpu) / (sum(cpu.values()) * 1000 / args.n), 3),
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="python of the older install (required)")
    parser.add_argument("--after", default=sys.executable, help="python of the newer install")
    parser.add_argument("--kafka", required=True, help="bootstrap servers of a running broker")
    parser.add_argument("--kafka-pid", type=int, default=None)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--alone-texts", type=int, default=1024, help="texts per model-alone run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "ingest_pairs.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return 0
    if not args.before:
        parser.error("--before is required")
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for which in order:
            python = args.before if which == "before" else args.after
            cmd = [python, __file__, "--child", "--kafka", args.kafka, "--n", str(args.n),
                   "--writers", str(args.writers), "--alone-texts", str(args.alone_texts)]  # fmt: skip
            if args.kafka_pid:
                cmd += ["--kafka-pid", str(args.kafka_pid)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[which].append(res)
            print(
                f"round {r + 1} {which:6}: ingest {res['ingest_eps']:7.1f}/s, model alone "
                f"{res['embed_raw_sps']:6.1f}/s, ratio {res['ingest_ratio']:.3f}, cpu ratio "
                f"{res['cpu_ratio']:.3f} "
                f"(load {res['load_start']} -> {res['load_end']})",
                flush=True,
            )
            print(f"    cpu: {res['cpu_share_of_2_cores']}", flush=True)
    load.append(os.getloadavg()[0])
    summary = {
        which: {
            key: statistics.median(x[key] for x in rs)
            for key in ("ingest_eps", "embed_raw_sps", "ingest_ratio", "cpu_ratio")
        }
        for which, rs in runs.items()
    }
    record = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
        "load_average_start_end": [round(x, 2) for x in load],
        "median": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({"median": summary, "load": record["load_average_start_end"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
