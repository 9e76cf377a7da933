"""The REST API over plain HTTP: tenancy for every endpoint, auth, error shapes, the keys CLI,
our own Python client, and several servers sharing one Kafka topic.

Runs against the embedded file log and real Kafka (the `server` fixture).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import memstream
from memstream.errors import AuthError, NotFoundError, ValidationError
from tests.servers import Server, start_server, stop_server


def http(server: Server, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Token {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=60)


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with http(server, server.keys["a"]) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def err(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def operations(server: Server) -> set[tuple[str, str]]:
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}


# -- tenancy: nothing in a request reaches another project ------------------------------------
@dataclass
class Victim:
    """Project A's data: one memory (with a history), one export and one webhook."""

    memory_id: str
    user: str
    agent: str
    run: str
    export_id: str
    snapshot: dict[str, Any]
    history: list[dict[str, Any]]
    webhook: dict[str, Any]


@pytest.fixture
def victim(server: Server, api: httpx.Client, uid: Callable[[str], str]) -> Victim:
    user, agent, run = uid("victim"), uid("vagent"), uid("vrun")
    add = ok(api.post("/v3/memories/add/", json={
        "messages": "the victim's secret", "user_id": user, "agent_id": agent, "run_id": run,
        "metadata": {"secret": True},
    }))  # fmt: skip
    mid = add["results"][0]["id"]
    ok(api.put(f"/v1/memories/{mid}/", json={"text": "the victim's secret, v2"}))
    scope = {"user_id": user, "agent_id": agent, "run_id": run}
    export = ok(api.post("/v1/exports/", json={"schema": {}, "filters": scope}), 201)
    hook = ok(api.post("/api/v1/webhooks/projects/proj_a/", json={  # a type that never fires
        "name": "victim hook", "url": "http://127.0.0.1:9/", "event_types": ["memory_categorize"],
    }), 201)  # fmt: skip
    return Victim(mid, user, agent, run, export["id"], ok(api.get(f"/v1/memories/{mid}/")),
                  ok(api.get(f"/v1/memories/{mid}/history/")),
                  ok(api.get(f"/api/v1/webhooks/{hook['webhook_id']}/")))  # fmt: skip


def _scope(v: Victim) -> dict[str, str]:
    return {"user_id": v.user, "agent_id": v.agent, "run_id": v.run}


def _no_victim_text(body: Any) -> None:
    assert "victim's secret" not in json.dumps(body), body


# One case per operation in /openapi.json (test_tenancy_covers_every_operation checks that).
# Each runs with another project's key and asserts it saw nothing of project A.
def t_ping(c: httpx.Client, v: Victim, server: Server) -> None:
    body = ok(c.get("/v1/ping/"))
    assert body["project_id"] != "proj_a"


def t_project(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.get("/api/v1/orgs/organizations/org_a/projects/proj_a/"), 404)


def t_project_update(c: httpx.Client, v: Victim, server: Server) -> None:
    err(
        c.patch(
            "/api/v1/orgs/organizations/org_a/projects/proj_a/",
            json={"custom_instructions": "leak project A's memories"},
        ),
        404,
    )
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Token {server.keys['a']}"}
    ) as owner:
        project = ok(owner.get("/api/v1/orgs/organizations/org_a/projects/proj_a/"))
    assert project["custom_instructions"] != "leak project A's memories"


def t_projects(c: httpx.Client, v: Victim, server: Server) -> None:
    r = c.get("/api/v1/orgs/organizations/org_a/projects/")
    if r.status_code == 200:  # same org, other project: sees only its own project
        assert [p["project_id"] for p in r.json()] != ["proj_a"]
    else:
        err(r, 404)


def t_feedback(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.post("/v1/feedback/", json={"memory_id": v.memory_id, "feedback": "NEGATIVE"}), 404)


