"""The CLI's fast paths (issue 16, section 7) give the answers of the full path, and a command
imports only what it uses.

Real `python -m memstream.cli` processes on a real data directory. `get-all` and `search` of
a current projection are answered through `lance` alone (memstream/light_reads.py), and so
is `add` applied (memstream/light_writes.py); with MEMSTREAM_LIGHT_READS=0 and
MEMSTREAM_LIGHT_ADD=0 they take the full path (`Memstream`), so the two can be compared
byte for byte. No timings here: bench/stages/cli.py measures them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memstream.settings import Settings
from tests.e2e.test_cli import clean_env
from tests.integration.test_erasure_crash import kill_child

# what no command below needs: the REST server, Kafka, the LLM SDK, the ONNX model, DuckDB,
# LanceDB (the light path reads through `lance`), pydantic (typer's coercion of unset options)
HEAVY = ("lancedb", "fastapi", "uvicorn", "aiokafka", "openai", "onnxruntime", "tokenizers",
         "duckdb", "pydantic", "httpx")  # fmt: skip
# run the CLI and record which modules it imported (also when it exits with an error)
RECORDING = (
    "import json, os, sys\n"
    "from memstream.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    with open(os.environ['MODULES_OUT'], 'w') as f:\n"
    "        json.dump(sorted(sys.modules), f)\n"
)


def run(
    data: Path, *args: str, light: bool = True, modules: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "MEMSTREAM_DATA_DIR": str(data), "MEMSTREAM_EMBEDDER": "hashing",
           "MEMSTREAM_LIGHT_READS": "1" if light else "0",
           "MEMSTREAM_LIGHT_ADD": "1" if light else "0", "MEMSTREAM_NO_SERVER": "1"}  # fmt: skip
    if modules is not None:
        env["MODULES_OUT"] = str(modules)
        cmd = [sys.executable, "-c", RECORDING, *args]
    else:
        cmd = [sys.executable, "-m", "memstream.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done


def imported(path: Path) -> set[str]:
    return set(json.loads(path.read_text()))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    run(data, "add", "alice likes green tea", "--user-id", "alice", "--metadata", '{"a": 1}')
    run(data, "add", "alice flies on tuesday", "--user-id", "alice", "--agent-id", "travel")
    run(data, "add", "bob likes black coffee", "--user-id", "bob", "--categories", "food")
    return data


def test_help_imports_no_storage_engine(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    run(tmp_path / "none", "--help", modules=out)
    assert not imported(out) & {*HEAVY, "lance", "pyarrow", "numpy"}


def test_reads_import_only_what_they_use_and_answer_as_the_full_path(
    store: Path, tmp_path: Path
) -> None:
    commands = [
        ("--json", "get-all", "--user-id", "alice"),
        ("get-all", "--user-id", "alice", "--agent-id", "*"),
        ("--json", "search", "tea", "--user-id", "alice", "--agent-id", "*"),
        ("search", "coffee", "--filters", '{"user_id": "bob", "categories": {"in": ["food"]}}'),
    ]
    for args in commands:
        out = tmp_path / "modules.json"
        fast = run(store, *args, modules=out)
        assert not imported(out) & set(HEAVY), args
        assert "lance" in imported(out)  # it did read (through lance)
        full = run(store, *args, light=False)
        assert fast.stdout == full.stdout, args
        assert "alice" in fast.stdout or "bob" in fast.stdout


def test_a_read_the_light_path_cannot_answer_takes_the_full_path(store: Path) -> None:
    args = ("--json", "get-all", "--filters",
            '{"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}')  # fmt: skip
    fast = run(store, *args)
    assert json.loads(fast.stdout)["count"] == 2  # implicit null scoping: not the agent one
    assert fast.stdout == run(store, *args, light=False).stdout


def test_an_unprojected_add_is_seen_by_the_next_read(store: Path) -> None:
    run(store, "add", "carol is new here", "--user-id", "carol", "--no-wait")
    found = json.loads(run(store, "--json", "get-all", "--user-id", "carol").stdout)
    assert [m["memory"] for m in found["results"]] == ["carol is new here"]


def test_an_interrupted_erasure_is_finished_before_a_read(store: Path) -> None:
    kill_child(Settings(data_dir=store, embedder="hashing"), "after-destroy")
    found = json.loads(run(store, "--json", "get-all", "--user-id", "alice").stdout)
    assert found["count"] == 0


def _results(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(done.stdout)["results"]
    return found


def test_an_add_imports_no_lancedb_and_answers_as_the_full_path(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "modules.json"
    added = _results(run(store, "--json", "add", "dave drinks oolong", "--user-id", "dave",
                         "--metadata", '{"cup": 2}', modules=out))  # fmt: skip
    assert not imported(out) & set(HEAVY)
    assert "lance" in imported(out)  # it did write (through lance)
    assert [(r["event"], r["memory"]) for r in added] == [("ADD", "dave drinks oolong")]
    # the same text again, light and full: the projector's decision, naming the first memory
    for light in (True, False):
        again = _results(run(store, "--json", "add", "dave drinks oolong", "--user-id", "dave",
                             light=light))  # fmt: skip
        assert again == [{**added[0], "event": "NONE"}]
    for light in (True, False):  # applied: every read path sees it at once
        found = json.loads(run(store, "--json", "get-all", "--user-id", "dave", light=light).stdout)
        assert [(m["id"], m["metadata"]) for m in found["results"]] == [
            (added[0]["id"], {"cup": 2})
        ]
    # a table of results as the full path prints it
    light_table = run(store, "add", "dave likes rain", "--user-id", "dave").stdout
    full_table = run(store, "add", "dave likes snow", "--user-id", "dave", light=False).stdout
    assert light_table.split()[0] == full_table.split()[0] == "ADD"
    assert "dave likes rain" in light_table


def test_an_add_behind_an_unprojected_one_takes_the_full_path(store: Path) -> None:
    run(store, "add", "erin is pending", "--user-id", "erin", "--no-wait")
    out = run(store, "--json", "add", "erin is applied", "--user-id", "erin")
    assert [r["event"] for r in _results(out)] == ["ADD"]
    found = json.loads(run(store, "--json", "get-all", "--user-id", "erin").stdout)
    assert sorted(m["memory"] for m in found["results"]) == ["erin is applied", "erin is pending"]
