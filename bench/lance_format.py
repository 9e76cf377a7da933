"""A scoped read in each Lance file format, side by side (issue 16, section 1; round 8).

    python bench/lance_format.py [--rows 200000] [--per-user 200] [--queries 60]
                                 [--formats 2.0,2.1,2.2] [--columns]

Why: once a user's rows lie side by side, a scoped search's cost is mostly per column read,
and in Lance's 2.2 format (LanceDB 0.40's default) a column whose page holds one value
throughout ("constant" layout: `org_id` in a one-project deployment, `immutable`,
`partition`, `metadata` = "{}") costs as much to read for 200 rows as for the whole page.
memstream creates its tables in 2.1 (projector/store.py `LANCE_FILE_VERSION`).

Builds the same table as bench/search_plans.py (memstream's projection schema, users of
`--per-user` memories stored user by user, BTree indexes on the id columns) once per
format, then, with the formats taking turns on the same random users, times what
`query/scoped.py fetch_scope` reads for a search: the `user_id = X` rows with every column a
search returns plus the vector, through `lance`. Prints p50/p95 per format and each one's
ratio to 2.2 measured in the same run; `--columns` adds each column read alone. Checks that
every format returns the same rows. Writes bench/results/lance_format.json. Nothing
asserts on wall-clock numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lance  # noqa: E402
import lancedb  # noqa: E402
import numpy as np  # noqa: E402
from search_plans import build  # noqa: E402

from memstream.query.reader import MEMORY_COLUMNS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "lance_format.json"
SEARCH_COLUMNS = [*MEMORY_COLUMNS, "last_offset", "vector"]


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--per-user", type=int, default=200)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--formats", default="2.0,2.1,2.2")
    ap.add_argument("--columns", action="store_true", help="also time each column alone")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if "2.2" not in formats:
        ap.error("--formats must include 2.2 (the baseline each ratio is against)")
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lance-format-") as tmp:
        datasets: dict[str, Any] = {}
        built: dict[str, dict[str, float]] = {}
        for fmt in formats:
            path = Path(tmp) / fmt
            db = lancedb.connect(path, storage_options={"new_table_data_storage_version": fmt})
            t = time.perf_counter()
            build(db, a.rows, a.dim, a.per_user, a.seed)
            ds = lance.dataset(str(path / "memories.lance"))
            assert ds.data_storage_version == fmt, (ds.data_storage_version, fmt)
            datasets[fmt] = ds
            built[fmt] = {"build_s": time.perf_counter() - t, "disk_mb": _dir_mb(path)}
            print(f"built {fmt}: {built[fmt]['build_s']:.1f} s, {built[fmt]['disk_mb']:.0f} MB",
                  flush=True)  # fmt: skip
        rng = np.random.default_rng(a.seed + 1)
        users = [f"user-{u}" for u in rng.integers(0, a.rows // a.per_user, a.queries + 5)]
        reads: dict[str, list[tuple[str, list[str]]]] = {"search": [("search", SEARCH_COLUMNS)]}
        if a.columns:
            reads["column"] = [(c, [c]) for c in SEARCH_COLUMNS]
        times: dict[tuple[str, str], list[float]] = defaultdict(list)
        for i, user in enumerate(users):
            lead = f"user_id = '{user}'"
            answers = set()
            for fmt in formats[i % len(formats) :] + formats[: i % len(formats)]:
                for _kind, items in reads.items():
                    for name, cols in items:
                        t = time.perf_counter()
                        got = datasets[fmt].to_table(columns=cols, filter=lead)
                        ms = (time.perf_counter() - t) * 1000
                        if i >= 5:  # the first reads warm the indexes' caches
                            times[fmt, name].append(ms)
                        if name == "search":
                            answers.add(tuple(sorted(got["id"].to_pylist())))
            assert len(answers) == 1, f"the formats returned different rows for {user}"
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": a.rows,
        "per_user": a.per_user,
        "queries": a.queries,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "run_s": time.perf_counter() - started,
        "built": built,
        "reads": {},
    }
    names = ["search", *(SEARCH_COLUMNS if a.columns else [])]
    print(f"\none user's rows ({a.per_user}) at {a.rows:,} rows, p50 ms (ratio to 2.2):")
    for name in names:
        base = statistics.median(times["2.2", name])
        cells = []
        for fmt in formats:
            xs = sorted(times[fmt, name])
            p50, p95 = statistics.median(xs), xs[int(len(xs) * 0.95)]
            result["reads"].setdefault(name, {})[fmt] = {
                "p50_ms": p50, "p95_ms": p95, "vs_2_2": p50 / base,
            }  # fmt: skip
            cells.append(f"{fmt}: {p50:6.2f} ({p50 / base:4.2f}x)")
        print(f"  {name:16s} " + "   ".join(cells))
    print(f"load {result['load_start']:.1f} -> {result['load_end']:.1f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