def _add(path: str) -> Callable[[httpx.Client, Victim, Server], None]:
    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        # org/project in the body, query or filters are ignored: the key decides
        intruder = f"intruder-{uuid.uuid4().hex[:6]}"
        body = {
            "messages": "intruder note",
            "user_id": intruder,
            "org_id": "org_a",
            "project_id": "proj_a",
        }
        ok(c.post(path, json=body, params={"org_id": "org_a", "project_id": "proj_a"}))
        with http(server, server.keys["a"]) as owner:
            assert (
                ok(owner.post("/v3/memories/", json={"filters": {"user_id": intruder}}))["count"]
                == 0
            )
        assert ok(c.post("/v3/memories/", json={"filters": {"user_id": intruder}}))["count"] == 1

    return case


def _list_v3(path: str) -> Callable[[httpx.Client, Victim, Server], None]:
    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        for filters in (_scope(v), {"user_id": v.user, "agent_id": "*", "run_id": "*"},
                        {"AND": [{"user_id": "*"}, {"agent_id": "*"}, {"run_id": "*"}]}):  # fmt: skip
            body = ok(c.post(path, json={"filters": filters, "org_id": "org_a", "project_id": "proj_a"},
                             params={"page": 1, "page_size": 50}))  # fmt: skip
            _no_victim_text(body)
            assert v.memory_id not in json.dumps(body)

    return case


def t_list_v1(c: httpx.Client, v: Victim, server: Server) -> None:
    body = ok(
        c.get("/v1/memories/", params={**_scope(v), "org_id": "org_a", "project_id": "proj_a"})
    )
    assert body == []


def _search(path: str) -> Callable[[httpx.Client, Victim, Server], None]:
    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        body = ok(c.post(path, json={"query": "secret", "filters": _scope(v), "threshold": 0,
                                     "org_id": "org_a", "project_id": "proj_a"}))  # fmt: skip
        _no_victim_text(body)

    return case


def t_delete_all(c: httpx.Client, v: Victim, server: Server) -> None:
    body = ok(
        c.delete("/v1/memories/", params={**_scope(v), "org_id": "org_a", "project_id": "proj_a"})
    )
    assert body["count"] == 0
    body = ok(
        c.delete(
            "/v1/memories/",
            params={"filters": repr({"user_id": v.user, "agent_id": "*", "run_id": "*"})},
        )
    )
    assert body["count"] == 0


def t_get(c: httpx.Client, v: Victim, server: Server) -> None:
    _no_victim_text(err(c.get(f"/v1/memories/{v.memory_id}/"), 404))


def t_update(c: httpx.Client, v: Victim, server: Server) -> None:
    err(
        c.put(f"/v1/memories/{v.memory_id}/", json={"text": "pwned", "metadata": {"pwned": 1}}), 404
    )


def t_delete(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.delete(f"/v1/memories/{v.memory_id}/"), 404)


def t_history(c: httpx.Client, v: Victim, server: Server) -> None:
    _no_victim_text(err(c.get(f"/v1/memories/{v.memory_id}/history/"), 404))


def t_event(c: httpx.Client, v: Victim, server: Server) -> None:
    _no_victim_text(err(c.get(f"/v1/event/{v.history[0]['id']}/"), 404))


def t_batch_update(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.put("/v1/batch/", json={"memories": [{"memory_id": v.memory_id, "text": "pwned"}]}), 404)


def t_batch_delete(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.request("DELETE", "/v1/batch/", json={"memories": [{"memory_id": v.memory_id}]}), 404)


def t_entities(c: httpx.Client, v: Victim, server: Server) -> None:
    body = ok(c.get("/v1/entities/"))
    assert not {e["name"] for e in body["results"]} & {v.user, v.agent, v.run}


def _delete_entity(version: str) -> Callable[[httpx.Client, Victim, Server], None]:
    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        for kind, name in (("user", v.user), ("agent", v.agent), ("run", v.run)):
            assert ok(c.delete(f"/{version}/entities/{kind}/{name}/"))["count"] == 0

    return case


def t_export_create(c: httpx.Client, v: Victim, server: Server) -> None:
    created = ok(c.post("/v1/exports/", json={"schema": {}, "filters": _scope(v)}), 201)
    got = ok(c.post("/v1/exports/get/", json={"memory_export_id": created["id"]}))
    assert got["memories"] == [] and got["project_id"] != "proj_a"


