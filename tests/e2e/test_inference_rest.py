"""Inference end to end: the official `mem0ai` client (2.2.1, unchanged; its `add` infers by
default) against `memstream serve` configured with a scripted chat-completions server on
loopback, on the file log and on real Kafka.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from mem0 import MemoryClient

from tests.llm_server import Reply, ScriptedLLM, decide, facts
from tests.servers import Server, start_server, stop_server


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as llm:
        yield llm


@pytest.fixture(scope="module", params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def infer_server(
    request: pytest.FixtureRequest, scripted: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kafka = None
    if request.param == "kafka":
        kafka = (
            request.getfixturevalue("kafka_bootstrap"),
            f"memstream-inf.{uuid.uuid4().hex[:8]}",
        )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEMSTREAM_LLM_BASE_URL", scripted.base_url)
        env.setenv("MEMSTREAM_LLM_MODEL", "scripted-e2e")
        env.setenv("MEMSTREAM_LLM_MAX_RETRIES", "0")
        env.setenv("MEMSTREAM_LLM_TIMEOUT_S", "5")
        env.setenv("MEMSTREAM_INFER_RETRY_FOR_S", "0")  # an async add's 500 fails it at once
        srv = start_server(
            tmp_path_factory.mktemp(f"infer-{request.param}"), kafka=kafka,
            keys={"a": ("org_i", "proj_i", "inference")},
        )  # fmt: skip
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def client(infer_server: Server) -> Iterator[MemoryClient]:
    c = MemoryClient(api_key=infer_server.keys["a"], host=infer_server.base_url)
    yield c
    c.client.close()


def test_serve_says_inference_is_on_with_which_model(infer_server: Server) -> None:
    assert "inference on: model scripted-e2e" in infer_server.log_tail(200)


def test_mem0_client_add_infers_by_default(client: MemoryClient, scripted: ScriptedLLM) -> None:
    user = f"alice-{uuid.uuid4().hex[:8]}"
    conversation = [
        {"role": "user", "content": "I'm a vegetarian and I live in Lisbon."},
        {"role": "assistant", "content": "Noted!"},
    ]
    scripted.push(
        facts("Is vegetarian", "Lives in Lisbon"),
        decide(
            {"id": "n1", "text": "Is vegetarian", "event": "ADD", "categories": ["food"]},
            {"id": "n2", "text": "Lives in Lisbon", "event": "ADD"},
        ),
    )
    first = client.add(conversation, user_id=user)
    assert first["inference"] == "on"
    assert sorted((r["event"], r["memory"]) for r in first["results"]) == [
        ("ADD", "Is vegetarian"), ("ADD", "Lives in Lisbon"),
    ]  # fmt: skip
    # the LLM was given the conversation, not the memstream request
    assert "I'm a vegetarian" in scripted.requests[-2]["messages"][1]["content"]

    scripted.push(
        facts("Eats fish now"),
        decide({"id": "0", "text": "Is pescatarian", "event": "UPDATE", "old_memory": "x"}),
    )
    second = client.add("I started eating fish.", user_id=user)
    [update] = second["results"]
    assert update["event"] == "UPDATE"
    shown = scripted.requests[-1]["messages"][1]["content"]
    assert update["previous_memory"] in ("Is vegetarian", "Lives in Lisbon")
    assert update["previous_memory"] in shown and update["id"] not in shown
    texts = {m["memory"] for m in client.get_all(filters={"user_id": user})["results"]}
    assert "Is pescatarian" in texts and len(texts) == 2
    history = client.history(update["id"])
    assert history[-1]["inference"]["explanation"].startswith(
        "updated by inference (model scripted-e2e) from the messages of "
    )
    # infer=False stays verbatim
    verbatim = client.add("raw note", user_id=user, infer=False)
    assert verbatim["inference"] == "not_requested"
    assert verbatim["results"][0]["memory"] == "raw note"


def test_update_project_steers_extraction(client: MemoryClient, scripted: ScriptedLLM) -> None:
    client.update_project(
        custom_instructions="Remember only travel plans.",
        custom_categories=[{"trips": "travel plans"}],
    )
    project = client.get_project()
    assert project["custom_instructions"] == "Remember only travel plans."
    assert project["custom_categories"] == [{"trips": "travel plans"}]
    user = f"bob-{uuid.uuid4().hex[:8]}"
    scripted.push(
        facts("Going to Japan in May"),
        decide(
            {"id": "n", "text": "Going to Japan in May", "event": "ADD", "categories": ["trips"]}
        ),
    )
    [added] = client.add("I'm going to Japan in May!", user_id=user)["results"]
    assert "Remember only travel plans." in scripted.requests[-2]["messages"][0]["content"]
    assert client.get(added["id"])["categories"] == ["trips"]


def test_async_mode_answers_pending_then_the_event_reports_the_outcome(
    infer_server: Server, scripted: ScriptedLLM
) -> None:
    headers = {"Authorization": f"Token {infer_server.keys['a']}"}
    user = f"carol-{uuid.uuid4().hex[:8]}"
    scripted.push(
        Reply(facts("Plays chess"), delay=2.0),
        decide({"id": "n", "text": "Plays chess", "event": "ADD"}),
    )
    with httpx.Client(base_url=infer_server.base_url, headers=headers, timeout=30) as http:
        answer = http.post(
            "/v3/memories/add/",
            json={"messages": [{"role": "user", "content": "I play chess"}], "user_id": user,
                  "async_mode": True},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "PENDING" and body["event_id"]
        first = http.get(f"/v1/event/{body['event_id']}/").json()
        assert first["status"] == "PENDING"  # the LLM is still thinking (2 s)
        deadline = time.monotonic() + 30
        while (status := http.get(f"/v1/event/{body['event_id']}/").json())["status"] == "PENDING":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["status"] == "SUCCEEDED"
        assert [(r["event"], r["data"]["memory"]) for r in status["results"]] == [
            ("ADD", "Plays chess")
        ]
        # a failing inference reports FAILED with the reason
        scripted.push(Reply(status=500))
        failed = http.post(
            "/v3/memories/add/",
            json={"messages": "I also play go", "user_id": user, "async_mode": True},
        ).json()
        deadline = time.monotonic() + 30
        while (status := http.get(f"/v1/event/{failed['event_id']}/").json())[
            "status"
        ] == "PENDING":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["status"] == "FAILED" and "HTTP 500" in status["error"]


def test_llm_down_is_503_naming_the_endpoint_and_nothing_is_written(
    infer_server: Server, client: MemoryClient, scripted: ScriptedLLM
) -> None:
    headers = {"Authorization": f"Token {infer_server.keys['a']}"}
    user = f"dave-{uuid.uuid4().hex[:8]}"
    scripted.push(Reply(status=500))
    response = httpx.post(
        f"{infer_server.base_url}/v3/memories/add/", headers=headers, timeout=30,
        json={"messages": [{"role": "user", "content": "I like jazz"}], "user_id": user},
    )  # fmt: skip
    assert response.status_code == 503
    assert scripted.host in response.json()["detail"]
    assert client.get_all(filters={"user_id": user})["results"] == []
    # the raw log holds no event of this user at all (neither messages nor decision)
    dump = infer_server.cli("--json", "log", "--limit", "0")
    assert dump.stdout.strip() and user not in dump.stdout
