"""Stage: the `memstream` CLI's wall time per command against `memstream --help`, each a
fresh interpreter, as a new user runs it (issue 16, section 7).

A small store (file log, hashing embedder) gets a few memories, then `--help`, `get-all`,
`add` and `search` run in turns, `--reps` times each; the figures are medians and their
ratios to `--help` measured in the same turns. The same get-all also runs with the LanceDB
namespace client imported eagerly (as before `memstream/lancedb_import.py`), for a
before/after in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Run, ratio, say

EAGER = "import lance_namespace_urllib3_client; from memstream.cli import main; main()"


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed: {done.stderr[-500:]}")
    return took


async def stage_cli(run: Run, reps: int = 5) -> None:
    with tempfile.TemporaryDirectory(prefix="memstream-cli-") as tmp:
        env = {**os.environ, "MEMSTREAM_DATA_DIR": str(Path(tmp) / "data"),
               "MEMSTREAM_EMBEDDER": "hashing"}  # fmt: skip
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        cli = [sys.executable, "-m", "memstream.cli"]
        for i in range(5):
            _timed([*cli, "add", f"seed memory {i} about green tea", "--user-id", "alice"], env)
        commands = {
            "help": [*cli, "--help"],
            "get_all": [*cli, "get-all", "--user-id", "alice"],
            "add": [*cli, "add", "another memory about tea", "--user-id", "alice"],
            "search": [*cli, "search", "tea", "--user-id", "alice"],
            "get_all_eager": [sys.executable, "-c", EAGER, "get-all", "--user-id", "alice"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        names = list(commands)
        for r in range(reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(_timed(commands[name], env))
        med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    run.result["cli_help_s"] = med["help"]
    run.result["cli_getall_vs_help"] = ratio(med["get_all"], med["help"], 2)
    run.result["cli_add_vs_help"] = ratio(med["add"], med["help"], 2)
    run.result["cli_search_vs_help"] = ratio(med["search"], med["help"], 2)
    run.details["cli"] = {
        "median_s": med,
        "reps": reps,
        "getall_eager_namespace_vs_help": ratio(med["get_all_eager"], med["help"], 2),
        "what": "wall time of `python -m memstream.cli ...` in a fresh process (file log, "
        "hashing, a store of a few memories), commands in rotating order; get_all_eager "
        "imports lance_namespace_urllib3_client first, as lancedb did before the deferral",
    }
    say(f"cli: help {med['help']} s, get-all {med['get_all']} s, add {med['add']} s, search "
        f"{med['search']} s (get-all with the eager namespace import {med['get_all_eager']} s)")  # fmt: skip