def t_export_get(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.post("/v1/exports/get/", json={"memory_export_id": v.export_id}), 404)
    body = ok(c.post("/v1/exports/get/", json={"filters": _scope(v)}))
    assert body["memories"] == []


def t_erase(c: httpx.Client, v: Victim, server: Server) -> None:
    """Erasing the victim's ids from another project erases that project's namesakes only."""
    for field, name in (("user_id", v.user), ("agent_id", v.agent), ("run_id", v.run)):
        body = ok(c.post("/v1/erasures/", json={field: name, "org_id": "org_a",
                                                "project_id": "proj_a"}))  # fmt: skip
        assert body["memories_erased"] == 0 and body["subject"] == {field: name}


def t_stats(c: httpx.Client, v: Victim, server: Server) -> None:
    everything = ok(c.post("/v1/stats/", json={"by": ["user", "agent", "app", "run", "day"]}))
    names = {g["key"] for groups in everything["groups"].values() for g in groups}
    assert not names & {v.user, v.agent, v.run}
    scoped = ok(c.post("/v1/stats/", json={"filters": _scope(v), "by": ["user"],
                                           "org_id": "org_a", "project_id": "proj_a"}))  # fmt: skip
    assert scoped["total"] == 0 and scoped["groups"]["user"] == []


def t_projector(c: httpx.Client, v: Victim, server: Server) -> None:
    body = ok(c.get("/v1/projector/"))
    assert set(body) == {"lag", "partitions"}
    _no_victim_text(body)


def t_export_download(c: httpx.Client, v: Victim, server: Server) -> None:
    for body in ({"filters": _scope(v), "format": "json"}, {"format": "csv"}):
        r = c.post("/v1/exports/download/", json=body)
        assert r.status_code == 200, r.text
        assert "victim" not in r.text and v.memory_id not in r.text


def _project_admin(method: str, path: str) -> Callable[[httpx.Client, Victim, Server], None]:
    """Project and member management is 501 for every key (projects are keys): aimed at
    project A from another project, it answers the same sentence and changes nothing."""

    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        url = path.format(org_id="org_a", project_id="proj_a")
        detail = err(c.request(method, url, json={"name": "x", "email": "e@x.io"}), 501)
        assert "memstream" in detail and "\n" not in detail

    return case


def _unsupported(method: str, path: str) -> Callable[[httpx.Client, Victim, Server], None]:
    """Profiles and summaries are 501 for every key: aimed at project A's user from another
    project, they answer the same sentence and reveal nothing of A."""

    def case(c: httpx.Client, v: Victim, server: Server) -> None:
        url = path.format(entity_type="user", entity_id=v.user, job_id="job_0")
        r = c.request(method, url, json={"user_id": v.user, "filters": {"user_id": v.user}})
        detail = err(r, 501)
        assert "\n" not in detail and v.user not in detail and v.snapshot["memory"] not in r.text

    return case


PROJECTS = "/api/v1/orgs/organizations/{org_id}/projects/"
PROJECT = PROJECTS + "{project_id}/"
MEMBERS = PROJECT + "members/"


def t_webhooks_list(c: httpx.Client, v: Victim, server: Server) -> None:
    assert "belongs to project" in err(c.get("/api/v1/webhooks/projects/proj_a/"), 404)
    own = ok(c.get("/v1/ping/"))["project_id"]
    body = ok(c.get(f"/api/v1/webhooks/projects/{own}/"))
    assert v.webhook["webhook_id"] not in json.dumps(body)


def t_webhook_create(c: httpx.Client, v: Victim, server: Server) -> None:
    body = {"name": "intruder", "url": "http://127.0.0.1:9/", "event_types": ["memory_add"]}
    assert "belongs to project" in err(c.post("/api/v1/webhooks/projects/proj_a/", json=body), 404)


def t_webhook_get(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.get(f"/api/v1/webhooks/{v.webhook['webhook_id']}/"), 404)


