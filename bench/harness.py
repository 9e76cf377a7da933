"""What every benchmark stage shares: the tenant, the run record (`Run`), timing and
statistics helpers, a throwaway Kafka broker, concurrent adds and the settings of a
fresh store. `run.py`, `scenario.py` and `compare.py` import it with bench/ on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

from workload import Memory

from memstream.crypto import keyed_hash
from memstream.events import Actor, MemoryAdded, message_of, new_id, text_hash
from memstream.keystore.base import Subject
from memstream.models import Tenant
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

ORG, PROJECT = "bench-org", "bench-proj"
TENANT = Tenant(ORG, PROJECT)
TOP_K = 10


# -- small helpers ---------------------------------------------------------------------------
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def p95(values: list[float]) -> float | None:
    return round(percentile(values, 0.95), 3) if values else None


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("inf")


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a process (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def added_event(m: Memory) -> MemoryAdded:
    """A plaintext MemoryAdded for one message (for `compare.py`, whose older installs
    may not seal events; `corpus_messages` is what `Memstream.add` appends today)."""
    return MemoryAdded(
        scope=Scope.of(ORG, PROJECT, **m.entities()), memory_id=new_id(),
        actor=Actor(source="bench"), text=m.text, hash=text_hash(m.text),
        source_hash=text_hash(m.text),
    )  # fmt: skip


async def corpus_messages(ms: Memstream, memories: list[Memory]) -> list[tuple[bytes, bytes]]:
    """The log messages `Memstream.add(m.text, ...)` appends for these memories: each
    subject's key is made as the writer makes it, texts are hashed with it and the event
    sealed under it, so bulk projection and replay pay for opening them as they would."""
    out = []
    for m in memories:
        scope = Scope.of(ORG, PROJECT, **m.entities())
        subject = Subject.of_scope(scope)
        assert subject is not None
        key = await ms.projector.keys.key_for(subject)
        digest = keyed_hash(key, m.text)
        event = MemoryAdded(scope=scope, memory_id=new_id(), actor=Actor(source="bench"),
                            text=m.text, hash=digest, source_hash=digest)  # fmt: skip
        out.append(message_of(event, key))
    return out


class Run:
    """Holds the record being built; each stage fills its part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict[str, Any] = {}
        self.details: dict[str, Any] = {}
        self.notes: list[str] = []
        self.errors: dict[str, str] = {}
        self.stage_seconds: dict[str, float] = {}

    def stage(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        say(f"== {name}")
        start = time.perf_counter()
        try:
            asyncio.run(fn())
        except Exception as exc:  # one failed stage must not lose the others' figures
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            say(f"!! {name} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        self.stage_seconds[name] = round(time.perf_counter() - start, 1)


# -- 2. Kafka --------------------------------------------------------------------------------
class LocalKafka:
    """scripts/kafka-local start/stop in a temporary state directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="memstream-bench-kafka-"))
        self.bootstrap: str | None = None

    def start(self) -> str:
        env = {**os.environ, "KAFKA_LOCAL_START_TIMEOUT": "150"}
        proc = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "kafka-local"), "start",
             "--dir", str(self.dir), "--owner-pid", str(os.getpid())],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("KAFKA_BOOTSTRAP_SERVERS=")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"kafka-local start failed: {proc.stderr.strip()[-500:]}")
        self.bootstrap = lines[-1].split("=", 1)[1].strip()
        return self.bootstrap

    def stop(self) -> None:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "kafka-local"), "stop", "--dir", str(self.dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


# -- shared by the ingest, corpus and search stages (and scenario.py, compare.py) ----------
async def concurrent_adds(
    ms: Memstream, memories: list[Memory], writers: int, *, wait: bool
) -> tuple[float, list[float], int]:
    """`writers` asyncio tasks add `memories` one per call; returns (seconds, latencies ms, ADDs)."""
    queue = list(reversed(memories))
    latencies: list[float] = []
    added = 0

    async def writer() -> None:
        nonlocal added
        while queue:
            m = queue.pop()
            t = time.perf_counter()
            results = await ms.add(m.text, tenant=TENANT, **m.entities(), wait=wait)
            latencies.append((time.perf_counter() - t) * 1000)
            added += sum(1 for r in results if r.event == "ADD")

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - start, latencies, added


def on_batches(ms: Memstream, observe: Callable[[int], Any]) -> Callable[[], None]:
    """Call `observe(size)` after every live batch `ms`'s projector applies from now on;
    returns what undoes it."""
    apply = ms.projector._apply_sync

    def observed(gen: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
        out = apply(gen, records, *args, **kwargs)
        observe(len(records))
        return out

    ms.projector._apply_sync = observed  # type: ignore[method-assign]
    return lambda: setattr(ms.projector, "_apply_sync", apply)


def count_batches(ms: Memstream) -> list[int]:
    """A list that gets the size of every batch `ms`'s projector applies from now on."""
    sizes: list[int] = []
    on_batches(ms, sizes.append)
    return sizes


def settings_for(data_dir: Path, embedder: str, kafka: str | None) -> Settings:
    return Settings(
        data_dir=data_dir, kafka_bootstrap=kafka, embedder=embedder, org_id=ORG,
        project_id=PROJECT, topic=f"bench-{uuid.uuid4().hex[:10]}", partitions=3,
    )  # fmt: skip
