"""The official `mem0ai` client (2.2.1), unchanged, against a real `memstream serve`.

Every test runs against the embedded file log and against real Kafka (the `server` fixture).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mem0 import AsyncMemoryClient, MemoryClient
from mem0.exceptions import MemoryNotFoundError
from mem0.exceptions import ValidationError as Mem0ValidationError

from tests.servers import Server, start_server, stop_server

USERS = ("u1", "u2")
AGENTS = (None, "a1", "a2")
RUNS = (None, "r1", "r2")


@pytest.fixture
def client(server: Server) -> Iterator[MemoryClient]:
    c = MemoryClient(api_key=server.keys["a"], host=server.base_url)
    yield c
    c.client.close()


def ids(page: dict[str, Any]) -> set[str]:
    return {m["id"] for m in page["results"]}


def get_all_ids(client: MemoryClient, filters: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    page = 1
    while True:
        got = client.get_all(filters=filters, page=page, page_size=200)
        out |= ids(got)
        if not got["next"]:
            return out
        page += 1


def populate(client: MemoryClient, uid: Callable[[str], str]) -> dict[tuple[str | None, ...], str]:
    """One memory per (user, agent, run) scope; returns scope -> memory id."""
    written: dict[tuple[str | None, ...], str] = {}
    for user, agent, run in itertools.product(USERS, AGENTS, RUNS):
        u, a, r = uid(user), agent and uid(agent), run and uid(run)
        kwargs = {k: v for k, v in (("user_id", u), ("agent_id", a), ("run_id", r)) if v}
        res = client.add(f"fact for {user}/{agent}/{run}", **kwargs, metadata={"n": len(written)})
        assert [x["event"] for x in res["results"]] == ["ADD"]
        written[(user, agent, run)] = res["results"][0]["id"]
    return written


def expect(
    written: dict[tuple[str | None, ...], str],
    pred: Callable[[str | None, str | None, str | None], bool],
) -> set[str]:
    return {mid for (u, a, r), mid in written.items() if pred(u, a, r)}


# -- construction, project, auth -------------------------------------------------------------
def test_construction_pings_and_project_get(server: Server, client: MemoryClient) -> None:
    assert (client.org_id, client.project_id) == ("org_a", "proj_a")
    assert client.user_email
    project = client.project.get()
    assert project["org_id"] == "org_a" and project["project_id"] == "proj_a"
    assert project["name"]
    only = client.project.get(fields=["name"])
    assert set(only) == {"org_id", "project_id", "name"}
    assert client.get_project()["project_id"] == "proj_a"
    # another key's project does not exist for this key
    other = MemoryClient(api_key=server.keys["b"], host=server.base_url)
    assert (other.org_id, other.project_id) == ("org_b", "proj_b")
    r = client.client.get("/api/v1/orgs/organizations/org_b/projects/proj_b/")
    assert r.status_code == 404 and r.json()["detail"]


def test_bad_missing_and_revoked_keys(server: Server) -> None:
    with pytest.raises(ValueError, match="Invalid API key"):
        MemoryClient(api_key="msk_0000000000000000_nope", host=server.base_url)
    with pytest.raises(ValueError, match="Invalid API key"):
        MemoryClient(api_key="not-even-a-key", host=server.base_url)
    with pytest.raises(ValueError, match="Invalid API key"):
        AsyncMemoryClient(api_key="msk_0000000000000000_nope", host=server.base_url)
    r = httpx.get(f"{server.base_url}/v1/ping/")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
    assert "credentials" in r.json()["detail"]

    key, _, _ = server.new_key("revoke")
    MemoryClient(api_key=key, host=server.base_url)  # works
    key_id = key.split("_")[1]
    server.cli("keys", "revoke", key_id)
    deadline = time.monotonic() + 10
    while True:  # every server follows the keys log; give it a moment
        try:
            MemoryClient(api_key=key, host=server.base_url)
        except ValueError as exc:
            assert "revoked" in str(exc)
            break
        assert time.monotonic() < deadline, "revoked key still accepted after 10 s"
        time.sleep(0.1)


# -- the scoping scenario ----------------------------------------------------------------------
def test_scoping_scenario(client: MemoryClient, uid: Callable[[str], str]) -> None:
    w = populate(client, uid)
    u1, u2, a1, r1 = uid("u1"), uid("u2"), uid("a1"), uid("r1")

    # implicit null scoping: only u1's memories with no agent and no run
    assert get_all_ids(client, {"user_id": u1}) == expect(
        w, lambda u, a, r: u == "u1" and not a and not r
    )
    # "*" = any non-null id; the unnamed run_id must still be null
    assert get_all_ids(client, {"user_id": u1, "agent_id": "*"}) == expect(
        w, lambda u, a, r: u == "u1" and a is not None and r is None
    )
    assert get_all_ids(
        client, {"AND": [{"user_id": u1}, {"agent_id": "*"}, {"run_id": "*"}]}
    ) == expect(w, lambda u, a, r: u == "u1" and a is not None and r is not None)
    assert get_all_ids(client, {"AND": [{"user_id": u1}, {"agent_id": a1}]}) == expect(
        w, lambda u, a, r: u == "u1" and a == "a1" and r is None
    )
    # lists match any of several values
    assert get_all_ids(client, {"user_id": {"in": [u1, u2]}, "run_id": r1}) == expect(
        w, lambda u, a, r: a is None and r == "r1"
    )
    assert get_all_ids(client, {"user_id": [u1, u2], "agent_id": "*", "run_id": "*"}) == expect(
        w, lambda u, a, r: a is not None and r is not None
    )
    assert get_all_ids(client, {"OR": [{"user_id": u1}, {"user_id": u2}]}) == expect(
        w, lambda u, a, r: a is None and r is None
    )
    # search honours the same scoping
    hits = client.search("fact", filters={"user_id": u1, "agent_id": "*"}, threshold=0, top_k=50)
    assert {h["id"] for h in hits["results"]} == expect(
        w, lambda u, a, r: u == "u1" and a is not None and r is None
    )
    assert all(0.0 <= h["score"] <= 1.0 for h in hits["results"])
    # each memory carries all of its ids, run_id and session_id alike
    m = client.get(w[("u1", "a1", "r1")])
    assert (m["user_id"], m["agent_id"], m["run_id"], m["session_id"]) == (u1, a1, r1, r1)
    # no entity at all is refused
    with pytest.raises(Mem0ValidationError):
        client.get_all(filters={})
    with pytest.raises(ValueError):  # client-side: entity ids belong in filters
        client.get_all(user_id=u1)


def test_add_with_entity_ids_in_filters_and_options(
    client: MemoryClient, uid: Callable[[str], str]
) -> None:
    from mem0.client.types import AddMemoryOptions

    u = uid("opt")
    client.add("from filters", filters={"user_id": u}, infer=False)
    client.add(
        "from options", options=AddMemoryOptions(filters={"user_id": u}, metadata={"k": "v"})
    )
    client.add(
        [{"role": "system", "content": "ignored"}, {"role": "user", "content": "kept"}], user_id=u
    )
    got = client.get_all(filters={"user_id": u})
    assert sorted(m["memory"] for m in got["results"]) == ["from filters", "from options", "kept"]
    # an exact duplicate in the same scope is one memory
    again = client.add("kept", user_id=u)
    assert again["results"][0]["event"] == "NONE"
    assert client.get_all(filters={"user_id": u})["count"] == 3


def test_delete_all_of_one_run_leaves_the_others(
    client: MemoryClient, uid: Callable[[str], str]
) -> None:
    w = populate(client, uid)
    u1, a1, r1, r2 = uid("u1"), uid("a1"), uid("r1"), uid("r2")

    def live() -> set[str]:
        """Every memory of this test's two users, whatever their agent and run."""
        return get_all_ids(client, {"AND": [
            {"user_id": {"in": [u1, uid("u2")]}},
            {"OR": [{"agent_id": None}, {"agent_id": "*"}]},
            {"OR": [{"run_id": None}, {"run_id": "*"}]},
        ]})  # fmt: skip

    assert live() == set(w.values())
    assert client.delete_all(user_id=u1, agent_id=a1, run_id=r1) == {
        "message": "Memories deleted successfully!",
        "count": 1,
    }
    assert live() == set(w.values()) - {w[("u1", "a1", "r1")]}
    with pytest.raises(MemoryNotFoundError):
        client.get(w[("u1", "a1", "r1")])
    assert client.get(w[("u1", "a1", "r2")])["run_id"] == r2
    # the DeleteAllMemoryOptions way: filters travel as a Python repr in the query string
    res = client.delete_all(filters={"user_id": u1, "agent_id": "*", "run_id": r2})
    assert res["count"] == 2
    assert client.get(w[("u1", None, "r2")])["memory"]
    # "*" for one run id = every run of that user and agent
    assert client.delete_all(user_id=uid("u2"), agent_id=uid("a2"), run_id="*")["count"] == 2
    # the issue's own example: a run id alone deletes that session, whatever user or agent
    # its memories carry (query ids constrain only the ids they name, as on the platform)
    in_r1 = {mid for key, mid in w.items() if key[2] == "r1"} & live()
    assert len(in_r1) >= 2
    assert client.delete_all(run_id=r1)["count"] == len(in_r1)
    assert not live() & in_r1
    assert {mid for key, mid in w.items() if key[2] != "r1"} & live()  # the others stay
    # nothing named: refused, nothing deleted
    with pytest.raises(Mem0ValidationError):
        client.delete_all()
    assert client.get(w[("u2", None, None)])["user_id"] == uid("u2")


