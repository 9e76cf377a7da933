"""Scoped search with and without scalar indexes on the tenancy and entity columns.

    python bench/filter_index.py [--rows 200000] [--dim 384] [--users 1000] [--queries 50]

Builds a `memories` table (schema from memstream.projector.tables) of ``--rows`` rows with
random unit vectors (hashing-embedder-like: dense, L2-normalised), spread over two projects,
``--users`` users and a mix of agent/run-scoped memories, then times the query a search for
``{"user_id": X}`` runs: ``compile_filters(...).lance`` as a prefilter of a top-10 vector
search, plus the same predicate as a plain filtered scan (get_all). It measures both
before and after adding scalar indexes (BITMAP on org_id/project_id, BTREE on user_id,
agent_id, app_id, run_id), checks that both runs return the same ids, prints p50/p95 and
the ratio, and writes ``bench/results/filter_index.json``.

Nothing asserts on wall-clock numbers: the machine is shared; the ratio is the comparable part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import Bitmap, BTree

from memstream.projector.tables import memories_schema
from memstream.query.filters import compile_filters

RESULTS = Path(__file__).resolve().parent / "results" / "filter_index.json"
ORG = "org-bench"
PROJECTS = ("proj-a", "proj-b")
INDEXES = {
    "org_id": Bitmap,
    "project_id": Bitmap,
    "user_id": BTree,
    "agent_id": BTree,
    "app_id": BTree,
    "run_id": BTree,
}


def build_table(db: Any, rows: int, dim: int, users: int, seed: int) -> tuple[Any, float]:
    """The memories table, written in batches; returns (table, seconds)."""
    rng = np.random.default_rng(seed)
    schema = memories_schema(dim)
    started = time.perf_counter()
    table = None
    batch = 20_000
    base_ms = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        idx = np.arange(start, start + n)
        user = rng.integers(0, users, n)
        kind = rng.random(n)  # 60% user only, 20% user+agent, 15% user+run, 5% agent only
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        user_ids = [None if k >= 0.95 else f"user-{u}" for u, k in zip(user, kind, strict=True)]
        agent_ids = [
            f"agent-{u % 20}" if 0.6 <= k < 0.8 or k >= 0.95 else None
            for u, k in zip(user, kind, strict=True)
        ]
        run_ids = [
            f"run-{u}-{i % 7}" if 0.8 <= k < 0.95 else None
            for u, k, i in zip(user, kind, idx, strict=True)
        ]
        created = base_ms + idx * 1000
        columns = {
            "id": [f"mem-{i:08d}" for i in idx],
            "org_id": [ORG] * n,
            "project_id": [PROJECTS[i % 2] for i in idx],
            "user_id": user_ids,
            "agent_id": agent_ids,
            "app_id": [None] * n,
            "run_id": run_ids,
            "text": [f"memory number {i} about topic {i % 97}" for i in idx],
            "hash": [f"{i:064x}" for i in idx],
            "metadata": ['{"source": "bench"}'] * n,
            "categories": [["bench"]] * n,
            "created_at": created,
            "updated_at": created,
            "expiration_date": [None] * n,
            "immutable": [False] * n,
            "partition": [0] * n,
            "created_offset": idx,
            "last_offset": idx,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
        data = pa.Table.from_pydict(columns, schema=schema)
        if table is None:
            table = db.create_table("memories", data)
        else:
            table.add(data)
    return table, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_queries(
    table: Any, users: list[str], vectors: np.ndarray, warmup: int
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Time a top-10 prefiltered search and a filtered scan per user; returns ms and ids."""
    timings: dict[str, list[float]] = {"search": [], "scan": []}
    answers: list[list[str]] = []
    for n, (user, vector) in enumerate(zip(users, vectors, strict=True)):
        predicate = compile_filters({"user_id": user}, org_id=ORG, project_id=PROJECTS[0]).lance
        t0 = time.perf_counter()
        hits = (
            table.search(vector.tolist())
            .where(predicate, prefilter=True)
            .select(["id", "text"])
            .limit(10)
            .to_arrow()
        )
        t1 = time.perf_counter()
        scanned = table.search().where(predicate).select(["id"]).limit(None).to_arrow()
        t2 = time.perf_counter()
        if n >= warmup:
            timings["search"].append((t1 - t0) * 1000)
            timings["scan"].append((t2 - t1) * 1000)
        answers.append(sorted(hits["id"].to_pylist()) + ["|"] + sorted(scanned["id"].to_pylist()))
    return timings, answers


