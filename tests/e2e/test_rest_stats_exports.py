"""memstream's own REST additions for the dashboard: grouped counts (/v1/stats/), the
projector's lag (/v1/projector/) and file exports (/v1/exports/download/), on both logs."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.servers import Server


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {server.keys['a']}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as c:
        yield c


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, (r.request.url, r.status_code, r.text)
    return r.json()


def add(c: httpx.Client, text: str, **ids: Any) -> str:
    return str(ok(c.post("/v3/memories/add/", json={"messages": text, **ids}))["results"][0]["id"])


def counts(groups: list[dict[str, Any]]) -> dict[Any, int]:
    return {g["key"]: g["count"] for g in groups}


def test_stats_count_each_value_in_one_call(api: httpx.Client, uid: Callable[[str], str]) -> None:
    user, a1, a2, run = uid("u"), uid("a1"), uid("a2"), uid("run")
    add(api, "plain", user_id=user)
    before = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)
    add(api, "with a1 (1)", user_id=user, agent_id=a1, categories=["food"])
    add(api, "with a1 (2)", user_id=user, agent_id=a1, categories=["food", "travel"])
    add(api, "with a2", user_id=user, agent_id=a2)
    add(api, "in a run", user_id=user, run_id=run)
    everything_of_user = {"user_id": user, "agent_id": ["*", None], "run_id": ["*", None]}
    body = ok(api.post("/v1/stats/", json={
        "filters": everything_of_user, "by": ["user", "agent", "run", "category", "day"],
    }))  # fmt: skip
    assert body["total"] == 5
    assert counts(body["groups"]["user"]) == {user: 5}
    assert counts(body["groups"]["agent"]) == {None: 2, a1: 2, a2: 1}
    assert body["groups"]["agent"][0]["count"] == 2  # largest first
    assert counts(body["groups"]["run"]) == {None: 4, run: 1}
    assert counts(body["groups"]["category"]) == {None: 3, "food": 2, "travel": 1}
    assert sum(counts(body["groups"]["day"]).values()) == 5
    assert body["projector"]["lag"] >= 0 and body["projector"]["partitions"]
    # implicit null scoping, exactly as get_all
    only_null = ok(api.post("/v1/stats/", json={"filters": {"user_id": user}, "by": ["agent"]}))
    assert only_null["total"] == 1 and counts(only_null["groups"]["agent"]) == {None: 1}
    # entity ids at the top level work as in get_all; as_of answers from the past
    past = ok(api.post("/v1/stats/", json={
        "user_id": user, "filters": {"agent_id": ["*", None], "run_id": ["*", None]},
        "as_of": before, "by": ["agent"],
    }))  # fmt: skip
    assert past["total"] == 1
    # after a delete the counts drop for that value only
    ok(api.request("DELETE", "/v1/memories/", params={"user_id": user, "agent_id": a1}))
    after = ok(api.post("/v1/stats/", json={"filters": everything_of_user, "by": ["agent"]}))
    assert counts(after["groups"]["agent"]) == {None: 2, a2: 1}


def test_stats_refuses_bad_requests(api: httpx.Client) -> None:
    r = api.post("/v1/stats/", json={"by": ["colour"]})
    assert r.status_code == 422 and "by" in r.json()["detail"]
    r = api.post("/v1/stats/", json={"filters": {"user_id": {"between": [1, 2]}}, "by": ["user"]})
    assert r.status_code == 400 and "between" in r.json()["detail"]
    r = httpx.post(f"{api.base_url}/v1/stats/", json={})
    assert r.status_code == 401


def test_projector_lag(api: httpx.Client) -> None:
    body = ok(api.get("/v1/projector/"))
    assert body["lag"] == sum(p["lag"] for p in body["partitions"])
    for p in body["partitions"]:
        assert p["lag"] == max(0, p["end"] - p["applied"])


def test_export_download_formats(api: httpx.Client, uid: Callable[[str], str]) -> None:
    user = uid("exp")
    add(api, "first, with a comma", user_id=user, metadata={"n": 1})
    add(api, 'second "quoted"', user_id=user, categories=["x"])
    add(api, "not this one", user_id=user, agent_id=uid("agent"))
    want = {"first, with a comma", 'second "quoted"'}
    filters = {"user_id": user}

    r = api.post("/v1/exports/download/", json={"filters": filters, "format": "json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers["x-memstream-count"] == "2"
    assert "attachment" in r.headers["content-disposition"]
    rows = json.loads(r.content)
    assert {m["memory"] for m in rows} == want
    assert {json.dumps(m["metadata"]) for m in rows} == {'{"n": 1}', "{}"}

    r = api.post("/v1/exports/download/", json={"filters": filters, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = pacsv.read_csv(io.BytesIO(r.content))
    assert set(table.column("memory").to_pylist()) == want

    r = api.post("/v1/exports/download/", json={"filters": filters, "format": "parquet"})
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content))
    assert set(table.column("memory").to_pylist()) == want
    assert sorted(map(tuple, table.column("categories").to_pylist())) == [(), ("x",)]

    # no filters: the whole project (JSON Lines here)
    r = api.post("/v1/exports/download/", json={"format": "jsonl"})
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert want | {"not this one"} <= {m["memory"] for m in lines}
    assert int(r.headers["x-memstream-count"]) == len(lines)

    r = api.post("/v1/exports/download/", json={"filters": filters, "format": "xlsx"})
    assert r.status_code == 422 and "format" in r.json()["detail"]


def test_history_shows_feedback(api: httpx.Client, uid: Callable[[str], str]) -> None:
    """The timeline shows what feedback was given (FEEDBACK entries carry it)."""
    mid = add(api, "feedback target", user_id=uid("fb"))
    ok(api.post("/v1/feedback/", json={"memory_id": mid, "feedback": "NEGATIVE",
                                       "feedback_reason": "outdated"}))  # fmt: skip
    entries = ok(api.get(f"/v1/memories/{mid}/history/"))
    assert [e["event"] for e in entries] == ["ADD", "FEEDBACK"]
    assert (entries[1]["feedback"], entries[1]["feedback_reason"]) == ("NEGATIVE", "outdated")
    assert "feedback" not in entries[0]