def t_webhook_update(c: httpx.Client, v: Victim, server: Server) -> None:
    body = {"url": "http://127.0.0.1:9/stolen", "event_types": ["memory_add"]}
    err(c.put(f"/api/v1/webhooks/{v.webhook['webhook_id']}/", json=body), 404)


def t_webhook_delete(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.delete(f"/api/v1/webhooks/{v.webhook['webhook_id']}/"), 404)


def t_webhook_deliveries(c: httpx.Client, v: Victim, server: Server) -> None:
    err(c.get(f"/api/v1/webhooks/{v.webhook['webhook_id']}/deliveries/"), 404)


TENANCY_CASES: dict[tuple[str, str], Callable[[httpx.Client, Victim, Server], None]] = {
    **{
        (m, p): _project_admin(m, p)
        for m, p in (
            ("POST", PROJECTS),
            ("PATCH", PROJECT),
            ("DELETE", PROJECT),
            *((verb, MEMBERS) for verb in ("GET", "POST", "PUT", "DELETE")),
        )
    },  # fmt: skip
    **{
        (m, p): _unsupported(m, p)
        for m, p in (
            ("GET", "/v2/entities/{entity_type}/{entity_id}/profile/"),
            ("POST", "/v2/profiles/jobs/"),
            ("GET", "/v2/profiles/jobs/{job_id}/"),
            ("GET", "/v2/profiles/settings/"),
            ("POST", "/v2/profiles/settings/"),
            ("POST", "/v1/summary/"),
        )
    },  # fmt: skip
    ("GET", "/v1/ping/"): t_ping,
    ("GET", "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/"): t_project,
    ("GET", "/api/v1/orgs/organizations/{org_id}/projects/"): t_projects,
    ("PATCH", "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/"): t_project_update,
    ("POST", "/v1/feedback/"): t_feedback,
    ("POST", "/v3/memories/add/"): _add("/v3/memories/add/"),
    ("POST", "/v1/memories/"): _add("/v1/memories/"),
    ("POST", "/v3/memories/"): _list_v3("/v3/memories/"),
    ("POST", "/v2/memories/"): _list_v3("/v2/memories/"),
    ("GET", "/v1/memories/"): t_list_v1,
    ("POST", "/v3/memories/search/"): _search("/v3/memories/search/"),
    ("POST", "/v2/memories/search/"): _search("/v2/memories/search/"),
    ("POST", "/v1/memories/search/"): _search("/v1/memories/search/"),
    ("DELETE", "/v1/memories/"): t_delete_all,
    ("GET", "/v1/memories/{memory_id}/"): t_get,
    ("PUT", "/v1/memories/{memory_id}/"): t_update,
    ("DELETE", "/v1/memories/{memory_id}/"): t_delete,
    ("GET", "/v1/memories/{memory_id}/history/"): t_history,
    ("GET", "/v1/event/{event_id}/"): t_event,
    ("PUT", "/v1/batch/"): t_batch_update,
    ("DELETE", "/v1/batch/"): t_batch_delete,
    ("GET", "/v1/entities/"): t_entities,
    ("DELETE", "/v2/entities/{entity_type}/{entity_name}/"): _delete_entity("v2"),
    ("DELETE", "/v1/entities/{entity_type}/{entity_name}/"): _delete_entity("v1"),
    ("POST", "/v1/exports/"): t_export_create,
    ("POST", "/v1/exports/get/"): t_export_get,
    ("POST", "/v1/erasures/"): t_erase,
    ("POST", "/v1/stats/"): t_stats,
    ("GET", "/v1/projector/"): t_projector,
    ("POST", "/v1/exports/download/"): t_export_download,
    ("GET", "/api/v1/webhooks/projects/{project_id}/"): t_webhooks_list,
    ("POST", "/api/v1/webhooks/projects/{project_id}/"): t_webhook_create,
    ("GET", "/api/v1/webhooks/{webhook_id}/"): t_webhook_get,
    ("PUT", "/api/v1/webhooks/{webhook_id}/"): t_webhook_update,
    ("DELETE", "/api/v1/webhooks/{webhook_id}/"): t_webhook_delete,
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries/"): t_webhook_deliveries,
}