def summary(timings: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in timings.items():
        out[f"{name}_p50_ms"] = round(statistics.median(values), 3)
        out[f"{name}_p95_ms"] = round(percentile(values, 0.95), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--path", type=Path, default=None, help="table directory (default: temp)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    loadavg_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="memstream-bench-") as tmp:
        db = lancedb.connect(str(args.path or tmp))
        print(f"building {args.rows:,} rows, dim {args.dim} ...", flush=True)
        table, build_s = build_table(db, args.rows, args.dim, args.users, args.seed)
        print(f"  built in {build_s:.1f} s", flush=True)

        rng = np.random.default_rng(args.seed + 1)
        n = args.queries + args.warmup
        users = [f"user-{u}" for u in rng.integers(0, args.users, n)]
        vectors = rng.standard_normal((n, args.dim), dtype=np.float32)

        plain, plain_answers = run_queries(table, users, vectors, args.warmup)
        t0 = time.perf_counter()
        for column, config in INDEXES.items():
            table.create_index(column, config=config())
        index_s = time.perf_counter() - t0
        indexed, indexed_answers = run_queries(table, users, vectors, args.warmup)
        same = plain_answers == indexed_answers
        plan = (
            table.search(vectors[0].tolist())
            .where(
                compile_filters({"user_id": users[0]}, org_id=ORG, project_id=PROJECTS[0]).lance,
                prefilter=True,
            )
            .limit(10)
            .explain_plan(True)
        )
        uses_index = "ScalarIndexQuery" in plan

    before, after = summary(plain), summary(indexed)
    ratios = {
        "search_p50_without_over_with": round(
            before["search_p50_ms"] / max(after["search_p50_ms"], 1e-9), 2
        ),
        "scan_p50_without_over_with": round(
            before["scan_p50_ms"] / max(after["scan_p50_ms"], 1e-9), 2
        ),
    }
    print(f"\n{'':28}{'p50 ms':>10}{'p95 ms':>10}")
    for label, stats in (("without indexes", before), ("with scalar indexes", after)):
        for kind in ("search", "scan"):
            print(
                f"{label + ' / ' + kind:28}"
                f"{stats[f'{kind}_p50_ms']:>10.2f}{stats[f'{kind}_p95_ms']:>10.2f}"
            )
    print(
        f"\nscoped search p50: {ratios['search_p50_without_over_with']}x faster with indexes; "
        f"filtered scan p50: {ratios['scan_p50_without_over_with']}x"
    )
    print(
        f"same results with and without indexes: {same}; plan uses ScalarIndexQuery: {uses_index}"
    )

    record = {
        "benchmark": "filter_index",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rows": args.rows,
            "dim": args.dim,
            "users": args.users,
            "projects": len(PROJECTS),
            "queries": args.queries,
            "warmup": args.warmup,
            "top_k": 10,
            "filter": '{"user_id": X}',
            "indexes": {c: cls.__name__ for c, cls in INDEXES.items()},
        },
        "results": {
            "without_indexes": before,
            "with_indexes": after,
            "build_table_s": round(build_s, 2),
            "create_indexes_s": round(index_s, 2),
            "same_results": same,
            "plan_uses_scalar_index": uses_index,
        },
        "ratios": ratios,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in loadavg_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {p: metadata.version(p) for p in ("memstream", "lancedb", "pyarrow", "numpy")},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
