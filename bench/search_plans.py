"""Scoped search plans on raw LanceDB, side by side (issue 16, section 1).

    python bench/search_plans.py [--rows 200000] [--dim 384] [--per-user 200] [--queries 40]

Builds a `memories` table shaped like memstream's projection (schema from
memstream.projector.tables, plus a `scope` column holding the whole scope as one string),
BTree indexes on the id columns as `ProjectionStore.ensure_indexes` makes them, users of
`--per-user` memories each (60% user only, 20% user + agent, 15% user + run, 5% agent only),
random unit vectors. Then, for `{"user_id": X}`, times a top-10 cosine search with each plan:

- `full`: the predicate memstream sends today (tenancy, user, IS NULL for the other
  entities, the retention clauses), `prefilter=True`;
- `user_only`: `user_id = X` alone (not the same answer: the reference for the index cost);
- `scope_eq`: equality on the composite `scope` column (+ the retention clauses);
- `lead_refine`: `user_id = X` AND the rest of the predicate written so that Lance cannot
  answer it from an index (`octet_length(col) IS NULL`, ...): the index finds the user's
  rows, the rest is checked on those rows only;
- `fetch_numpy`: the user's rows (with vectors) by the index, the full predicate checked in
  Python, then numpy dot products and an exact top-10;
- `fetch_numpy_lance`: as `fetch_numpy` but through `lance` directly (no lancedb query
  builder).

Every plan's ids are compared with `full`'s (`mismatches`); timings are p50/p95 ms and each
plan's ratio to `full` and to `fetch_numpy`, measured in one run with the plans taking
turns. Writes bench/results/search_plans.json. Nothing asserts on wall-clock numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree

from memstream.projector.tables import memories_schema
from memstream.query.filters import compile_filters
from memstream.query.retention import visible

RESULTS = Path(__file__).resolve().parent / "results" / "search_plans.json"
ORG, PROJECT = "org-bench", "proj-bench"
COLUMNS = ["id", "user_id", "agent_id", "run_id", "app_id", "text", "created_at"]
NARROW = ["id", "org_id", "project_id", "user_id", "agent_id", "run_id", "app_id",
          "metadata", "updated_at", "expiration_date", "expired_at", "vector"]  # fmt: skip
"""What a filter on entities and the retention rules read, and the ranking: `fetch_late`."""


def build(db: Any, rows: int, dim: int, per_user: int, seed: int, interleave: bool = False) -> Any:
    """The table; with `interleave` its rows are written in a random order (users' rows
    scattered over the table, as memories arrive from many users at once) instead of each
    user's rows side by side."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows) if interleave else np.arange(rows)
    schema = memories_schema(dim).append(pa.field("scope", pa.string()))
    table = None
    base_ms = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    step = 50_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        idx = order[start : start + n]
        user = idx // per_user
        kind = rng.random(n)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        uid = [None if k >= 0.95 else f"user-{u}" for u, k in zip(user, kind, strict=True)]
        aid = [f"agent-{u % 20}" if 0.6 <= k < 0.8 or k >= 0.95 else None
               for u, k in zip(user, kind, strict=True)]  # fmt: skip
        rid = [f"run-{u}-{i % 7}" if 0.8 <= k < 0.95 else None
               for u, k, i in zip(user, kind, idx, strict=True)]  # fmt: skip
        created = base_ms + idx * 1000
        data = pa.Table.from_pydict(
            {
                "id": [f"mem-{i:09d}" for i in idx],
                "org_id": [ORG] * n,
                "project_id": [PROJECT] * n,
                "user_id": uid,
                "agent_id": aid,
                "app_id": [None] * n,
                "run_id": rid,
                "text": [f"memory number {i} about topic {i % 97}" for i in idx],
                "hash": [f"{i:064x}" for i in idx],
                "metadata": ["{}"] * n,
                "categories": [[]] * n,
                "created_at": created,
                "updated_at": created,
                "expiration_date": [None] * n,
                "immutable": [False] * n,
                "expired_at": [None] * n,
                "partition": [0] * n,
                "created_offset": idx,
                "last_offset": idx,
                "key_id": [None] * n,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                "scope": [
                    f"{ORG}|{PROJECT}|{u or ''}|{a or ''}||{r or ''}"
                    for u, a, r in zip(uid, aid, rid, strict=True)
                ],  # fmt: skip
            },
            schema=schema,
        )
        if table is None:
            table = db.create_table("memories", data)
        else:
            table.add(data)
    assert table is not None
    table.optimize()
    for column in ("id", "org_id", "project_id", "user_id", "agent_id", "app_id", "run_id",
                   "hash", "scope"):  # fmt: skip
        table.create_index(column, config=BTree())
    return table


_INDEXED = re.compile(
    r"\b(id|org_id|project_id|user_id|agent_id|app_id|run_id)\b(?= (=|<>|IN|NOT IN|IS) )"
)


