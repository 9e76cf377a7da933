"""memstream against its raw components and against Mem0 OSS, side by side in one run.

    python bench/run.py [--quick] [--scale N] [--embedder hashing|minilm] [--kafka BOOTSTRAP]
                        [--no-kafka] [--writers 64] [--out bench/results/latest.json]
                        [--stages append,cli | --skip embed,mem0]

Stages (each prints its progress; a stage that fails records its error and the run goes on):

1. embed      the embedder alone on the benchmark texts, calls of 64 (embed_raw_sps; run
              again after ingest, the faster run kept)
2. kafka      a throwaway broker from scripts/kafka-local, unless --kafka or --no-kafka
3. ingest     concurrent writers through Memstream.add(wait=True) on Kafka (ingest_eps),
              the same with the hashing embedder (pipeline_eps), and the inline-projector
              and fire-and-forget variants
4. corpus     `scale` MemoryAdded events appended to a file log in batches of 5,000, then
              Projector.catch_up (bulk_project_eps, cold embedding cache) and
              Projector.replay (replay_eps, warm cache)
5. search     Memstream.search at `scale` vs raw LanceDB's best plan for the same answer
              and the whole predicate, plus one raw model encode (search_vs_best_raw,
              search_overhead_ratio, search_recall), the plan before (search_plan_speedup),
              get_all; then sequential adds (seq_add_ps)
6. asof       a point-in-time get_all, if Memstream.get_all has an `as_of` parameter
7. rest       `memstream serve` on the corpus, a real HTTP client (httpx), the server's RSS
8. mem0       Mem0 OSS `Memory` (infer=False, local Qdrant) with the same embedder
9. append     durable appends by many writers not waiting for projection, against Kafka's
              own kafka-producer-perf-test on the same broker and a plain fsync loop
              (append_eps, log_limit_eps, append_ratio; file_append_ratio)
10. visibility  an open-loop stream of adds from writer processes at 50% of the measured
              projection capacity on Kafka for 60 s (5 s at --quick): append call to
              searchable (visible_p50/95/99_ms), and one waiting writer beside it
11. cli       `memstream --help` / get-all / add / search in fresh processes
              (cli_getall_vs_help, cli_add_vs_help)

Every key of issue 16's proof list is in the JSON; one this run did not measure is null,
with the reason under `not_measured`.
Each stage is a module in bench/stages/; the shared helpers are in bench/harness.py and
the targets and the final table in bench/report.py. See bench/README.md for what each number means, the targets and the measured figures.
Nothing here asserts on wall-clock numbers; the JSON records load averages so a starved run
on the shared 2-core machine is visible next to its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import T0, LocalKafka, Run, git_commit, say, version  # noqa: E402
from report import KEYS, PROOF_KEYS, fill_unmeasured, print_table, verdicts  # noqa: E402
from stages.append import stage_append  # noqa: E402
from stages.cli import stage_cli  # noqa: E402
from stages.corpus import kept_corpus, stage_corpus  # noqa: E402
from stages.embed import stage_embed  # noqa: E402
from stages.ingest import stage_ingest  # noqa: E402
from stages.mem0 import stage_mem0  # noqa: E402
from stages.rest import stage_rest  # noqa: E402
from stages.search import stage_search  # noqa: E402
from stages.visibility import stage_visibility  # noqa: E402
from workload import make_workload  # noqa: E402

from memstream.embedders import get_embedder  # noqa: E402

RESULTS = BENCH / "results" / "latest.json"
STAGES = ("embed", "ingest", "append", "visibility", "corpus", "search", "rest", "mem0", "cli")
"""The stages `--stages` and `--skip` name (the corpus runs when search, rest or mem0 does)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scale 2,000, fewer queries: < 3 min")
    parser.add_argument("--scale", type=int, default=None, help="memories in the corpus")
    parser.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--kafka", default=None, help="bootstrap servers of a running broker")
    parser.add_argument("--no-kafka", action="store_true", help="ingest on the file log")
    parser.add_argument("--writers", type=int, default=64, help="concurrent writers (ingest)")
    parser.add_argument(
        "--visibility-writers", type=int, default=3, help="writer processes (visibility)"
    )
    parser.add_argument(
        "--visibility-rate", type=float, default=None,
        help="adds/s offered (visibility; default: 50%% of the capacity measured in the run): "
        "a fixed rate compares two builds at the same load",
    )  # fmt: skip
    parser.add_argument("--ingest", type=int, default=None, help="memories per ingest run")
    parser.add_argument("--queries", type=int, default=None, help="timed queries per variant")
    parser.add_argument("--seq-adds", type=int, default=None, help="timed sequential adds")
    parser.add_argument("--rest-adds", type=int, default=None)
    parser.add_argument("--mem0-scale", type=int, default=100_000, help="cap for the mem0 corpus")
    parser.add_argument(
        "--mem0-queries", type=int, default=None, help="timed mem0 searches (default 40/50)"
    )
    parser.add_argument("--skip", default="", help="comma-separated stages to skip")
    parser.add_argument(
        "--stages",
        default="",
        help=f"comma-separated stages to run, the others skipped (of {','.join(STAGES)})",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the corpus data dir here")
    parser.add_argument(
        "--reuse-corpus",
        action="store_true",
        help="with --keep DIR: when DIR holds a complete corpus of this scale and embedder "
        "(from an earlier --keep run), time the reads on it instead of building it again",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.reuse_corpus and args.keep is None:
        parser.error("--reuse-corpus needs --keep DIR (where the corpus was kept)")
    args.scale = args.scale or (2000 if args.quick else 100_000)
    args.queries = args.queries or (40 if args.quick else 200)
    args.seq_adds = args.seq_adds or (50 if args.quick else 200)
    args.rest_adds = args.rest_adds or (30 if args.quick else 100)
    # mem0's local Qdrant scans every point per search (seconds at 100k): fewer queries
    args.mem0_queries = args.mem0_queries or min(args.queries, 40 if args.quick else 50)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if only := {s.strip() for s in args.stages.split(",") if s.strip()}:
        if unknown := only - set(STAGES):
            parser.error(
                f"--stages: no stage {', '.join(sorted(unknown))} (of {', '.join(STAGES)})"
            )
        skip |= set(STAGES) - only

    run = Run(args)
    load_start = os.getloadavg()
    started = datetime.now(UTC)
    say(f"scale {args.scale:,}, embedder {args.embedder}, {os.cpu_count()} CPUs, "
        f"load {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")  # fmt: skip
    extra = args.seq_adds + args.rest_adds
    # ingest and pipeline use the first memories of the same workload, in fresh stores
    need = max(args.scale + extra + args.seq_adds, args.ingest or 0, 600 if args.quick else 5000)
    wl = make_workload(need, queries=args.queries + 3, users=max(20, args.scale // 200))
    wl.users = sorted({m.user_id for m in wl.memories[: args.scale] if m.user_id})
    embedder = get_embedder(args.embedder)
    say(f"workload: {len(wl.memories):,} memories, {len(wl.users):,} users")

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    if args.scale >= 500_000 and free_gb < args.scale / 1e6 * 30:
        say(f"WARNING: {free_gb:.0f} GB free in {tempfile.gettempdir()}: the 1,000,000-memory "
            "bulk load + replay peaked at ~14 GB here, and needs room for a second generation "
            "while it replays (bench/README.md)")  # fmt: skip
    kafka = None if args.no_kafka else args.kafka
    broker: LocalKafka | None = None
    workdir = Path(tempfile.mkdtemp(prefix="memstream-bench-"))
    data_dir = (args.keep or workdir) / "corpus"
    try:
        if "embed" not in skip:
            run.stage("embed", lambda: stage_embed(run, embedder, wl))
        wants_kafka = bool({"ingest", "append", "visibility"} - skip)
        if kafka is None and not args.no_kafka and wants_kafka:
            if shutil.which(os.environ.get("JAVA", "java")) is None:
                run.notes.append("no Java: ingest and pipeline ran on the file log, not Kafka")
            else:
                say("starting a local Kafka broker (scripts/kafka-local) ...")
                broker = LocalKafka()
                try:
                    kafka = broker.start()
                    say(f"Kafka at {kafka}")
                except Exception as exc:
                    run.notes.append(
                        f"Kafka broker did not start ({exc}): ingest ran on the file log"
                    )
                    broker = None
        run.details["ingest_log"] = f"kafka {kafka}" if kafka else "file"
        if "ingest" not in skip:
            run.stage("ingest", lambda: stage_ingest(run, wl, kafka))
        if "append" not in skip:
            run.stage("append", lambda: stage_append(run, wl, kafka))
        if "visibility" not in skip:
            run.stage("visibility", lambda: stage_visibility(run, wl, kafka))
        if broker is not None:
            broker.stop()
            broker = None
        if "embed" not in skip and "ingest" not in skip:
            run.stage("embed-again", lambda: stage_embed(run, embedder, wl))
        reused = kept_corpus(data_dir, args.scale, args.embedder) if args.reuse_corpus else None
        if reused is not None:
            say(f"reusing the corpus in {data_dir} (built {reused.get('built', '?')})")
            run.notes.append(
                f"corpus reused from {data_dir}: bulk_project_eps and replay_eps are not "
                f"measured in this run (the build's: {reused})"
            )
        elif "corpus" not in skip or not {"search", "rest", "mem0"} <= skip:
            run.stage("corpus", lambda: stage_corpus(run, wl, data_dir))
        if "search" not in skip:
            run.stage("search", lambda: stage_search(run, wl, data_dir))
        if "rest" not in skip:
            run.stage("rest", lambda: stage_rest(run, wl, data_dir))
        if "mem0" not in skip:
            run.stage("mem0", lambda: stage_mem0(run, wl, embedder, data_dir))
        if "cli" not in skip:
            run.stage("cli", lambda: stage_cli(run, reps=3 if args.quick else 5))
    finally:
        if broker is not None:
            broker.stop()
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    if "rss_mb_peak" not in run.result:
        run.result["rss_mb_peak"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
        run.details["rss"] = {"of": "the benchmark process (REST stage not measured)"}
    not_measured = fill_unmeasured(run, skip)
    load_end = os.getloadavg()
    checks = verdicts(run)
    record: dict[str, Any] = {
        **{key: run.result.get(key) for key, _ in KEYS},
        **{key: run.result.get(key) for key in PROOF_KEYS},
        "not_measured": not_measured,
        "targets": checks,
        "details": run.details,
        "notes": run.notes,
        "errors": run.errors,
        "stage_seconds": run.stage_seconds,
        "environment": {
            "timestamp": started.isoformat(timespec="seconds"),
            "total_seconds": round(time.perf_counter() - T0, 1),
            "scale": args.scale,
            "embedder": embedder.name,
            "quick": args.quick,
            "writers": args.writers,
            "cpu_count": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "git": git_commit(),
            "versions": {
                p: version(p)
                for p in (
                    "memstream",
                    "lancedb",
                    "pylance",
                    "pyarrow",
                    "numpy",
                    "onnxruntime",
                    "aiokafka",
                    "fastapi",
                    "uvicorn",
                    "httpx",
                    "mem0ai",
                    "qdrant-client",
                )
            },  # fmt: skip
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(run, checks)
    say(f"wrote {args.out} (load average {load_start[0]:.2f} -> {load_end[0]:.2f})")
    return 1 if run.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