def test_history_after_update_and_delete(client: MemoryClient, uid: Callable[[str], str]) -> None:
    mid = client.add("I like tea", user_id=uid("h"), metadata={"v": 1})["results"][0]["id"]
    updated = client.update(mid, text="I like green tea", metadata={"v": 2})
    assert updated["memory"] == "I like green tea" and updated["metadata"] == {"v": 2}
    assert client.get(mid)["memory"] == "I like green tea"
    assert client.update(mid, expiration_date="2099-12-31")["expiration_date"] == "2099-12-31"
    assert client.update(mid, expiration_date=None)["expiration_date"] is None
    assert client.delete(mid) == {"message": "Memory deleted successfully!"}
    with pytest.raises(MemoryNotFoundError):
        client.get(mid)
    hist = client.history(mid)
    assert isinstance(hist, list)
    assert [h["event"] for h in hist] == ["ADD", "UPDATE", "UPDATE", "UPDATE", "DELETE"]
    assert (hist[1]["old_memory"], hist[1]["new_memory"]) == ("I like tea", "I like green tea")
    assert hist[-1]["old_memory"] == "I like green tea"
    assert all(h["memory_id"] == mid and h["user_id"] == uid("h") for h in hist)
    with pytest.raises(MemoryNotFoundError):
        client.history(str(uuid.uuid4()))


