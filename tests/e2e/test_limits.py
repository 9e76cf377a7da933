"""Bounded input at the REST edge (issue 13), against a real `memstream serve` subprocess.

Each test is a row of the issue's table that failed before: the input is refused before
anything is written (400/413 naming the limit and its setting) and every read afterwards
still answers 200. Limits are lowered through the environment for the server of this module,
which also proves they are settings, not constants.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, start_server, stop_server

LIMITS = {
    "MEMSTREAM_MAX_BODY_BYTES": "200000",
    "MEMSTREAM_MAX_TEXT_CHARS": "5000",
    "MEMSTREAM_MAX_QUERY_CHARS": "1000",
    "MEMSTREAM_MAX_METADATA_DEPTH": "8",
    "MEMSTREAM_MAX_METADATA_BYTES": "4096",
    "MEMSTREAM_MAX_FILTER_LIST": "100",
    "MEMSTREAM_MAX_FILTER_NODES": "400",
    "MEMSTREAM_MAX_MESSAGES": "50",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("limits"), keys={"a": ("org_l", "proj_l", None)}, env=LIMITS
    )
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def api(limited: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {limited.keys['a']}"}
    with httpx.Client(base_url=limited.base_url, headers=headers, timeout=60) as c:
        yield c


def refused(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:500])
    detail = str(r.json()["detail"])
    for w in words:
        assert w in detail, detail
    return detail


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def every_read_answers(api: httpx.Client, user: str) -> int:
    """get_all, search, and get + history of every memory: all 200. Returns the count."""
    page = api.post("/v3/memories/", json={"filters": {"user_id": user}})
    assert page.status_code == 200, page.text
    found = api.post("/v3/memories/search/", json={"query": "note", "filters": {"user_id": user}})
    assert found.status_code == 200, found.text
    for m in page.json()["results"]:
        assert api.get(f"/v1/memories/{m['id']}/").status_code == 200
        assert api.get(f"/v1/memories/{m['id']}/history/").status_code == 200
    return int(page.json()["count"])


def test_deep_metadata_is_refused_at_write_and_reads_never_500(
    api: httpx.Client, uid: Callable[[str], str]
) -> None:
    user = uid("deep")
    ok = api.post("/v3/memories/add/", json={"messages": "a note", "user_id": user,
                                             "metadata": nested(8)})  # fmt: skip
    assert ok.status_code == 200, ok.text
    for depth in (9, 256):  # 256: the case, which made every later read answer 500
        r = api.post("/v3/memories/add/", json={"messages": f"note {depth}", "user_id": user,
                                                "metadata": nested(depth)})  # fmt: skip
        refused(r, 400, "metadata", "MEMSTREAM_MAX_METADATA_DEPTH")
    mid = ok.json()["results"][0]["id"]
    r = api.put(f"/v1/memories/{mid}/", json={"metadata": nested(256)})
    refused(r, 400, "metadata", "MEMSTREAM_MAX_METADATA_DEPTH")
    big = {"blob": "x" * 5000}
    r = api.post("/v3/memories/add/", json={"messages": "big", "user_id": user, "metadata": big})
    refused(r, 400, "metadata", "4096", "MEMSTREAM_MAX_METADATA_BYTES")
    assert every_read_answers(api, user) == 1


def test_body_text_and_query_sizes_are_bounded(
    api: httpx.Client, uid: Callable[[str], str]
) -> None:
    user = uid("size")
    body = json.dumps({"messages": "x" * 300_000, "user_id": user})
    r = api.post("/v3/memories/add/", content=body, headers={"Content-Type": "application/json"})
    refused(r, 413, "200000", "MEMSTREAM_MAX_BODY_BYTES")

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off once past the limit
        yield body.encode()[:150_000]
        yield body.encode()[150_000:]

    r = api.post("/v3/memories/add/", content=chunks(),
                 headers={"Content-Type": "application/json"})  # fmt: skip
    refused(r, 413, "MEMSTREAM_MAX_BODY_BYTES")
    r = api.post("/v3/memories/add/", json={"messages": "y" * 5001, "user_id": user})
    refused(r, 400, "messages[0].content", "5000", "MEMSTREAM_MAX_TEXT_CHARS")
    r = api.post("/v3/memories/search/", json={"query": "q" * 1001, "filters": {"user_id": user}})
    refused(r, 400, "query", "1000", "MEMSTREAM_MAX_QUERY_CHARS")
    many = [{"role": "user", "content": f"m{i}"} for i in range(51)]
    r = api.post("/v3/memories/add/", json={"messages": many, "user_id": user})
    refused(r, 400, "51 messages", "50", "MEMSTREAM_MAX_MESSAGES")
    assert every_read_answers(api, user) == 0


@pytest.mark.parametrize(
    "filters",
    [
        {"user_id": {"in": [f"u{i}" for i in range(101)]}},
        {"AND": [{"user_id": "x"}, {"agent_id": {"nin": [f"a{i}" for i in range(101)]}}]},
        {"memory_ids": [f"m{i}" for i in range(101)]},
    ],
    ids=["in", "nin", "memory_ids"],
)
def test_filter_lists_are_bounded(api: httpx.Client, filters: dict[str, Any]) -> None:
    for path in ("/v3/memories/", "/v3/memories/search/"):
        r = api.post(path, json={"query": "q", "filters": filters})
        refused(r, 400, "101 values", "100", "MEMSTREAM_MAX_FILTER_LIST")
    r = api.delete("/v1/memories/", params={"filters": json.dumps(filters)})
    refused(r, 400, "MEMSTREAM_MAX_FILTER_LIST")


def test_filter_node_count_is_bounded(api: httpx.Client) -> None:
    many = {"OR": [{"AND": [{"user_id": f"u{i}"}, {"agent_id": f"a{i}"}]} for i in range(90)]}
    r = api.post("/v3/memories/", json={"filters": many})
    refused(r, 400, "400", "MEMSTREAM_MAX_FILTER_NODES")


@pytest.mark.parametrize(
    "date", ["2030-01-01' OR 1=1", "2030-01-01junk", "2030-13-01", "2030-01-01T25:00:00"]
)
def test_dates_are_validated_whole(api: httpx.Client, uid: Callable[[str], str], date: str) -> None:
    user = uid("date")
    r = api.post("/v3/memories/add/", json={"messages": "dated", "user_id": user,
                                            "expiration_date": date})  # fmt: skip
    refused(r, 400, "expiration_date", "not a date")
    assert every_read_answers(api, user) == 0
    ok = api.post("/v3/memories/add/", json={"messages": "dated", "user_id": user,
                                             "expiration_date": "2030-01-01T10:00:00Z"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    got = api.get(f"/v1/memories/{ok.json()['results'][0]['id']}/").json()
    assert got["expiration_date"].startswith("2030-01-01")


def test_health_probes(limited: Server) -> None:
    assert httpx.get(f"{limited.base_url}/healthz").json() == {"status": "ok"}
    r = httpx.get(f"{limited.base_url}/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text


def test_rate_limit_per_key(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path / "rl",
        keys={"a": ("org_r", "p1", None), "b": ("org_r", "p2", None)},
        env={"MEMSTREAM_RATE_LIMIT_PER_S": "0.5", "MEMSTREAM_RATE_LIMIT_BURST": "3"},
    )
    try:
        a = {"Authorization": f"Token {srv.keys['a']}"}
        b = {"Authorization": f"Token {srv.keys['b']}"}
        statuses = [httpx.get(f"{srv.base_url}/v1/ping/", headers=a).status_code
                    for _ in range(6)]  # fmt: skip
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses
        r = httpx.get(f"{srv.base_url}/v1/ping/", headers=a)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert "MEMSTREAM_RATE_LIMIT_PER_S" in r.json()["detail"]
        # the MCP endpoint spends the same per-key budget
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        accept = {"Accept": "application/json, text/event-stream"}
        r = httpx.post(f"{srv.base_url}/mcp", headers={**a, **accept}, json=rpc)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
        # another key has its own budget
        assert httpx.get(f"{srv.base_url}/v1/ping/", headers=b).status_code == 200
        r = httpx.post(f"{srv.base_url}/mcp", headers={**b, **accept}, json=rpc)
        assert r.status_code == 200, r.text
    finally:
        stop_server(srv)


def test_deep_metadata_stored_before_the_limits_is_served_not_500(
    tmp_path: Path, uid: Callable[[str], str]
) -> None:
    """A log written by a version without the depth limit (simulated by raising the limit in
    the writing process) still reads back with 200 everywhere; the metadata is replaced by
    a note saying why."""
    import asyncio

    from memstream.service import Memstream
    from memstream.settings import Limits, Settings

    data = tmp_path / "legacy"
    user = uid("legacy")

    async def write() -> None:
        settings = Settings(data_dir=data, embedder="hashing",
                            limits=Limits(max_metadata_depth=1000))  # fmt: skip
        async with Memstream(settings) as ms:
            await ms.add("a deep note", user_id=user, metadata=nested(256))

    asyncio.run(write())
    srv = start_server(data, keys={"a": ("local", "default", None)})
    try:
        headers = {"Authorization": f"Token {srv.keys['a']}"}
        with httpx.Client(base_url=srv.base_url, headers=headers, timeout=60) as c:
            assert every_read_answers(c, user) == 1
            [m] = c.post("/v3/memories/", json={"filters": {"user_id": user}}).json()["results"]
            assert "256 levels" in m["metadata"]["_memstream_unservable"]
    finally:
        stop_server(srv)
