"""SIGKILL the projector at 10 random points of a 20,000-event stream of adds, updates and
deletes (the embedded file log, the hashing embedder): once it finally catches up, the
projection equals a reference fold of the same events computed here in plain Python."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from pathlib import Path

import pytest

from memstream.events import (
    Event,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    message_of,
    new_id,
    text_hash,
)
from memstream.scope import Scope
from memstream.service import open_log
from memstream.settings import Settings
from tests.integration.test_projector_crash import checkpoint_total, cli_args, kill_projector_after
from tests.servers import log_env

N = 20_000
KILLS = 10


def stream(rng: random.Random) -> tuple[list[Event], dict[str, str]]:
    """The events, and their reference fold: live memory id -> text."""
    scopes = [Scope("local", "default", user_id=f"u{i}") for i in range(20)]
    events: list[Event] = []
    live: dict[str, tuple[Scope, str]] = {}
    ids: list[str] = []
    for i in range(N):
        roll = rng.random()
        if roll < 0.7 or len(live) < 10:
            scope, text, mid = scopes[i % 20], f"fact {i}", new_id()
            events.append(MemoryAdded(scope=scope, memory_id=mid, text=text, hash=text_hash(text)))
            live[mid] = (scope, text)
            ids.append(mid)
        else:
            mid = rng.choice(ids)
            while mid not in live:
                mid = rng.choice(ids)
            scope, old = live[mid]
            if roll < 0.9:
                text = f"fact {i} (revised)"
                events.append(MemoryUpdated(scope=scope, memory_id=mid, text=text,
                                            hash=text_hash(text), previous_hash=text_hash(old)))  # fmt: skip
                live[mid] = (scope, text)
            else:
                events.append(MemoryDeleted(scope=scope, memory_id=mid))
                del live[mid]
    return events, {mid: text for mid, (_, text) in live.items()}


@pytest.mark.slow
def test_ten_sigkills_at_random_points_end_equal_to_the_reference_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the projector processes flush their fresh tier every two batches (projector/tier.py):
    # each kill lands with up to 400 applied events in memory only, and the checkpoint (the
    # last flushed position) moves often enough for every kill to land mid-stream
    monkeypatch.setenv("MEMSTREAM_TIER_ROWS", "300")
    rng = random.Random(20_000)
    settings = Settings(data_dir=tmp_path, embedder="hashing")
    events, fold = stream(rng)

    async def write() -> None:
        log = open_log(settings)
        await log.start()
        try:
            for i in range(0, N, 1000):
                await log.append([message_of(e) for e in events[i : i + 1000]])
        finally:
            await log.close()

    asyncio.run(write())
    points = sorted(rng.sample(range(500, N - 500), KILLS))
    killed_at = [kill_projector_after(settings, point, batch_size=200) for point in points]
    assert all(k < N for k in killed_at), killed_at  # every kill landed mid-stream
    done = subprocess.run([*cli_args(settings), "--json", "project", "--once"],
                          capture_output=True, text=True, timeout=300, env=log_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert checkpoint_total(tmp_path) == N

    import lancedb

    gen = tmp_path / "projections" / (tmp_path / "projections" / "CURRENT").read_text().strip()
    db = lancedb.connect(gen / "lance")
    memories = db.open_table("memories").to_arrow()
    got = dict(zip(memories["id"].to_pylist(), memories["text"].to_pylist(), strict=True))
    assert len(got) == memories.num_rows  # no duplicated rows
    assert got == fold
    audit = db.open_table("events").to_arrow()
    assert audit.num_rows == N and len(set(audit["event_id"].to_pylist())) == N
    assert json.loads(done.stdout)["position"] == N