def test_tenancy_covers_every_operation(server: Server) -> None:
    assert operations(server) == set(TENANCY_CASES)


@pytest.mark.parametrize("attacker", ["a2", "b"], ids=["same-org", "other-org"])
def test_no_request_reaches_another_project(
    server: Server, api: httpx.Client, victim: Victim, attacker: str
) -> None:
    with http(server, server.keys[attacker]) as c:
        for (method, path), case in TENANCY_CASES.items():
            case(c, victim, server)
            # project A is exactly as it was
            assert ok(api.get(f"/v1/memories/{victim.memory_id}/")) == victim.snapshot, (
                method,
                path,
            )
    assert ok(api.get(f"/v1/memories/{victim.memory_id}/history/")) == victim.history
    assert ok(api.post("/v3/memories/", json={"filters": _scope(victim)}))["count"] == 1
    assert (
        ok(api.post("/v1/exports/get/", json={"memory_export_id": victim.export_id}))["count"] == 1
    )
    assert ok(api.get(f"/api/v1/webhooks/{victim.webhook['webhook_id']}/")) == victim.webhook


# -- auth on every operation --------------------------------------------------------------------
def _fill(path: str) -> str:
    return (path.replace("{memory_id}", str(uuid.uuid4())).replace("{org_id}", "org_a")
            .replace("{project_id}", "proj_a").replace("{entity_type}", "user")
            .replace("{event_id}", str(uuid.uuid4())).replace("{webhook_id}", "wh_0")
            .replace("{entity_name}", "nobody"))  # fmt: skip


def test_every_operation_needs_a_valid_key(server: Server) -> None:
    revoked, _, _ = server.new_key("revoked")
    server.cli("keys", "revoke", revoked.split("_")[1])
    bad = {
        "missing": None,
        "garbage": "Token nonsense",
        "unknown": "Token msk_0123456789abcdef_nope",
        "wrong scheme": f"Basic {server.keys['a']}",
        "revoked": f"Token {revoked}",
    }
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        for method, path in sorted(operations(server)):
            for label, header in bad.items():
                headers = {"Authorization": header} if header else {}
                body: dict[str, Any] | None = {} if method in ("POST", "PUT", "DELETE") else None
                deadline = time.monotonic() + 10
                while True:
                    r = c.request(method, _fill(path), headers=headers, json=body)
                    if r.status_code == 401 or label != "revoked" or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)  # revocation reaches the server through the keys log
                detail = err(r, 401)
                assert r.headers.get("www-authenticate") == "Token", (method, path, label)
                assert "key" in detail.lower() or "credentials" in detail.lower()


def test_keys_are_stored_hashed_and_listed_without_secrets(server: Server) -> None:
    key, org, project = server.new_key("listed")
    key_id, secret = key.split("_", 2)[1:]
    listed = json.loads(server.cli("--json", "keys", "list").stdout)["results"]
    mine = [k for k in listed if k["key_id"] == key_id]
    assert mine and mine[0]["project_id"] == project and mine[0]["active"] is True
    assert secret not in json.dumps(listed)
    if server.backend == "file":  # the keys log lives in the data dir: no plaintext secret anywhere
        for path in server.data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    # revoke: idempotent, and the server refuses the key
    server.cli("keys", "revoke", key_id)
    assert json.loads(server.cli("--json", "keys", "revoke", key_id).stdout)["active"] is False
    assert server.cli("keys", "revoke", "0000000000000000", check=False).returncode != 0