def test_pagination(client: MemoryClient, uid: Callable[[str], str]) -> None:
    u = uid("pages")
    added = [client.add(f"memory number {i}", user_id=u)["results"][0]["id"] for i in range(7)]
    first = client.get_all(filters={"user_id": u}, page=1, page_size=3)
    assert first["count"] == 7 and len(first["results"]) == 3
    assert first["previous"] is None and "page=2" in first["next"]
    seen: list[str] = []
    for page in (1, 2, 3):
        got = client.get_all(filters={"user_id": u}, page=page, page_size=3)
        seen += [m["id"] for m in got["results"]]
    assert got["next"] is None and "page=2" in got["previous"]
    assert len(seen) == 7 and set(seen) == set(added)
    assert seen == list(reversed(added))  # newest first
    assert client.get_all(filters={"user_id": u}, page=4, page_size=3)["results"] == []
    assert client.get_all(filters={"user_id": u})["count"] == 7


def test_batch_entities_feedback_exports(server: Server) -> None:
    key, _, _ = server.new_key("batch")
    c = MemoryClient(api_key=key, host=server.base_url)
    a = c.add("alpha", user_id="ann", agent_id="bot")["results"][0]["id"]
    b = c.add("beta", user_id="ann")["results"][0]["id"]
    c.add("gamma", user_id="ben", run_id="s1")
    assert c.batch_update(
        [{"memory_id": a, "text": "alpha 2"}, {"memory_id": b, "metadata": {"x": 1}}]
    ) == {"message": "Successfully updated 2 memories"}
    assert c.get(a)["memory"] == "alpha 2" and c.get(b)["metadata"] == {"x": 1}
    with pytest.raises(MemoryNotFoundError):
        c.batch_update(
            [{"memory_id": a, "text": "no"}, {"memory_id": str(uuid.uuid4()), "text": "x"}]
        )
    assert c.get(a)["memory"] == "alpha 2"  # nothing written when one id is unknown

    fb = c.feedback(a, "positive", "spot on")
    assert fb["feedback"] == "POSITIVE" and fb["id"]
    assert c.history(a)[-1]["event"] == "FEEDBACK"

    export = c.create_memory_export("{}", filters={"user_id": "ann"})
    data = c.get_memory_export(memory_export_id=export["id"])
    assert {m["memory"] for m in data["memories"]} == {"beta"}

    users = c.users()
    assert {(e["type"], e["name"]) for e in users["results"]} == {
        ("user", "ann"),
        ("user", "ben"),
        ("agent", "bot"),
        ("run", "s1"),
    }
    assert users["total_users"] == 2
    # deleting a user deletes every memory carrying that id, whatever its other ids
    assert c.delete_users(user_id="ann") == {"message": "Entity deleted successfully."}
    with pytest.raises(MemoryNotFoundError):
        c.get(a)
    assert c.batch_delete(
        [
            {"memory_id": m["id"]}
            for m in c.get_all(filters={"user_id": "ben", "run_id": "*"})["results"]
        ]
    ) == {"message": "Successfully deleted 1 memories"}
    c.add("delta", user_id="cat")
    assert c.reset()["message"].startswith("Client reset successful")
    assert c.users()["results"] == []
    with pytest.raises(ValueError, match="No entities"):
        c.reset()


