"""The CLI as a user runs it: real subprocesses, one JSON document per command with --json,
clear errors that write nothing, and several processes sharing one data directory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memstream.events import Actor
from memstream.service import Memstream
from memstream.settings import Settings


def clean_env() -> dict[str, str]:
    """The environment minus what would point a CLI at another log or data dir."""
    hidden = (
        "KAFKA_BOOTSTRAP_SERVERS",
        "MEMSTREAM_DATA_DIR",
        "MEMSTREAM_EMBEDDER",
        "MEMSTREAM_TOPIC",
    )
    return {k: v for k, v in os.environ.items() if k not in hidden}


def command(settings: Settings, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "memstream.cli", "--data-dir", str(settings.data_dir),
           "--embedder", settings.embedder]  # fmt: skip
    if settings.kafka_bootstrap:
        cmd += ["--kafka", settings.kafka_bootstrap, "--topic", settings.topic]
    return [*cmd, *args]


def cli(settings: Settings, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        command(settings, *args), capture_output=True, text=True, timeout=300, env=clean_env()
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_at_once(
    settings: Settings, *commands: tuple[str, ...], ok: bool = True
) -> list[subprocess.CompletedProcess[str]]:
    """Several `memstream` processes started together, for commands none of which changes
    what another answers (reads, or refusals that write nothing): each is still its own
    process checked on its own, but the 1-6 s process starts overlap instead of adding up."""
    procs = [subprocess.Popen(command(settings, *args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              env=clean_env())
             for args in commands]  # fmt: skip
    done = []
    for args, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        if ok:
            assert p.returncode == 0, (args, err)
    return done


def seed(settings: Settings, *adds: tuple[str, dict[str, Any]]) -> None:
    """Add memories in this process, as `memstream add` would (the same log, data dir,
    embedder and actor): for state a test needs before the commands it checks, which each
    run in a real `memstream` process (one process start saved per memory, 1-6 s each)."""

    async def main() -> None:
        async with Memstream(settings) as ms:
            for text, ids in adds:
                await ms.add(text, actor=Actor(source="cli"), **ids)

    asyncio.run(main())


def doc(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)  # exactly one JSON document, or this raises


@pytest.fixture(params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "kafka":
        return Settings(data_dir=tmp_path / "d", embedder="hashing",
                        kafka_bootstrap=request.getfixturevalue("kafka_bootstrap"),
                        topic=request.getfixturevalue("kafka_topic"))  # fmt: skip
    return Settings(data_dir=tmp_path / "d", embedder="hashing")


def test_json_documents_are_shaped_like_the_mem0_responses(settings: Settings) -> None:
    added = doc(cli(settings, "--json", "add", "Prefers aisle seats", "--user-id", "alice",
                    "--agent-id", "travel", "--metadata", '{"source": "chat"}', "--categories", "travel,seats"))  # fmt: skip
    [result] = added["results"]
    assert result["event"] == "ADD" and result["memory"] == "Prefers aisle seats"
    mid = result["id"]
    seed(settings, ("Ticket: lost luggage", {"user_id": "alice", "run_id": "t-1"}))

    listing, search = cli_at_once(
        settings,
        ("--json", "get-all", "--filters", '{"user_id": "alice", "agent_id": "*"}'),
        ("--json", "search", "aisle seats", "--user-id", "alice", "--agent-id", "travel"),
    )
    listed = doc(listing)
    assert listed["count"] == 1
    [m] = listed["results"]
    assert (m["id"], m["agent_id"], m["run_id"], m["session_id"]) == (mid, "travel", None, None)
    assert m["metadata"] == {"source": "chat"} and m["categories"] == ["travel", "seats"]
    assert m["created_at"].endswith("Z")

    found = doc(search)
    assert [r["id"] for r in found["results"]] == [mid] and 0 < found["results"][0]["score"] <= 1

    updated = doc(cli(settings, "--json", "update", mid, "--text", "Prefers window seats"))
    assert updated["memory"] == "Prefers window seats"
    history = doc(cli(settings, "--json", "history", mid))
    assert [h["event"] for h in history["results"]] == ["ADD", "UPDATE"]
    assert history["results"][1]["old_memory"] == "Prefers aisle seats"

    deleted = doc(cli(settings, "--json", "delete-all", "--user-id", "alice", "--run-id", "t-1"))
    assert deleted["message"] == "Memories deleted successfully!" and deleted["count"] == 1
    assert (
        doc(cli(settings, "get", mid, "--json"))["memory"] == "Prefers window seats"
    )  # flag after


def test_bad_input_names_the_problem_and_writes_nothing(tmp_path: Path) -> None:
    """Validation is the same on every log (tests/integration covers both); here the CLI's
    part: exit code, one JSON error document naming the problem, the log untouched."""
    settings = Settings(data_dir=tmp_path / "d", embedder="hashing")
    seed(settings, ("seed", {"user_id": "bob"}))
    log_dir = settings.data_dir / "log"
    before = (
        sorted((p.name, p.stat().st_size) for p in log_dir.glob("*.seg"))
        if not settings.kafka_bootstrap
        else None
    )
    cases = [
        (["get-all", "--filters", '{"user_id": '], "--filters: not valid JSON"),
        (["get-all", "--filters", '{"user_id": "bob", "colour": "red"}'], "filters.colour"),
        (["get-all", "--filters", '{"user_id": 42}'], "filters.user_id"),
        (["add", "   ", "--user-id", "bob"], "must not be empty"),
        (["add", "x", "--user-id", ""], "user_id: must not be empty"),
        (["add", "x", "--user-id", "bob", "--metadata", "[1]"], "metadata: must be a JSON object"),
        (["add", "x"], "at least one of user_id"),
        (["delete-all", "--filters", "{}"], "at least one of"),
    ]
    procs = cli_at_once(settings, *(("--json", *args) for args, _ in cases), ok=False)
    for (args, message), proc in zip(cases, procs, strict=True):
        assert proc.returncode != 0, args
        assert message.lower() in doc(proc)["detail"].lower(), (args, proc.stdout)
    assert sorted((p.name, p.stat().st_size) for p in log_dir.glob("*.seg")) == before
    assert doc(cli(settings, "--json", "get-all", "--user-id", "bob"))["count"] == 1


def test_several_cli_processes_on_one_data_dir_at_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "shared", embedder="hashing")
    seed(settings, ("warm-up", {"user_id": "w"}))  # create the tables once
    base = [
        sys.executable,
        "-m",
        "memstream.cli",
        "--data-dir",
        str(settings.data_dir),
        "--embedder",
        "hashing",
        "--json",
    ]
    procs = [subprocess.Popen([*base, "add", f"note {i}", "--user-id", "crowd", "--run-id", f"r{i % 2}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
             for i in range(4)]  # fmt: skip
    procs.append(subprocess.Popen([*base, "get-all", "--filters", '{"user_id": "crowd", "run_id": "*"}'],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=clean_env()))  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        json.loads(out)
    final = doc(
        cli(settings, "--json", "get-all", "--filters", '{"user_id": "crowd", "run_id": "*"}')
    )
    assert sorted(m["memory"] for m in final["results"]) == sorted(f"note {i}" for i in range(4))
    # the log is intact: a replay rebuilds exactly the same memories
    assert doc(cli(settings, "--json", "replay"))["events"] == 5
    again = doc(
        cli(settings, "--json", "get-all", "--filters", '{"user_id": "crowd", "run_id": "*"}')
    )
    assert {m["id"] for m in again["results"]} == {m["id"] for m in final["results"]}


def test_demo_runs_on_the_default_embedder(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "memstream.cli", "demo"], capture_output=True, text=True,
                          timeout=300, env=clean_env(), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ticket-2 is untouched" in proc.stdout
    assert "replayed 13 events; alice's agent memories after replay: identical" in proc.stdout
    # the semantic search ranks the beach hotel first for a question about sleeping by the sea
    section = proc.stdout.split("search 'where should I sleep by the sea?'")[1]
    first_row = next(line for line in section.splitlines() if "│" in line and "Alice" in line)
    assert "hotel near the beach" in first_row
    assert "bob's memories now: 0" in proc.stdout
    assert "holding 'marathon': none" in " ".join(proc.stdout.split())


def test_erase_asks_first_and_then_erases(settings: Settings) -> None:
    seed(
        settings, ("alice's private note", {"user_id": "alice"}), ("bob's note", {"user_id": "bob"})
    )
    refused, both = cli_at_once(
        settings,
        ("erase", "--user-id", "alice"),  # stdin is not a terminal
        ("erase", "--user-id", "alice", "--agent-id", "x", "--yes"),
        ok=False,
    )
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert both.returncode == 2 and "exactly one" in both.stderr
    done = doc(cli(settings, "erase", "--user-id", "alice", "--yes", "--reason", "t-1", "--json"))
    assert done["subject"] == {"user_id": "alice"} and done["memories_erased"] == 1
    alice, bob, audited, log_all, log_one = cli_at_once(
        settings,
        ("--json", "get-all", "--user-id", "alice"),
        ("--json", "get-all", "--user-id", "bob"),
        ("--json", "audit", "--filters", '{"user_id": "alice"}'),
        ("--json", "log", "--limit", "0"),
        ("--json", "log", "--from", "1", "--limit", "1"),
    )
    assert doc(alice)["results"] == []
    assert [m["memory"] for m in doc(bob)["results"]] == ["bob's note"]
    audit = doc(audited)
    assert "alice's private note" not in json.dumps(audit)
    assert {e["event"] for e in audit["results"]} >= {"ERASED", "ERASE_SUBJECT"}
    # the raw log, decoded: alice's event is there, unreadable; bob's opens
    logged = doc(log_all)["events"]
    assert "alice's private note" not in json.dumps(logged)
    by_user = {(e["event_type"], e.get("user_id")): e for e in logged}
    assert by_user[("MemoryAdded", "alice")]["erased"] is True
    assert "text" not in by_user[("MemoryAdded", "alice")]
    assert by_user[("MemoryAdded", "bob")]["text"] == "bob's note"
    assert by_user[("SubjectErased", "alice")]["reason"] == "t-1"
    assert len(doc(log_one)["events"]) == 1


def test_replay_with_another_embedder_re_embeds_everything(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", embedder="hashing")
    cli(settings, "add", "likes green tea", "--user-id", "u1")
    base = [sys.executable, "-m", "memstream.cli", "--data-dir", str(settings.data_dir)]
    proc = subprocess.run([*base, "--json", "replay", "--embedder", "minilm"],
                          capture_output=True, text=True, timeout=300, env=clean_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert doc(proc)["events"] == 1
    projections = settings.data_dir / "projections"
    meta = projections / (projections / "CURRENT").read_text().strip() / "meta.json"
    assert json.loads(meta.read_text())["embedder"].startswith("minilm")
    # no --embedder now: the projection's own model answers the search
    proc = subprocess.run([*base, "--json", "search", "what does u1 drink?", "--user-id", "u1"],
                          capture_output=True, text=True, timeout=300, env=clean_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [m["memory"] for m in doc(proc)["results"]] == ["likes green tea"]