# -- request/response shapes, errors ------------------------------------------------------------
def test_errors_name_the_field(api: httpx.Client, uid: Callable[[str], str]) -> None:
    u = uid("err")
    assert "top_k" in err(
        api.post(
            "/v3/memories/search/", json={"query": "x", "filters": {"user_id": u}, "top_k": "many"}
        ),
        422,
    )
    assert "messages" in err(api.post("/v3/memories/add/", json={"user_id": u}), 422)
    assert "messages[0].role" in err(
        api.post(
            "/v3/memories/add/",
            json={"messages": [{"role": "robot", "content": "x"}], "user_id": u},
        ),
        400,
    )
    assert "filters.created_at" in err(
        api.post("/v3/memories/", json={"filters": {"user_id": u, "created_at": {"between": 1}}}),
        400,
    )
    assert "filters" in err(api.post("/v3/memories/", json={"filters": {}}), 400)
    assert "agent_id" in err(
        api.delete("/v1/memories/", params={"user_id": u, "agent_id": ""}), 400
    )
    assert "filters" in err(api.delete("/v1/memories/", params={"filters": "{not json"}), 400)
    assert "expiration_date" in err(
        api.post(
            "/v3/memories/add/", json={"messages": "x", "user_id": u, "expiration_date": "soon"}
        ),
        400,
    )
    assert "page_size" in err(
        api.post("/v3/memories/", params={"page_size": 0}, json={"filters": {"user_id": u}}), 400
    )
    assert "page" in err(
        api.post("/v3/memories/", params={"page": "two"}, json={"filters": {"user_id": u}}), 422
    )
    assert "Unicode" in err(api.post("/v3/memories/add/", content=b'{"messages": "\\ud800", "user_id": "x"}',
                                     headers={"content-type": "application/json"}), 422)  # fmt: skip
    assert "not found" in err(api.get(f"/v1/memories/{uuid.uuid4()}/"), 404).lower()
    assert "entity_type" in err(api.delete("/v2/entities/planet/earth/"), 400)
    err(api.put("/v1/batch/", json={"memories": [{"memory_id": "x"}] * 1001}), 400)
    # unknown fields are ignored, as on the platform
    body = ok(api.post("/v3/memories/add/", json={"messages": "tolerant", "user_id": u, "version": "v2",
                                                  "output_format": "v1.1", "bogus": {"x": 1}}))  # fmt: skip
    assert body["results"][0]["event"] == "ADD"


def test_exact_paths_never_redirect(server: Server, api: httpx.Client) -> None:
    assert api.get("/v1/ping").status_code == 404
    assert api.post("/v3/memories/add", json={"messages": "x", "user_id": "y"}).status_code == 404
    assert api.get("/v1/ping/").status_code == 200
    assert httpx.get(f"{server.base_url}/docs").status_code == 200
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    assert spec["info"]["title"] == "memstream"
    assert "Token" in json.dumps(spec["components"]["securitySchemes"])


def test_delete_all_filters_as_json_or_python_repr(
    api: httpx.Client, uid: Callable[[str], str]
) -> None:
    u = uid("repr")
    for run in ("r1", "r2", "r3"):
        ok(
            api.post(
                "/v3/memories/add/", json={"messages": f"in {run}", "user_id": u, "run_id": run}
            )
        )
    ok(api.post("/v3/memories/add/", json={"messages": "no run", "user_id": u}))
    assert (
        ok(
            api.delete(
                "/v1/memories/", params={"filters": json.dumps({"user_id": u, "run_id": "r1"})}
            )
        )["count"]
        == 1
    )
    assert (
        ok(
            api.delete(
                "/v1/memories/", params={"filters": repr({"user_id": u, "run_id": {"in": ["r2"]}})}
            )
        )["count"]
        == 1
    )
    # query-parameter ids constrain only what they name (as on the platform): every memory
    # of the user goes, whatever its run - here "in r3" and "no run"
    body = ok(api.delete("/v1/memories/", params={"user_id": u}))
    assert body == {"message": "Memories deleted successfully!", "count": 2}
    left = ok(api.post("/v3/memories/", json={"filters": {"user_id": u, "run_id": "*"}}))
    assert left["results"] == []
    assert ok(api.post("/v3/memories/", json={"filters": {"user_id": u}}))["results"] == []


