"""Stage: durable appends against the log's own limit, in the same run (issue 16, section 2).

- Kafka: `append_eps` is memstream's durable appends per second -- `--writers` asyncio tasks
  calling `Memstream.add(text, wait=False)` (each returns once its event is acknowledged
  with acks=all; nobody waits for projection) on a fresh topic; `log_limit_eps` is Kafka's
  own `kafka-producer-perf-test` (`ProducerPerformance` from the kafka-tools jar of the
  broker's version, `scripts/kafka-local perf-test`) against the same broker, acks=all,
  records of the same size (the mean key + value bytes of memstream's sealed MemoryAdded
  messages for these memories), unthrottled; `append_ratio` = append_eps / log_limit_eps,
  measured bracketed: perf-test, memstream, perf-test, ... (`bracketed`), each memstream
  run against the mean of the two perf-test runs around it, the median of those ratios.
- File log: the same writers on the embedded file log (`file_append_eps`) against a plain
  loop that appends the same messages' bytes to a file and fsyncs after each
  (`file_log_limit_eps`); `file_append_ratio`.
"""

from __future__ import annotations

import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness import ROOT, Run, concurrent_adds, corpus_messages, ratio, say, settings_for
from workload import Workload

from memstream.service import Memstream

_PERF_LINE = re.compile(r"^(\d+) records sent, ([\d.]+) records/sec")


def kafka_perf_test(bootstrap: str, records: int, size: int) -> tuple[float, str]:
    """records/s of Kafka's own producer benchmark (acks=all), and its summary line."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kafka-local"), "perf-test",
         "--bootstrap", bootstrap, "--topic", f"perf-{uuid.uuid4().hex[:8]}",
         "--num-records", str(records), "--record-size", str(size), "--acks", "all"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [ln for ln in done.stdout.splitlines() if _PERF_LINE.match(ln)]
    final = [ln for ln in lines if ln.startswith(f"{records} records sent")]
    if done.returncode != 0 or not final:
        raise RuntimeError(f"kafka perf-test failed: {(done.stderr or done.stdout)[-800:]}")
    match = _PERF_LINE.match(final[-1])
    assert match is not None
    return float(match.group(2)), final[-1]


def plain_fsync_loop(path: Path, messages: list[tuple[bytes, bytes]], n: int) -> float:
    """Seconds to append n length-prefixed messages, fsyncing after each (the file log's
    own limit for one durable record at a time)."""
    started = time.perf_counter()
    with open(path, "ab") as f:
        for i in range(n):
            key, value = messages[i % len(messages)]
            f.write(struct.pack(">II", len(key), len(value)) + key + value)
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - started


async def bracketed(
    rounds: int,
    perf: Callable[[], tuple[float, str]],
    ours: Callable[[int], Awaitable[float]],
) -> tuple[float, float, list[float], list[str]]:
    """`rounds` runs of ours, each between two runs of the log's own limit (perf, ours,
    perf, ours, ..., perf), each of ours divided by the mean of the two perf runs around it.

    Why: on this shared machine kafka-producer-perf-test alone moved 3.6k-16k records/s from
    one run to the next (bench/README.md, round 7), so one comparator run before or after
    says little about the moment ours ran. Returns (median of ours, median of the limits,
    the per-round ratios, perf-test's summary lines)."""
    limits: list[float] = []
    lines: list[str] = []
    ours_eps: list[float] = []
    ratios: list[float] = []
    limit, line = perf()
    limits.append(limit)
    lines.append(line)
    for i in range(rounds):
        eps = await ours(i)
        limit, line = perf()
        ratios.append(eps / ((limits[-1] + limit) / 2))
        ours_eps.append(eps)
        limits.append(limit)
        lines.append(line)
    return statistics.median(ours_eps), statistics.median(limits), ratios, lines


async def _appends(data_dir: Path, kafka: str | None, wl: Workload, n: int, writers: int
                   ) -> tuple[float, list[tuple[bytes, bytes]]]:  # fmt: skip
    ms = Memstream(settings_for(data_dir, "hashing", kafka))
    await ms.start()
    try:
        sample = await corpus_messages(ms, wl.memories[n : n + 200])
        seconds, _, added = await concurrent_adds(ms, wl.memories[:n], writers, wait=False)
    finally:
        await ms.close()
    if added != n:
        raise RuntimeError(f"appends: {added} of {n} adds were ADDs")
    return seconds, sample


async def stage_append(run: Run, wl: Workload, kafka: str | None) -> None:
    a = run.args
    n = 2000 if a.quick else 10_000
    writers = a.writers
    out: dict[str, object] = {"appends": n, "writers": writers}
    with tempfile.TemporaryDirectory(prefix="memstream-append-") as tmp:
        seconds, sample = await _appends(Path(tmp) / "file", None, wl, n, writers)
        size = round(statistics.mean(len(k) + len(v) for k, v in sample))
        plain = plain_fsync_loop(Path(tmp) / "plain.log", sample, n)
        run.result["file_append_eps"] = round(n / seconds, 1)
        run.result["file_log_limit_eps"] = round(n / plain, 1)
        run.result["file_append_ratio"] = ratio(n / seconds, n / plain)
        out["record_bytes"] = size
        say(f"file log: {n / seconds:,.0f} appends/s by {writers} writers, a plain fsynced "
            f"loop of the same bytes {n / plain:,.0f}/s")  # fmt: skip
        if kafka is None:
            out["kafka"] = "not measured: no broker in this run"
        else:
            rounds = 1 if a.quick else 3

            async def ours(i: int) -> float:
                seconds, _ = await _appends(Path(tmp) / f"kafka-{i}", kafka, wl, n, writers)
                return n / seconds

            eps, limit, ratios, lines = await bracketed(
                rounds, lambda: kafka_perf_test(kafka, max(n, 20_000), size), ours
            )
            run.result["append_eps"] = round(eps, 1)
            run.result["log_limit_eps"] = round(limit, 1)
            run.result["append_ratio"] = round(statistics.median(ratios), 3)
            out["append_ratios"] = [round(r, 3) for r in ratios]
            out["kafka_perf_test"] = lines
            say(f"kafka: {eps:,.0f} appends/s by {writers} writers (median of {rounds}); "
                f"kafka-producer-perf-test {limit:,.0f} records/s of {size} B (acks=all, "
                f"median of {rounds + 1}); append_ratio per round "
                + ", ".join(f"{r:.2f}" for r in ratios))  # fmt: skip
    out["what"] = (
        "Memstream.add(text, wait=False) by `writers` tasks: durable (fsynced / acks=all) "
        "appends, no projection; against kafka-producer-perf-test on the same broker "
        "(records of record_bytes, acks=all, unthrottled) and a write+fsync loop of the "
        "same messages' bytes"
    )
    run.details["append"] = out