# -- the async client ---------------------------------------------------------------------------
def test_async_client(server: Server, uid: Callable[[str], str]) -> None:
    u = uid("async")

    async def go() -> None:
        async with AsyncMemoryClient(api_key=server.keys["a"], host=server.base_url) as c:
            assert (c.org_id, c.project_id) == ("org_a", "proj_a")
            assert (await c.project.get())["project_id"] == "proj_a"
            added = await asyncio.gather(*(c.add(f"async fact {i}", user_id=u) for i in range(4)))
            mids = [r["results"][0]["id"] for r in added]
            got = await c.get_all(filters={"user_id": u}, page=1, page_size=2)
            assert got["count"] == 4 and len(got["results"]) == 2
            hits = await c.search("async fact", filters={"user_id": u}, threshold=0)
            assert {h["id"] for h in hits["results"]} == set(mids)
            await c.update(mids[0], text="changed")
            await c.delete(mids[1])
            hist = await c.history(mids[0])
            assert [h["event"] for h in hist] == ["ADD", "UPDATE"]
            with pytest.raises(MemoryNotFoundError):
                await c.get(mids[1])
            # async_mode: the documented pending shape, then the memory appears
            pending = await c.add("queued fact", user_id=u, async_mode=True)
            assert pending["status"] == "PENDING" and pending["event_id"]
            qid = pending["results"][0]["id"]
            for _ in range(100):
                try:
                    assert (await c.get(qid))["memory"] == "queued fact"
                    break
                except MemoryNotFoundError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("async_mode memory never appeared")
            assert (await c.delete_all(user_id=u))["count"] == 4

    asyncio.run(go())


# -- relevance with the real default embedder (MiniLM int8 ONNX) ----------------------------------
@pytest.fixture(scope="module")
def minilm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        Path(tmp_path_factory.mktemp("serve-minilm")), embedder="minilm",
        keys={"a": ("org_m", "proj_m", None)},
    )  # fmt: skip
    try:
        yield srv
    finally:
        stop_server(srv)


def test_search_relevance_with_minilm(minilm_server: Server) -> None:
    c = MemoryClient(api_key=minilm_server.keys["a"], host=minilm_server.base_url)
    facts = [
        "Alice drinks green tea every morning",
        "Alice's flight to Lisbon leaves on Friday",
        "Alice is allergic to peanuts",
        "Alice plays the cello in an orchestra",
        "Alice's dog is called Biscuit",
    ]
    c.add([{"role": "user", "content": f} for f in facts], user_id="alice")
    cases = {
        "what does alice like to drink?": facts[0],
        "when is the trip to Portugal?": facts[1],
        "which foods must alice avoid?": facts[2],
        "what musical instrument does she play": facts[3],
        "name of her pet": facts[4],
    }
    for query, best in cases.items():
        hits = c.search(query, filters={"user_id": "alice"}, top_k=3)["results"]
        assert hits and hits[0]["memory"] == best, (query, [h["memory"] for h in hits])
        assert hits == sorted(hits, key=lambda h: -h["score"])
    # the default threshold (0.1) drops unrelated memories; 0 disables it
    loose = c.search(
        "quantum chromodynamics lattice gauge", filters={"user_id": "alice"}, threshold=0
    )
    strict = c.search(
        "quantum chromodynamics lattice gauge", filters={"user_id": "alice"}, threshold=0.5
    )
    assert len(strict["results"]) < len(loose["results"]) == len(facts)
