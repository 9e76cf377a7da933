"""`memstream replay --to-position N`: rebuild a prefix of the log, swap it in, pin it there;
writers are refused (409) before appending; `memstream replay` rebuilds to the end and unpins."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from memstream.errors import ConflictError, ValidationError
from memstream.service import Memstream
from memstream.settings import Settings
from tests.servers import log_env


def position_of(end: dict[int, int]) -> str:
    """The last event of every non-empty partition, as --to-position spells it."""
    return ",".join(f"{p}:{o - 1}" for p, o in sorted(end.items()) if o > 0)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "memstream.cli", "--data-dir", str(settings.data_dir),
           "--embedder", str(settings.embedder)]  # fmt: skip
    if settings.kafka_bootstrap:
        cmd += ["--kafka", settings.kafka_bootstrap, "--topic", settings.topic]
    return subprocess.run(
        [*cmd, "--json", *args], capture_output=True, text=True, timeout=120, env=log_env()
    )


def test_replay_to_position_pins_and_replay_unpins(settings: Settings) -> None:
    async def texts(ms: Memstream) -> set[str]:
        page = await ms.get_all({"user_id": "alice"}, page_size=100)
        return {m.memory for m in page.results}

    async def body() -> str:
        async with Memstream(settings) as ms:
            [first] = await ms.add("likes tea", user_id="alice")
            await ms.add("lives in Lisbon", user_id="alice")
            cut = position_of(await ms.log.end_offsets())
            await ms.add("plays chess", user_id="alice")
            await ms.update(first.id, text="likes green tea")
            end = await ms.log.end_offsets()

            assert await ms.replay(to_position=cut) == 2
            assert ms.status()["pinned"] == cut
            assert await texts(ms) == {"likes tea", "lives in Lisbon"}
            with pytest.raises(ConflictError, match="memstream replay") as refused:
                await ms.add("speaks Dutch", user_id="alice")
            assert refused.value.status_code == 409 and cut in refused.value.message
            with pytest.raises(ConflictError):
                await ms.delete(first.id)
            assert await ms.log.end_offsets() == end  # refused before appending
        return cut

    cut = asyncio.run(body())

    # another process sees the pin: the CLI's status, stats and writes
    status = cli(settings, "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pinned"] == cut
    stats = cli(settings, "stats", "--user-id", "alice")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["pinned"] == cut
    add = cli(settings, "add", "speaks Dutch", "--user-id", "alice")
    assert add.returncode != 0 and "pinned" in json.loads(add.stdout)["detail"]

    async def unpin() -> None:
        async with Memstream(settings) as ms:
            assert await texts(ms) == {"likes tea", "lives in Lisbon"}  # not advanced
            assert await ms.replay() == 4
            assert ms.status()["pinned"] is None
            assert await texts(ms) == {"likes green tea", "lives in Lisbon", "plays chess"}
            [added] = await ms.add("speaks Dutch", user_id="alice")
            assert added.event == "ADD"

    asyncio.run(unpin())


def test_replay_to_position_refuses_what_the_log_does_not_hold(settings: Settings) -> None:
    async def body() -> None:
        async with Memstream(settings) as ms:
            await ms.add("likes tea", user_id="alice")
            end = await ms.log.end_offsets()
            [p] = [p for p, o in end.items() if o > 0]
            with pytest.raises(ValidationError, match="no position"):
                await ms.replay(to_position=f"{p}:{end[p]}")
            with pytest.raises(ValidationError, match="not a time"):
                await ms.replay(to_position="2026-01-01T00:00:00Z")
            assert ms.status()["pinned"] is None

    asyncio.run(body())
