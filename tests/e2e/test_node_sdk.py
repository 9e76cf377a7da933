"""The official `mem0ai` Node SDK (MemoryClient, pinned in tests/e2e/node/package.json),
unchanged, against a real `memstream serve` on the file log with a scripted LLM: `add` with
the SDK's defaults infers, and get/getAll/search/update/history/delete/project update work.

`node tests/e2e/node/sdk_smoke.mjs` makes the calls and prints what the SDK answered; this
test queues the LLM's answers, runs it, and checks the outcome. scripts/test installs the
SDK (`npm ci` in tests/e2e/node). Without node or the installed SDK the test skips, except
in CI (CI=true, MEMSTREAM_REQUIRE_KAFKA=1 or MEMSTREAM_REQUIRE_NODE=1), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llm_server import ScriptedLLM, decide, facts
from tests.servers import Server, start_server, stop_server

PROJECT = Path(__file__).parent / "node"
INSTRUCTIONS = "Remember food and places only."
CATEGORIES = [{"food": "what the user eats"}, {"places": "where the user lives"}]


def _required() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("CI", "MEMSTREAM_REQUIRE_KAFKA", "MEMSTREAM_REQUIRE_NODE")
    )


def pinned_version() -> str:
    version: str = json.loads((PROJECT / "package.json").read_text())["dependencies"]["mem0ai"]
    return version


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "no `node` on PATH (Node.js 18+ runs the mem0ai Node SDK)"
    installed = PROJECT / "node_modules" / "mem0ai" / "package.json"
    if not installed.exists():
        return (
            f"the mem0ai Node SDK is not installed: run `npm ci` in {PROJECT} (scripts/test does)"
        )
    version = json.loads(installed.read_text())["version"]
    if version != pinned_version():
        return (
            f"mem0ai {version} is installed in {PROJECT}, package.json pins "
            f"{pinned_version()}: run `npm ci` there (scripts/test does)"
        )
    return None


@pytest.fixture(scope="module")
def node() -> str:
    missing = _node_missing()
    if missing is not None:
        if _required():
            pytest.fail(f"the Node SDK test needs Node.js and the SDK: {missing}", pytrace=False)
        pytest.skip(missing)
    path = shutil.which("node")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as llm:
        yield llm


@pytest.fixture(scope="module")
def infer_server(
    node: str, scripted: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("node-sdk"), keys={"a": ("org_node", "proj_node", "node")},
        env={"MEMSTREAM_LLM_BASE_URL": scripted.base_url, "MEMSTREAM_LLM_MODEL": "scripted-node",
             "MEMSTREAM_LLM_MAX_RETRIES": "0", "MEMSTREAM_LLM_TIMEOUT_S": "5"},
    )  # fmt: skip
    try:
        yield srv
    finally:
        stop_server(srv)


def run_smoke(node: str, server: Server, user: str, tmp_path: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "MEMSTREAM_URL": server.base_url,
        "MEMSTREAM_API_KEY": server.keys["a"],
        "MEMSTREAM_USER": user,
        "MEMSTREAM_BAD_KEY": "msk_0000000000000000_nope",
        "MEM0_TELEMETRY": "false",  # the Node SDK only honours lower-case "false"
        "MEM0_DIR": str(tmp_path / "mem0"),  # never ~/.mem0
    }
    proc = subprocess.run(
        [node, str(PROJECT / "sdk_smoke.mjs")], env=env, cwd=PROJECT, capture_output=True,
        text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"node exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def ok(out: dict[str, Any], name: str) -> Any:
    step = out["steps"][name]
    assert step["ok"], f"{name}: the SDK raised {step['error']}"
    return step["value"]


def failed(out: dict[str, Any], name: str) -> dict[str, Any]:
    step = out["steps"][name]
    assert not step["ok"], f"{name}: expected an error, the SDK answered {step['value']}"
    error: dict[str, Any] = step["error"]
    return error


def test_node_sdk_end_to_end_with_inference(
    node: str, infer_server: Server, scripted: ScriptedLLM, tmp_path: Path
) -> None:
    user = f"node-{uuid.uuid4().hex[:8]}"
    scripted.push(
        facts("Is vegetarian", "Lives in Lisbon"),
        decide(
            {"id": "n1", "text": "Is vegetarian", "event": "ADD", "categories": ["food"]},
            {"id": "n2", "text": "Lives in Lisbon", "event": "ADD", "categories": ["places"]},
        ),
        facts("Eats fish now"),
        decide({"id": "0", "text": "Is pescatarian", "event": "UPDATE", "old_memory": "x"}),
        facts("Plays chess"),
        decide({"id": "n", "text": "Plays chess", "event": "ADD"}),
    )
    out = run_smoke(node, infer_server, user, tmp_path)
    assert out["sdk"] == pinned_version()
    # nothing the SDK logged, except the bad key's failed ping
    assert [c for c in out["console"] if not c["step"].startswith("badKey")] == []
    assert any("Failed to initialize client" in c["text"] for c in out["console"])

    # construction pinged; the project is the key's, and update_project steers extraction
    assert out["identity"] == {"organizationId": "org_node", "projectId": "proj_node"}
    assert ok(out, "getProject")["projectId"] == "proj_node"
    assert ok(out, "updateProject")["message"]
    settings = ok(out, "getProjectFields")
    assert settings["customInstructions"] == INSTRUCTIONS
    assert settings["customCategories"] == CATEGORIES
    assert INSTRUCTIONS in scripted.requests[0]["messages"][0]["content"]
    assert "I'm a vegetarian" in scripted.requests[0]["messages"][1]["content"]

    # add(messages) with the SDK's defaults: inferred by the LLM, synchronously
    first = ok(out, "addInferred")
    assert first["inference"] == "on" and "status" not in first
    added = {r["memory"]: r["id"] for r in first["results"] if r["event"] == "ADD"}
    assert set(added) == {"Is vegetarian", "Lives in Lisbon"} and len(first["results"]) == 2
    [update] = ok(out, "addUpdate")["results"]
    assert update["event"] == "UPDATE" and update["memory"] == "Is pescatarian"
    assert added[update["previousMemory"]] == update["id"]  # the shown memory "0", by its id
    verbatim = ok(out, "addVerbatim")
    assert verbatim["inference"] == "not_requested"
    assert [r["memory"] for r in verbatim["results"]] == ["raw note from node"]
    # asyncMode (passed through by the SDK) answers PENDING; the event then reports the add
    queued = ok(out, "addAsync")
    assert (queued["status"], queued["inference"], queued["results"]) == ("PENDING", "on", [])
    chess = ok(out, "asyncAppeared")
    headers = {"Authorization": f"Token {infer_server.keys['a']}"}
    event = httpx.get(
        f"{infer_server.base_url}/v1/event/{queued['eventId']}/", headers=headers, timeout=10
    ).json()
    assert event["status"] == "SUCCEEDED"
    assert [(r["event"], r["id"]) for r in event["results"]] == [("ADD", chess["id"])]
    assert scripted.remaining() == 0 and len(scripted.requests) == 6

    # the memories the LLM's answers imply, as getAll and search see them
    lisbon, vegetarian = added["Lives in Lisbon"], added["Is vegetarian"]
    expected = {
        lisbon: "Is pescatarian" if update["id"] == lisbon else "Lives in Lisbon",
        vegetarian: "Is pescatarian" if update["id"] == vegetarian else "Is vegetarian",
        verbatim["results"][0]["id"]: "raw note from node",
        chess["id"]: "Plays chess",
    }
    page = ok(out, "getAll")
    assert page["count"] == 4 and page["next"] is None
    assert {m["id"]: m["memory"] for m in page["results"]} == expected
    assert all(m["userId"] == user and m["agentId"] is None for m in page["results"])
    by_id = {m["id"]: m for m in page["results"]}
    assert by_id[lisbon]["metadata"] == {"source": "node-sdk"}
    assert by_id[vegetarian]["categories"] == ["food"]
    page2 = ok(out, "getAllPage2")
    assert page2["count"] == 4 and len(page2["results"]) == 1 and "page=1" in page2["previous"]
    assert ok(out, "getAllWithAgents")["results"] == []  # implicit null scoping
    hits = ok(out, "search")["results"]
    assert {h["id"]: h["memory"] for h in hits} == expected
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    # one memory: get, update, feedback, delete, history; ids round-trip
    first_id = next(r["id"] for r in first["results"] if r["event"] == "ADD")
    got = ok(out, "get")
    assert got["id"] == first_id and got["memory"] == expected[first_id]
    updated = ok(out, "update")
    assert (updated["id"], updated["memory"]) == (first_id, "Lives in Porto")
    assert updated["metadata"] == {"source": "node-sdk", "v": 2}
    assert ok(out, "getAfterUpdate")["memory"] == "Lives in Porto"
    [entity] = ok(out, "users")["results"]
    assert (entity["type"], entity["name"], entity["totalMemories"]) == ("user", user, 4)
    feedback = ok(out, "feedback")
    assert (feedback["memoryId"], feedback["feedback"]) == (first_id, "POSITIVE")
    export = ok(out, "exportGet")
    assert export["id"] == ok(out, "exportCreate")["id"] and export["count"] == 4
    assert {m["id"] for m in export["memories"]} == set(expected)
    assert ok(out, "delete") == {"message": "Memory deleted successfully!"}
    gone = failed(out, "getAfterDelete")
    assert (gone["name"], gone["code"]) == ("MemoryNotFoundError", "HTTP_404")
    history = ok(out, "history")
    events = ["ADD", "UPDATE", "FEEDBACK", "DELETE"]
    if update["id"] == first_id:
        events.insert(1, "UPDATE")  # the inferred update came first
    assert [h["event"] for h in history] == events
    assert all(h["memoryId"] == first_id and h["userId"] == user for h in history)
    assert history[0]["newMemory"] == (
        "Is vegetarian" if first_id == vegetarian else "Lives in Lisbon"
    )
    assert history[0]["inference"]["explanation"].startswith(
        "added by inference (model scripted-node)"
    )
    manual = history[-3]
    assert (manual["oldMemory"], manual["newMemory"]) == (expected[first_id], "Lives in Porto")
    assert "inference" not in manual
    assert history[-1]["oldMemory"] == "Lives in Porto"
    # the ledger knows who wrote: the Node SDK's own X-Mem0-Client header
    assert {h["actor"]["source"] for h in history} == {f"rest:mem0-js/{pinned_version()}"}

    # batch update, delete_all
    assert ok(out, "batchUpdate") == {"message": "Successfully updated 1 memories"}
    assert ok(out, "getAfterBatch")["memory"] == "batch note"
    assert ok(out, "deleteAll") == {"message": "Memories deleted successfully!", "count": 3}
    assert ok(out, "getAllAfterDeleteAll")["count"] == 0

    # webhooks round-trip by id
    hook = ok(out, "createWebhook")
    assert hook["webhookId"] and hook["eventTypes"] == ["memory_add"]
    assert ok(out, "updateWebhook")["name"] == "node-2"
    assert [(w["webhookId"], w["name"]) for w in ok(out, "getWebhooks")] == [
        (hook["webhookId"], "node-2")
    ]
    assert ok(out, "deleteWebhook")["message"]

    # profiles: a 501 naming what to use instead, not "memory not found"
    for name in ("getProfile", "getProfileSettings"):
        error = failed(out, name)
        assert error["name"] == "MemoryError" and error["code"] == "HTTP_501", error
        assert "not implemented on a self-hosted memstream" in error["message"]

    # a host ending in "/" works; an unknown key is a 401 AuthenticationError
    assert ok(out, "slashedHost") == {"organizationId": "org_node", "projectId": "proj_node"}
    for name in ("badKeyPing", "badKeySearch"):
        error = failed(out, name)
        assert (error["name"], error["code"]) == ("AuthenticationError", "HTTP_401")
        assert "Invalid API key" in error["message"]
