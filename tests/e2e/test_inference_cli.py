"""`memstream add --infer` and `memstream reinfer` as a user runs them, against a scripted
chat-completions server on loopback (file log)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.llm_server import ScriptedLLM, decide, facts

MEMSTREAM = [sys.executable, "-m", "memstream.cli"]


def cli(data: Path, llm: ScriptedLLM, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MEMSTREAM, "--data-dir", str(data), "--embedder", "hashing",
         "--llm-base-url", llm.base_url, "--llm-model", "model-a", "--json", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_add_infer_then_reinfer_and_swap(tmp_path: Path) -> None:
    with ScriptedLLM() as llm:
        llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        done = cli(tmp_path, llm, "add", "--infer", "I like tea", "--user-id", "alice")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["inference"] == "on"
        assert [r["memory"] for r in answer["results"]] == ["Likes tea"]

        llm.push(facts("Loves tea"), decide({"id": "0", "text": "Loves tea", "event": "UPDATE"}))
        # the first conversation re-decided: nothing stored before it, so "0" is unknown
        failed = cli(tmp_path, llm, "reinfer", "--user-id", "alice", "--model", "model-b")
        assert failed.returncode == 1
        assert "unknown memory id '0'" in json.loads(failed.stdout)["detail"]

        llm.push(facts("Loves tea"), decide({"id": "n", "text": "Loves tea", "event": "ADD"}))
        planned = cli(tmp_path, llm, "reinfer", "--user-id", "alice", "--model", "model-b")
        assert planned.returncode == 0, planned.stderr
        plan = json.loads(planned.stdout)
        assert plan["swapped"] is False and plan["model"] == "model-b"
        assert [a["text"] for a in plan["appear"]] == ["Loves tea"]
        assert [g["text"] for g in plan["go"]] == ["Likes tea"]

        llm.push(facts("Loves tea"), decide({"id": "n", "text": "Loves tea", "event": "ADD"}))
        swapped = cli(tmp_path, llm, "reinfer", "--user-id", "alice", "--model", "model-b",
                      "--swap")  # fmt: skip
        assert swapped.returncode == 0, swapped.stderr
        assert sorted(r["event"] for r in json.loads(swapped.stdout)["results"]) == [
            "ADD", "DELETE",
        ]  # fmt: skip
        listed = cli(tmp_path, llm, "get-all", "--user-id", "alice")
        assert [m["memory"] for m in json.loads(listed.stdout)["results"]] == ["Loves tea"]
        assert [r["model"] for r in llm.requests] == ["model-a"] * 2 + ["model-b"] * 6
        audit = json.loads(cli(tmp_path, llm, "audit", "--user-id", "alice").stdout)["results"]
        why = [e["inference"]["explanation"] for e in audit if e.get("inference")]
        assert why[0].startswith("added by inference (model model-a) from the messages of ")
        assert (
            why[1:]
            == [
                w
                for w in why[1:]
                if "(model model-b)" in w and w.split()[0] in ("added", "deleted")
            ]
            and len(why) == 3
        )
