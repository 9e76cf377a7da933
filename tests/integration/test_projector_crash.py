"""Kill the projector with SIGKILL in the middle of a 5,000-event stream and restart it:
no memory lost, none duplicated (on the file log and on real Kafka)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from memstream.events import MemoryAdded, message_of, new_id, text_hash
from memstream.scope import Scope
from memstream.service import open_log
from memstream.settings import Settings
from tests.servers import log_env

N = 5000


def cli_args(settings: Settings) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "memstream.cli",
        "--data-dir",
        str(settings.data_dir),
        "--embedder",
        settings.embedder,
    ]
    if settings.kafka_bootstrap:
        args += ["--kafka", settings.kafka_bootstrap, "--topic", settings.topic]
    return args


def checkpoint_total(data_dir: Path) -> int:
    current = data_dir / "projections" / "CURRENT"
    if not current.exists():
        return 0
    cp = data_dir / "projections" / current.read_text().strip() / "checkpoint.json"
    try:
        return sum(json.loads(cp.read_text())["offsets"].values())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def kill_projector_after(settings: Settings, at_least: int, batch_size: int = 50) -> int:
    proc = subprocess.Popen([*cli_args(settings), "project", "--batch-size", str(batch_size)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=log_env())  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while checkpoint_total(settings.data_dir) < at_least:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "projector made no progress"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return checkpoint_total(settings.data_dir)


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(settings: Settings) -> None:
    scopes = [
        Scope("local", "default", user_id=f"u{i}", run_id=(f"r{i % 3}" if i % 2 else None))
        for i in range(10)
    ]
    events = [
        MemoryAdded(
            scope=scopes[i % 10],
            memory_id=new_id(),
            text=f"memory number {i}",
            hash=text_hash(f"memory number {i}"),
        )
        for i in range(N)
    ]

    async def write() -> None:
        log = open_log(settings)
        await log.start()
        try:
            for i in range(0, N, 500):
                await log.append([message_of(e) for e in events[i : i + 500]])
        finally:
            await log.close()

    settings.data_dir.mkdir(parents=True)
    asyncio.run(write())

    first = kill_projector_after(settings, 1000)
    assert 1000 <= first < N, f"killed at {first}: not in the middle"
    second = kill_projector_after(settings, first + 1000)
    assert second < N, f"killed at {second}: not in the middle"

    done = subprocess.run(
        [*cli_args(settings), "--json", "project", "--once"],
        capture_output=True,
        text=True,
        timeout=300,
        env=log_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["position"] == N

    import lancedb

    gen = (
        settings.data_dir
        / "projections"
        / (settings.data_dir / "projections" / "CURRENT").read_text().strip()
    )
    db = lancedb.connect(gen / "lance")
    memories = db.open_table("memories").to_arrow()
    ids = memories["id"].to_pylist()
    assert len(ids) == N and len(set(ids)) == N  # none lost, none duplicated
    assert set(ids) == {e.memory_id for e in events}
    texts = dict(zip(ids, memories["text"].to_pylist(), strict=True))
    assert all(texts[e.memory_id] == e.text for e in events)
    audit = db.open_table("events").to_arrow()
    assert audit.num_rows == N and len(set(audit["event_id"].to_pylist())) == N
    assert set(audit["outcome"].to_pylist()) == {"ADD"}