def test_erasure_endpoint(api: httpx.Client, uid: Callable[[str], str]) -> None:
    u = uid("erin")
    [added] = ok(api.post("/v3/memories/add/", json={"messages": "erin's secret", "user_id": u}))[
        "results"
    ]
    ok(api.post("/v3/memories/add/", json={"messages": "in a run", "user_id": u, "run_id": "r"}))
    assert "exactly one" in err(
        api.post("/v1/erasures/", json={"user_id": u, "agent_id": "a"}), 400
    )
    assert "exactly one" in err(api.post("/v1/erasures/", json={"reason": "no subject"}), 400)
    body = ok(api.post("/v1/erasures/", json={"user_id": u, "reason": "ticket 9"}))
    assert body["subject"] == {"user_id": u} and body["memories_erased"] == 2
    assert body["keys_destroyed"] == 1
    err(api.get(f"/v1/memories/{added['id']}/"), 404)
    left = ok(api.post("/v3/memories/", json={"filters": {"user_id": u, "run_id": ["*", None]}}))
    assert left["results"] == []


def test_async_mode_idempotency_immutable_expiry(
    api: httpx.Client, uid: Callable[[str], str]
) -> None:
    u = uid("misc")
    pending = ok(
        api.post("/v3/memories/add/", json={"messages": "later", "user_id": u, "async_mode": True})
    )
    assert pending["status"] == "PENDING" and pending["event_id"] and pending["message"]
    assert pending["results"][0]["status"] == "PENDING"
    deadline = time.monotonic() + 20
    while (event := ok(api.get(f"/v1/event/{pending['event_id']}/")))["status"] == "PENDING":
        assert time.monotonic() < deadline, event
        time.sleep(0.05)
    assert event["status"] == "SUCCEEDED" and event["event_type"] == "ADD"
    assert event["results"] == [
        {"id": pending["results"][0]["id"], "event": "ADD", "data": {"memory": "later"}}
    ]
    err(api.get(f"/v1/event/{uuid.uuid4()}/"), 404)
    # the same Idempotency-Key twice writes once and answers the same
    hdr = {"Idempotency-Key": uid("req")}
    first = ok(api.post("/v3/memories/add/", json={"messages": "once", "user_id": u}, headers=hdr))
    again = ok(api.post("/v3/memories/add/", json={"messages": "once", "user_id": u}, headers=hdr))
    assert first["results"][0]["id"] == again["results"][0]["id"]
    # immutable memories refuse updates (409)
    frozen = ok(
        api.post("/v3/memories/add/", json={"messages": "frozen", "user_id": u, "immutable": True})
    )
    err(api.put(f"/v1/memories/{frozen['results'][0]['id']}/", json={"text": "thawed"}), 409)
    # expired memories leave lists and search but get() still answers
    old = ok(
        api.post(
            "/v3/memories/add/",
            json={"messages": "expired", "user_id": u, "expiration_date": "2001-01-01"},
        )
    )
    old_id = old["results"][0]["id"]
    listed = ok(api.post("/v3/memories/", json={"filters": {"user_id": u}}))
    assert old_id not in {m["id"] for m in listed["results"]}
    shown = ok(api.post("/v3/memories/", json={"filters": {"user_id": u}, "show_expired": True}))
    assert old_id in {m["id"] for m in shown["results"]}
    assert ok(api.get(f"/v1/memories/{old_id}/"))["expiration_date"] == "2001-01-01"
    # legacy shapes: v2 list without paging is a bare list, v1 search a bare list
    assert isinstance(ok(api.post("/v2/memories/", json={"filters": {"user_id": u}})), list)
    assert isinstance(ok(api.post("/v1/memories/search/", json={"query": "x", "user_id": u})), list)
    # history entries carry the actor: the key id and the calling application
    hist = ok(api.get(f"/v1/memories/{first['results'][0]['id']}/history/"))
    assert hist[0]["actor"]["key_id"] and hist[0]["actor"]["source"].startswith("rest")


