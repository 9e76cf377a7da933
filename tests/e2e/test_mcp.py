"""The MCP server, driven by the official `mcp` SDK's own client: over stdio (a spawned
`memstream mcp`) and over streamable HTTP (`/mcp` of a real `memstream serve`).

Same scoping rules as REST (implicit null scoping, "*", filters), same key-based tenancy.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from tests.servers import MEMSTREAM, Server, log_env

TOOLS = {"add_memory", "search_memories", "list_memories", "delete_memory", "delete_all"}


def data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    body = result.structured_content
    assert isinstance(body, dict)
    # the same document is in the text content, for clients that read only text
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    return body


def error(result: CallToolResult) -> str:
    assert result.is_error, result
    return result.content[0].text  # type: ignore[union-attr]


def texts(body: dict[str, Any]) -> list[str]:
    return sorted(m["memory"] for m in body["results"])


async def scenario(client: Client, uid: Callable[[str], str]) -> None:
    """The scoping rules through the tools; the same for stdio and HTTP."""
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == TOOLS
    alice, bob, agent, run = uid("alice"), uid("bob"), uid("planner"), uid("ticket")
    added = data(await client.call_tool("add_memory", {"text": "I'm vegetarian", "user_id": alice}))
    assert [r["event"] for r in added["results"]] == ["ADD"]
    tea_id = added["results"][0]["id"]
    await client.call_tool("add_memory", {"text": "prefers window seats", "user_id": alice,
                                          "agent_id": agent, "metadata": {"k": 1}})  # fmt: skip
    await client.call_tool("add_memory", {"text": "order 1182 damaged", "user_id": alice,
                                          "run_id": run})  # fmt: skip
    await client.call_tool("add_memory", {"text": "bob likes jazz", "user_id": bob})
    again = data(await client.call_tool("add_memory", {"text": "I'm vegetarian", "user_id": alice}))
    assert again["results"][0]["event"] == "NONE"

    # implicit null scoping: alice's unscoped memories only
    only = data(await client.call_tool("list_memories", {"user_id": alice}))
    assert texts(only) == ["I'm vegetarian"] and only["count"] == 1
    # filters, "*" and ids as arguments are ANDed
    sessions = data(await client.call_tool("list_memories", {"filters": {"user_id": alice,
                                                                         "run_id": "*"}}))  # fmt: skip
    assert texts(sessions) == ["order 1182 damaged"]
    anything = {"OR": [{"agent_id": "*"}, {"agent_id": None}]}
    both = data(await client.call_tool("list_memories", {"filters": anything, "user_id": alice}))
    assert texts(both) == ["I'm vegetarian", "prefers window seats"]
    paged = data(await client.call_tool(
        "list_memories", {"filters": anything, "user_id": alice, "page": 1, "page_size": 1}))  # fmt: skip
    assert paged["count"] == 2 and paged["has_more"] and len(paged["results"]) == 1

    found = data(await client.call_tool("search_memories", {
        "query": "window seats", "filters": {"user_id": alice, "agent_id": agent}}))  # fmt: skip
    assert [m["memory"] for m in found["results"]][:1] == ["prefers window seats"]
    assert 0 < found["results"][0]["score"] <= 1
    none = data(await client.call_tool("search_memories", {"query": "jazz", "user_id": alice}))
    assert "bob likes jazz" not in texts(none)

    # bad input: a one-sentence tool error, nothing written
    bad = error(await client.call_tool("list_memories", {"filters": {"user_id": {"between": 1}}}))
    assert "between" in bad and "Traceback" not in bad
    refused = error(await client.call_tool("delete_all", {}))
    assert "at least one of user_id" in refused
    assert (
        "not found" in error(await client.call_tool("delete_memory", {"memory_id": "nope"})).lower()
    )

    # delete_all follows implicit null scoping: alice's agent memory survives
    gone = data(await client.call_tool("delete_all", {"user_id": alice}))
    assert gone["count"] == 1
    assert texts(data(await client.call_tool("list_memories", {"user_id": alice}))) == []
    left = data(await client.call_tool("list_memories", {"filters": anything, "user_id": alice}))
    assert texts(left) == ["prefers window seats"]
    deleted = data(await client.call_tool("delete_memory", {"memory_id": left["results"][0]["id"]}))
    assert deleted["message"] == "Memory deleted successfully!"
    assert tea_id not in {m["id"] for m in left["results"]}


# -- stdio ------------------------------------------------------------------------------------
def stdio(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Client:
    args = ["-m", "memstream.cli", "--data-dir", str(data_dir), "--embedder", "hashing", *extra]
    return Client(StdioServerParameters(command=sys.executable, args=[*args, "mcp"],
                                        env={**log_env(), **(env or {})}))  # fmt: skip


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MEMSTREAM, "--data-dir", str(data_dir), "--embedder", "hashing", *args],
        capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
        env=log_env(),
    )  # fmt: skip


def test_stdio_scoping_on_the_local_project(tmp_path: Path, uid: Callable[[str], str]) -> None:
    async def main() -> None:
        async with stdio(tmp_path) as client:
            await scenario(client, uid)
            await client.call_tool("add_memory", {"text": "kept", "user_id": "carol"})

    asyncio.run(main())
    # the local org/project of the embedded defaults: the CLI sees the same ledger
    got = json.loads(cli(tmp_path, "--json", "get-all", "--user-id", "carol").stdout)
    assert [m["memory"] for m in got["results"]] == ["kept"]
    history = json.loads(cli(tmp_path, "--json", "history", got["results"][0]["id"]).stdout)
    assert history["results"][0]["actor"]["source"] == "mcp:stdio"


def test_stdio_with_an_api_key_acts_for_its_project(tmp_path: Path) -> None:
    key = cli(tmp_path, "keys", "create", "--org-id", "acme", "--project-id", "support")
    token = key.stdout.strip().splitlines()[-1]

    async def main() -> None:
        async with stdio(tmp_path, env={"MEMSTREAM_API_KEY": token}) as client:
            await client.call_tool("add_memory", {"text": "acme's note", "user_id": "dana"})

    asyncio.run(main())
    in_acme = cli(tmp_path, "--json", "--org-id", "acme", "--project-id", "support",
                  "get-all", "--user-id", "dana")  # fmt: skip
    assert [m["memory"] for m in json.loads(in_acme.stdout)["results"]] == ["acme's note"]
    local = cli(tmp_path, "--json", "get-all", "--user-id", "dana")
    assert json.loads(local.stdout)["results"] == []
    # a bad key: the server refuses to start, saying why
    bad = subprocess.run(
        [*MEMSTREAM, "--data-dir", str(tmp_path), "--embedder", "hashing", "mcp",
         "--api-key", "msk_0123456789abcdef_nope"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=log_env(),
    )  # fmt: skip
    assert bad.returncode != 0 and "key" in bad.stderr.lower()


# -- streamable HTTP under `memstream serve` -----------------------------------------------------
def http_client(server: Server, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Token {key}"}, timeout=60)
    return Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http))


def test_http_scoping_and_tenancy(server: Server, uid: Callable[[str], str]) -> None:
    secret = uid("secret-holder")

    async def main() -> None:
        async with http_client(server, server.keys["a"]) as a:
            await scenario(a, uid)
            await a.call_tool("add_memory", {"text": "project a's secret", "user_id": secret})
        # another project's key, same org or not: nothing of project A, and its deletes miss
        for other in ("a2", "b"):
            async with http_client(server, server.keys[other]) as b:
                seen = data(await b.call_tool("list_memories", {"user_id": secret}))
                assert seen["results"] == []
                found = data(await b.call_tool("search_memories", {"query": "secret",
                                                                   "user_id": secret}))  # fmt: skip
                assert found["results"] == []
                assert data(await b.call_tool("delete_all", {"user_id": secret}))["count"] == 0

    asyncio.run(main())
    # project A still holds it, through the REST API with its key
    rest = httpx.post(f"{server.base_url}/v3/memories/", json={"filters": {"user_id": secret}},
                      headers={"Authorization": f"Token {server.keys['a']}"}, timeout=30)  # fmt: skip
    assert [m["memory"] for m in rest.json()["results"]] == ["project a's secret"]
    # the server runs with --log-level warning: the MCP session manager's INFO lines (and
    # memstream's own) must not reach its log
    assert " INFO " not in server.log_tail(lines=10_000), server.log_tail()


@pytest.mark.parametrize(
    "header",
    [None, "Token msk_0123456789abcdef_nope", "Basic abc"],
    ids=["none", "unknown", "scheme"],
)
def test_http_needs_a_valid_key(server: Server, header: str | None) -> None:
    headers = {"Accept": "application/json, text/event-stream"}
    if header:
        headers["Authorization"] = header
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    r = httpx.post(f"{server.base_url}/mcp", json=body, headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["detail"]
