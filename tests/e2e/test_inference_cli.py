"""`memstream add --infer` and `memstream reinfer` as a user runs them, against a scripted
chat-completions server on loopback (file log): a filter selecting two users, the candidate
read with the ordinary read commands, the swap and a replay with the LLM server stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.llm_server import ScriptedLLM, decide, facts
from tests.servers import log_env

MEMSTREAM = [sys.executable, "-m", "memstream.cli"]
BOTH = json.dumps({"user_id": {"in": ["alice", "bob"]}})


def cli(data: Path, llm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `memstream` with the LLM endpoint `llm` (still given once its server stopped)."""
    return subprocess.run(
        [*MEMSTREAM, "--data-dir", str(data), "--embedder", "hashing",
         "--llm-base-url", llm, "--llm-model", "model-a", "--json", *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=log_env(),
    )  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_user(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for m in doc["results"]:
        out.setdefault(m["user_id"], {})[m["id"]] = m["memory"]
    return out


def test_reinfer_a_filter_into_a_candidate_then_swap(tmp_path: Path) -> None:
    with ScriptedLLM() as server:
        llm = server.base_url
        server.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        answer = ok(cli(tmp_path, llm, "add", "--infer", "I like tea", "--user-id", "alice"))
        assert answer["inference"] == "on"
        assert [r["memory"] for r in answer["results"]] == ["Likes tea"]
        server.push(
            facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"})
        )
        ok(cli(tmp_path, llm, "add", "--infer", "I play chess", "--user-id", "bob"))

        server.push(facts("Loves tea"), decide({"id": "0", "text": "Loves tea", "event": "UPDATE"}))
        # the first conversation re-decided: nothing stored before it, so "0" is unknown
        failed = cli(tmp_path, llm, "reinfer", "--user-id", "alice", "--model", "model-b")
        assert failed.returncode == 1
        assert "unknown memory id '0'" in json.loads(failed.stdout)["detail"]

        server.push(
            facts("Loves tea"),
            decide({"id": "n", "text": "Loves tea", "event": "ADD"}),
            facts("Plays chess", "Likes go"),
            decide(
                {"id": "n", "text": "Plays chess", "event": "ADD"},
                {"id": "n", "text": "Likes go", "event": "ADD"},
            ),
        )
        plan = ok(cli(tmp_path, llm, "reinfer", "--filters", BOTH, "--model", "model-b"))
        assert plan["swapped"] is False and plan["model"] == "model-b"
        assert plan["scopes"] == [{"user_id": "alice"}, {"user_id": "bob"}]
        assert sorted(a["text"] for a in plan["appear"]) == ["Likes go", "Loves tea"]
        assert [g["text"] for g in plan["go"]] == ["Likes tea"] and plan["unchanged"] == 1
        proposal = plan["proposal_id"]
        assert (tmp_path / "projections" / plan["generation"] / "CANDIDATE").is_file()

        candidate = by_user(ok(cli(tmp_path, llm, "get-all", "--filters", BOTH,
                                   "--candidate", proposal)))  # fmt: skip
        assert sorted(candidate["alice"].values()) == ["Loves tea"]
        assert sorted(candidate["bob"].values()) == ["Likes go", "Plays chess"]
        live = by_user(ok(cli(tmp_path, llm, "get-all", "--filters", BOTH)))
        assert sorted(live["alice"].values()) == ["Likes tea"]  # nothing live changed
        assert sorted(live["bob"].values()) == ["Plays chess"]
        hits = ok(
            cli(tmp_path, llm, "search", "tea", "--user-id", "alice", "--candidate", proposal)
        )
        assert [h["memory"] for h in hits["results"]] == ["Loves tea"]

        server.stop()  # from here on nothing may need the LLM
        swapped = ok(cli(tmp_path, llm, "reinfer", "swap", proposal))
        assert sorted(r["event"] for r in swapped["results"]) == ["ADD", "ADD", "DELETE"]
        assert not (tmp_path / "projections" / plan["generation"]).exists()
        ok(cli(tmp_path, llm, "replay"))
        assert by_user(ok(cli(tmp_path, llm, "get-all", "--filters", BOTH))) == candidate

        audit = ok(cli(tmp_path, llm, "audit", "--user-id", "alice"))["results"]
        why = [e["inference"]["explanation"] for e in audit if e.get("inference")]
        assert why[0].startswith("added by inference (model model-a) from the messages of ")
        assert len(why) == 3 and all("(model model-b)" in w for w in why[1:])
        assert sorted(w.split()[0] for w in why[1:]) == ["added", "deleted"]
        assert [r["model"] for r in server.requests] == ["model-a"] * 4 + ["model-b"] * 6
