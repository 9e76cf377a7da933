"""Stage: the `memstream` CLI's wall time per command against `memstream --help`, each a
fresh interpreter, as a new user runs it (issue 16, section 7).

A small store (file log, hashing embedder) gets a few memories; then, in turns (`--reps` of
each, rotating order), `--help`, `get-all`, `add` and `search`:

- by itself (no server running): get-all and search of the current projection through
  `lance` alone (memstream/light_reads.py), add written and applied through `lance` alone
  (memstream/light_writes.py); and get-all with MEMSTREAM_LIGHT_READS=0 and add with
  MEMSTREAM_LIGHT_ADD=0 (the whole ledger, as before) for a before/after;
- with a `memstream serve` of the same data directory running: the commands are sent to it
  over its local socket (memstream/cli/forward.py), `--help` measured again in these turns
  (`details.cli.served_vs_help`: cli_getall_served_vs_help, ...).

Figures are medians and their ratios to `--help` measured in the same turns; the CPU time of
each process (user + sys, from the kernel's accounting of the child) is kept beside the wall
time, as it moves less with the machine's load (also recorded).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import Run, ratio, say


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, cpu s) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed: {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu


def _turns(
    commands: dict[str, list[str]],
    env: dict[str, str],
    reps: int,
    envs: dict[str, dict[str, str]] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and cpu seconds per command (in its own `envs` entry, else `env`), `reps`
    turns in rotating order."""
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = _timed(commands[name], (envs or {}).get(name, env))
            wall[name].append(w)
            cpu[name].append(c)
    return (
        {k: round(statistics.median(v), 3) for k, v in wall.items()},
        {k: round(statistics.median(v), 3) for k, v in cpu.items()},
    )


@contextlib.contextmanager
def _server(cli: list[str], env: dict[str, str], data: Path) -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(data.parent / "serve.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (data / "serve" / "server.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"memstream serve did not start: exit {proc.poll()}")
            time.sleep(0.2)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def stage_cli(run: Run, reps: int = 5) -> None:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="memstream-cli-") as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "MEMSTREAM_DATA_DIR": str(data), "MEMSTREAM_EMBEDDER": "hashing"}
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "MEMSTREAM_NO_SERVER", "MEMSTREAM_LIGHT_READS",
                     "MEMSTREAM_LIGHT_ADD"):  # fmt: skip
            env.pop(name, None)
        cli = [sys.executable, "-m", "memstream.cli"]
        for i in range(5):
            _timed([*cli, "add", f"seed memory {i} about green tea", "--user-id", "alice"], env)
        commands = {
            "help": [*cli, "--help"],
            "get_all": [*cli, "get-all", "--user-id", "alice"],
            "add": [*cli, "add", "another memory about tea", "--user-id", "alice"],
            "search": [*cli, "search", "tea", "--user-id", "alice"],
        }
        full = {**env, "MEMSTREAM_LIGHT_READS": "0", "MEMSTREAM_LIGHT_ADD": "0"}
        alone, alone_cpu = _turns(
            {**commands, "get_all_full": commands["get_all"], "add_full": commands["add"]},
            env, reps, {"get_all_full": full, "add_full": full},
        )  # fmt: skip
        with _server(cli, env, data):
            served, served_cpu = _turns(commands, env, reps)
    load_after = os.getloadavg()
    run.result["cli_help_s"] = alone["help"]
    for key, name in (("getall", "get_all"), ("add", "add"), ("search", "search")):
        run.result[f"cli_{key}_vs_help"] = ratio(alone[name], alone["help"], 2)
    run.details["cli"] = {
        # the same ratios with a `memstream serve` of the data dir answering
        "served_vs_help": {
            f"cli_{key}_served_vs_help": ratio(served[name], served["help"], 2)
            for key, name in (("getall", "get_all"), ("add", "add"), ("search", "search"))
        },
        "median_s": alone,
        "median_cpu_s": alone_cpu,
        "served_median_s": served,
        "served_median_cpu_s": served_cpu,
        "reps": reps,
        "getall_full_vs_help": ratio(alone["get_all_full"], alone["help"], 2),
        "add_full_vs_help": ratio(alone["add_full"], alone["help"], 2),
        "cpu_ratios": {name: ratio(alone_cpu[name], alone_cpu["help"], 2) for name in alone_cpu}
        | {f"{name}_served": ratio(served_cpu[name], served_cpu["help"], 2) for name in served_cpu},
        "load_avg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "what": "wall time of `python -m memstream.cli ...` in a fresh process (file log, "
        "hashing, a store of a few memories), commands in rotating order; alone: no server "
        "(get-all/search/add through lance alone; get_all_full/add_full: "
        "MEMSTREAM_LIGHT_READS=0 MEMSTREAM_LIGHT_ADD=0, the whole ledger); served: a "
        "`memstream serve` of the data dir answers",
    }
    say(f"cli alone: help {alone['help']} s, get-all {alone['get_all']} s (whole ledger "
        f"{alone['get_all_full']} s), add {alone['add']} s (whole ledger {alone['add_full']} s), "
        f"search {alone['search']} s; "
        f"served: help {served['help']} s, get-all {served['get_all']} s, add {served['add']} s, "
        f"search {served['search']} s")  # fmt: skip
