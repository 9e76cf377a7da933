"""Erasure survives a crash at any step, and reaches every copy (issue 13).

Real processes are SIGKILLed at the two dangerous points: an erase just after the subject's
keys were destroyed and before its `SubjectErased` was logged, and a replay after it wrote a
partial generation and before it promoted it. Afterwards the next process (or a rerun of
the erase) must leave no erased text in any file under the data directory.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from memstream.fsutil import SCRATCH, scratch_dir
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_erasure import BOB, files_under, go, leaks, write_alice_and_bob

KILLED = -signal.SIGKILL

# run in a child process; argv[1] is the settings as JSON, argv[2] the step to die after
CHILD = r"""
import asyncio, json, os, signal, sys
from pathlib import Path
from memstream.keystore.base import Subject
from memstream.service import Memstream
from memstream.settings import Settings

raw = json.loads(sys.argv[1])
settings = Settings(data_dir=Path(raw["data_dir"]), kafka_bootstrap=raw["kafka"],
                    topic=raw["topic"], embedder="hashing")

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    ms = Memstream(settings)
    await ms.start()
    if sys.argv[2] == "after-destroy":
        await ms.projector.keys.destroy(Subject("local", "default", "user_id", "alice"))
        die()  # the SubjectErased event is never appended
    elif sys.argv[2] == "mid-replay":
        await ms.projector.replay(progress=die)  # after the first batch, before promote
    elif sys.argv[2] == "mid-export":  # as POST /v1/exports/download/ builds its file
        from memstream.fsutil import scratch_dir
        with scratch_dir(settings.data_dir, "export-") as tmp:
            await ms.export(tmp / "memories.jsonl", "jsonl", {"user_id": "alice"})
            die()

asyncio.run(main())
"""


def kill_child(settings: Settings, step: str) -> None:
    raw = {"data_dir": str(settings.data_dir), "kafka": settings.kafka_bootstrap,
           "topic": settings.topic}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(raw), step],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == KILLED, (proc.returncode, proc.stderr[-3000:])


async def alice_and_bob(ms: Memstream) -> list[str]:
    page = await ms.get_all({"user_id": ["alice", "bob"], "agent_id": ["*", None],
                             "run_id": ["*", None]}, show_expired=True)  # fmt: skip
    return sorted(m.memory for m in page.results)


def test_an_erase_killed_after_destroying_the_key_is_finished_by_the_next_process(
    settings: Settings,
) -> None:
    go(settings, write_alice_and_bob)
    assert leaks(files_under(settings.data_dir))  # the projection holds alice's plaintext
    kill_child(settings, "after-destroy")
    # the state the issue found: the key is gone, no SubjectErased, plaintext still projected
    assert leaks(files_under(settings.data_dir))

    async def next_process(ms: Memstream) -> list[str]:
        await ms.catch_up()  # start() logged the missing SubjectErased; apply it
        return await alice_and_bob(ms)

    assert go(settings, next_process) == [BOB]
    assert leaks(files_under(settings.data_dir)) == []


def test_rerunning_an_interrupted_erase_finishes_it(settings: Settings) -> None:
    """The rerun path on its own: a process that was already running (so its start-up had
    nothing to finish) is asked to erase again after another process's erase was killed."""
    go(settings, write_alice_and_bob)

    async def rerun(ms: Memstream) -> tuple[dict[str, object], list[str]]:
        await asyncio.to_thread(kill_child, settings, "after-destroy")
        out = await ms.erase(user_id="alice", reason="rerun")
        await ms.catch_up()
        return out, await alice_and_bob(ms)

    out, left = go(settings, rerun)
    assert left == [BOB]
    assert leaks(files_under(settings.data_dir)) == []
    assert out["keys_destroyed"] == 0 and out["keys_already_destroyed"] == 1, out


def test_a_killed_replay_leaves_nothing_an_erase_would_not_reach(settings: Settings) -> None:
    go(settings, write_alice_and_bob)
    before = {p.name for p in (settings.data_dir / "projections").iterdir() if p.is_dir()}
    kill_child(settings, "mid-replay")
    partial = [
        p for p in (settings.data_dir / "projections").iterdir()
        if p.is_dir() and p.name not in before
    ]  # fmt: skip
    assert partial and leaks(files_under(partial[0]))  # a half-built copy with plaintext

    async def erase(ms: Memstream) -> list[str]:
        await ms.erase(user_id="alice")
        await ms.catch_up()
        return await alice_and_bob(ms)

    assert go(settings, erase) == [BOB]
    assert leaks(files_under(settings.data_dir)) == []
    assert not any(p.exists() for p in partial)


def test_a_killed_export_leaves_nothing_an_erase_would_not_reach(settings: Settings) -> None:
    go(settings, write_alice_and_bob)
    kill_child(settings, "mid-export")
    scratch = settings.data_dir / SCRATCH
    assert leaks(files_under(scratch))  # the half-sent export's plaintext, under the data dir

    async def erase(ms: Memstream) -> list[str]:
        with scratch_dir(settings.data_dir, "export-") as live:  # one in use is kept
            (live / "note").write_text("in use")
            await ms.erase(user_id="alice")
            await ms.catch_up()
            assert (live / "note").exists()
        return await alice_and_bob(ms)

    assert go(settings, erase) == [BOB]
    assert leaks(files_under(settings.data_dir)) == []
    assert list(scratch.iterdir()) == []