def unindexable(pred: str) -> str:
    """The same predicate with every id column written `(col || '')`: equal values, NULL
    stays NULL, but no index answers it, so Lance checks it on the rows the lead selected
    (memstream's ids never contain ' = ', so string literals are left alone)."""
    return _INDEXED.sub(lambda m: f"({m.group(1)} || '')", pred)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--per-user", type=int, default=200)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--interleave", action="store_true", help="rows in random order, not user by user"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    import lance

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="search-plans-") as tmp:
        db = lancedb.connect(tmp)
        t = time.perf_counter()
        table = build(db, a.rows, a.dim, a.per_user, a.seed, a.interleave)
        build_s = time.perf_counter() - t
        ds = lance.dataset(str(Path(tmp) / "memories.lance"))
        rng = np.random.default_rng(a.seed + 1)
        n_users = a.rows // a.per_user
        now = int(time.time() * 1000)
        retention = visible([], now)

        def top(vec: np.ndarray, got: pa.Table, keep: np.ndarray) -> list[str]:
            mat = got["vector"].combine_chunks().flatten().to_numpy().reshape(-1, a.dim)
            dist = 1.0 - (mat @ vec) / (np.linalg.norm(mat, axis=1) * np.linalg.norm(vec))
            dist[~keep] = np.inf
            order = np.lexsort((np.asarray(got["id"].to_pylist()), dist))[:10]
            return [got["id"][int(i)].as_py() for i in order if np.isfinite(dist[i])]

        def plans(user: str, vec: np.ndarray) -> dict[str, Any]:
            compiled = compile_filters({"user_id": user}, org_id=ORG, project_id=PROJECT)
            full = f"({compiled.lance}) AND {retention}"
            lead = f"user_id = '{user}'"
            scope = f"scope = '{ORG}|{PROJECT}|{user}|||'"

            def knn(pred: str) -> Any:
                return lambda: (
                    table.search(vec.tolist()).metric("cosine").where(pred, prefilter=True)
                    .select([*COLUMNS, "_distance"]).limit(10).to_arrow()["id"].to_pylist()
                )  # fmt: skip

            def fetch(reader: Any) -> Any:
                def run() -> list[str]:
                    got = reader()
                    rows = got.select([c for c in got.column_names if c != "vector"]).to_pylist()
                    keep = np.fromiter((compiled.matches(r) and r["expired_at"] is None
                                        for r in rows), bool, len(rows))  # fmt: skip
                    return top(vec, got, keep)

                return run

            def late() -> list[str]:
                # the filter's and the ranking's columns only, then the top 10's rows in full
                got = ds.to_table(columns=NARROW, filter=lead, with_row_id=True)
                rows = got.select([c for c in NARROW if c != "vector"]).to_pylist()
                keep = np.fromiter((compiled.matches(r) and r["expired_at"] is None
                                    for r in rows), bool, len(rows))  # fmt: skip
                ids = top(vec, got, keep)
                where = {v: i for i, v in enumerate(got["id"].to_pylist())}
                rowids = [got["_rowid"][where[i]].as_py() for i in ids]
                full_rows = ds._take_rows(rowids, columns=[c for c in cols if c != "vector"])
                return full_rows["id"].to_pylist()

            cols = [*COLUMNS, "org_id", "project_id", "metadata", "categories", "updated_at",
                    "expiration_date", "expired_at", "vector"]  # fmt: skip
            return {
                "full": knn(full),
                "user_only": knn(lead),
                "scope_eq": knn(f"{scope} AND {retention}"),
                "lead_refine": knn(f"{lead} AND {unindexable(full)}"),
                "fetch_numpy": fetch(
                    lambda: table.search().where(lead).select(cols).limit(None).to_arrow()
                ),
                "fetch_numpy_lance": fetch(lambda: ds.to_table(columns=cols, filter=lead)),
                "fetch_late": late,
            }

        names = list(plans("user-0", np.zeros(a.dim, np.float32)))
        times: dict[str, list[float]] = {n: [] for n in names}
        mismatches = dict.fromkeys(names, 0)
        warm = 3
        for q in range(a.queries + warm):
            user = f"user-{int(rng.integers(0, n_users))}"
            vec = rng.standard_normal(a.dim).astype(np.float32)
            vec /= np.linalg.norm(vec)
            ps = plans(user, vec)
            order = names[q % len(names) :] + names[: q % len(names)]
            answers: dict[str, list[str]] = {}
            for name in order:
                t = time.perf_counter()
                answers[name] = ps[name]()
                if q >= warm:
                    times[name].append((time.perf_counter() - t) * 1000)
            for name in names:
                if name != "user_only" and answers[name] != answers["full"]:
                    mismatches[name] += 1
        p50 = {n: round(statistics.median(v), 3) for n, v in times.items()}
        out = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": a.rows,
            "dim": a.dim,
            "per_user": a.per_user,
            "queries": a.queries,
            "build_s": round(build_s, 1),
            "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "p50_ms": p50,
            "p95_ms": {n: round(sorted(v)[int(0.95 * (len(v) - 1))], 3) for n, v in times.items()},
            "vs_full": {n: round(p50[n] / p50["full"], 3) for n in names},
            "vs_fetch_numpy": {n: round(p50[n] / p50["fetch_numpy"], 3) for n in names},
            "mismatches_vs_full": mismatches,
            "seconds": round(time.perf_counter() - started, 1),
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