# -- our own Python client ----------------------------------------------------------------------
def test_memstream_client_sync(server: Server, uid: Callable[[str], str]) -> None:
    u = uid("py")
    with memstream.Client(api_key=server.keys["a"], host=server.base_url) as c:
        assert (c.tenant.org_id, c.tenant.project_id) == ("org_a", "proj_a")
        [r] = c.add("I drink coffee", user_id=u, metadata={"k": 1})
        assert r.event == "ADD"
        m = c.get(r.id)
        assert (m.memory, m.user_id, m.metadata, m.project_id) == (
            "I drink coffee",
            u,
            {"k": 1},
            "proj_a",
        )
        assert [x.id for x in c.search("coffee", {"user_id": u}, threshold=0)] == [r.id]
        page = c.get_all({"user_id": u}, page_size=10)
        assert page.count == 1 and page.results[0].id == r.id
        assert (
            c.update(r.id, text="I drink tea", expiration_date="2099-01-01").memory == "I drink tea"
        )
        assert c.update(r.id, expiration_date=None).expiration_date is None
        assert [h.event for h in c.history(r.id)] == ["ADD", "UPDATE", "UPDATE"]
        with pytest.raises(ValidationError, match="filters"):
            c.get_all({})
        c.delete(r.id)
        with pytest.raises(NotFoundError):
            c.get(r.id)
        c.add("one", user_id=u, run_id="s")
        c.add("two", user_id=u, run_id="s")
        assert c.delete_all(user_id=u, run_id="s") == 2
        assert c.delete_all({"user_id": u, "run_id": "*"}) == 0
    with pytest.raises(AuthError):
        memstream.Client(api_key="msk_0123456789abcdef_nope", host=server.base_url).get_all(
            {"user_id": u}
        )


def test_memstream_client_async(server: Server, uid: Callable[[str], str]) -> None:
    u = uid("pyasync")

    async def go() -> None:
        async with memstream.AsyncClient(api_key=server.keys["a"], host=server.base_url) as c:
            written = await asyncio.gather(*(c.add(f"note {i}", user_id=u) for i in range(3)))
            ids = {w[0].id for w in written}
            page = await c.get_all({"user_id": u})
            assert {m.id for m in page.results} == ids
            hits = await c.search("note", {"user_id": u}, threshold=0)
            assert {h.id for h in hits} == ids and all(h.score is not None for h in hits)
            one = next(iter(ids))
            assert (await c.update(one, text="changed")).memory == "changed"
            await c.delete(one)
            assert [h.event for h in await c.history(one)] == ["ADD", "UPDATE", "DELETE"]
            with pytest.raises(NotFoundError):
                await c.get(one)
            assert await c.delete_all(user_id=u) == 2

    asyncio.run(go())


# -- several servers on one Kafka topic ---------------------------------------------------------
@pytest.mark.kafka
def test_two_servers_share_one_kafka_topic(
    kafka_server: Server, tmp_path_factory: pytest.TempPathFactory, uid: Callable[[str], str]
) -> None:
    server = kafka_server
    kafka = (server.global_args[server.global_args.index("--kafka") + 1],
             server.global_args[server.global_args.index("--topic") + 1])  # fmt: skip
    # servers sharing a topic share its master key (subject keys are wrapped under it)
    shared_key = {"MEMSTREAM_MASTER_KEY_FILE": str(server.data_dir / "master.key")}
    second = start_server(tmp_path_factory.mktemp("serve-kafka-2"), kafka=kafka, env=shared_key)
    try:
        u = uid("shared")
        with http(server, server.keys["a"]) as one, http(second, server.keys["a"]) as two:
            mid = ok(
                one.post("/v3/memories/add/", json={"messages": "written on one", "user_id": u})
            )["results"][0]["id"]

            def eventually(check: Callable[[], bool]) -> None:
                deadline = time.monotonic() + 30
                while not check():
                    assert time.monotonic() < deadline, "the second server never caught up"
                    time.sleep(0.1)

            eventually(lambda: two.get(f"/v1/memories/{mid}/").status_code == 200)
            assert ok(two.get(f"/v1/memories/{mid}/"))["memory"] == "written on one"
            ok(two.delete(f"/v1/memories/{mid}/"))
            eventually(lambda: one.get(f"/v1/memories/{mid}/").status_code == 404)
            # a key created after both started works on both
            key, _, project = server.new_key("shared")
            assert ok(http(second, key).get("/v1/ping/"))["project_id"] == project
            assert ok(http(server, key).get("/v1/ping/"))["project_id"] == project
    finally:
        stop_server(second)
