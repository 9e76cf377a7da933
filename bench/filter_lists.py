"""How a get_all's cost grows with the length of an `in` list (issue 13).

Lists of N = 1k, 2k, 4k, 8k, 16k user ids (of which 20 exist) against the same small
projection, each timed 3 times (best kept): compile (parse + Lance and DuckDB predicates)
and the whole get_all. Linear growth shows as time/N roughly constant; the JSON reports each
size's ratio to the 1k time next to the ratio of sizes. Before the fix the parse alone
deduplicated with a list (`v not in ids`): quadratic, 20k ids took 15.5 s through the API.

    .venv/bin/python bench/filter_lists.py [--out bench/results/filter_lists.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from memstream.query.filters import compile_filters
from memstream.service import Memstream
from memstream.settings import Settings

SIZES = (1_000, 2_000, 4_000, 8_000, 16_000)


def best(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


async def main(out: Path | None) -> dict[str, object]:
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        async with Memstream(Settings(data_dir=Path(d), embedder="hashing")) as ms:
            for i in range(20):
                await ms.add(f"fact {i}", user_id=f"u{i}")
            rows = []
            for n in SIZES:
                filters = {"user_id": {"in": [f"u{i}" for i in range(n)]}}
                compile_s = best(
                    lambda f=filters: compile_filters(f, org_id="local", project_id="default")
                )  # noqa: E731
                get_all_s = best(lambda f=filters: ms.reader.get_all(ms.tenant, f))  # noqa: E731
                rows.append({"n": n, "compile_s": compile_s, "get_all_s": get_all_s})
    base = rows[0]
    for r in rows:
        r["size_ratio"] = r["n"] / base["n"]
        r["compile_ratio"] = r["compile_s"] / base["compile_s"]
        r["get_all_ratio"] = r["get_all_s"] / base["get_all_s"]
    result = {"rows": rows, "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"n={r['n']:>6}  compile {r['compile_s'] * 1000:8.1f} ms (x{r['compile_ratio']:.1f})"
              f"  get_all {r['get_all_s'] * 1000:8.1f} ms (x{r['get_all_ratio']:.1f})"
              f"  size x{r['size_ratio']:.0f}")  # fmt: skip
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    asyncio.run(main(parser.parse_args().out))
