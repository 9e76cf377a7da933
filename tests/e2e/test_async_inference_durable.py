"""Async inferred adds survive the server that accepted them (issue 12; producers/resume.py),
with real `memstream serve` processes and a scripted chat-completions server on loopback.

- SIGKILL while the LLM holds the add's extraction call: the restarted server answers
  PENDING (not 404), settles the add, and it changes memories exactly once.
- Real Kafka, two servers on one topic both resuming one owed add: both ask the LLM and both
  append a decision; exactly one is applied on both projections, the other is recorded as
  DUPLICATE, and a replay from the topic gives the same.
- An add the LLM failed for good answers FAILED with the reason, after a restart too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llm_server import Reply, ScriptedLLM, decide, facts, schema_name
from tests.servers import Server, start_server, stop_server

WAIT_S = 120.0  # bound of every wait for a server or the LLM to get somewhere


def llm_env(llm: ScriptedLLM) -> dict[str, str]:
    return {
        "MEMSTREAM_LLM_BASE_URL": llm.base_url, "MEMSTREAM_LLM_MODEL": "scripted-e2e",
        "MEMSTREAM_LLM_MAX_RETRIES": "0", "MEMSTREAM_LLM_TIMEOUT_S": "90",
    }  # fmt: skip


def client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Token {key}"}, timeout=60
    )


def until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return value


def event_status(http: httpx.Client, event_id: str) -> dict[str, Any]:
    answer = http.get(f"/v1/event/{event_id}/")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def settled(http: httpx.Client, event_id: str) -> dict[str, Any]:
    status: dict[str, Any] = until(
        f"event {event_id} to be settled",
        lambda: (s := event_status(http, event_id))["status"] != "PENDING" and s,
    )
    return status


def memories(http: httpx.Client, user: str) -> list[tuple[str, str]]:
    page = http.post("/v2/memories/", json={"filters": {"user_id": user}, "page_size": 100})
    assert page.status_code == 200, page.text
    body = page.json()
    rows = body["results"] if isinstance(body, dict) else body
    return sorted((m["id"], m["memory"]) for m in rows)


def log_events(server: Server) -> list[dict[str, Any]]:
    """The raw log, as `memstream log` prints it."""
    events: list[dict[str, Any]] = json.loads(server.cli("--json", "log", "--limit", "0").stdout)[
        "events"
    ]
    return events


def having(events: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [e for e in events if all(e.get(k) == v for k, v in match.items())]


def audit(server: Server, org: str, project: str, user: str) -> dict[str, tuple[str, str]]:
    """event id -> (event type, the projector's outcome) of one user's events."""
    run = server.cli("--json", "--org-id", org, "--project-id", project, "audit",
                     "--user-id", user)  # fmt: skip
    return {e["id"]: (e["event_type"], e["event"]) for e in json.loads(run.stdout)["results"]}


def add_async(http: httpx.Client, user: str, text: str) -> str:
    answer = http.post(
        "/v3/memories/add/",
        json={"messages": [{"role": "user", "content": text}], "user_id": user,
              "async_mode": True},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "PENDING" and body["event_id"]
    return str(body["event_id"])


def kill(server: Server) -> None:
    assert server.proc is not None
    server.proc.kill()  # SIGKILL: no shutdown, no draining
    server.proc.wait(timeout=30)


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Gates a test holds LLM answers behind; all opened at the end, whatever happened."""
    made: list[threading.Event] = []
    yield made
    for gate in made:
        gate.set()


@pytest.mark.slow
def test_sigkill_while_the_llm_holds_an_async_add_then_a_restart_settles_it_once(
    tmp_path: Path, gates: list[threading.Event]
) -> None:
    """Also: an add the LLM failed for good before the kill answers FAILED, with the
    reason, from the restarted server, and is not asked about again."""
    held, resumed = threading.Event(), threading.Event()
    gates += [held, resumed]
    user = f"kim-{uuid.uuid4().hex[:6]}"
    with ScriptedLLM() as llm:
        llm.push(Reply("{not json"))  # unusable: final at once
        llm.push(Reply(facts("Plays chess"), gate=held))  # the killed server never hears back
        first = start_server(tmp_path / "data", keys={"k": ("org_k", "p", None)},
                             env=llm_env(llm))  # fmt: skip
        key = first.keys["k"]
        again: Server | None = None
        try:
            with client(first, key) as http:
                lost = add_async(http, user, "I play go")
                failed = settled(http, lost)
                assert failed["status"] == "FAILED" and llm.host in failed["error"]
                assert "malformed structured output" in failed["error"]
                eid = add_async(http, user, "I play chess")
                assert event_status(http, eid)["status"] == "PENDING"
            until("the LLM to be asked", lambda: len(llm.requests) == 2)
            kill(first)
            llm.push(Reply(facts("Plays chess"), gate=resumed),
                     decide({"id": "n", "text": "Plays chess", "event": "ADD"}))  # fmt: skip
            again = start_server(tmp_path / "data", env=llm_env(llm))
            with client(again, key) as http:
                # durable: the restarted server knows the add, and it is owed
                assert event_status(http, eid)["status"] == "PENDING"
                assert event_status(http, lost) == failed
                until("the restarted server to resume the add", lambda: len(llm.requests) == 3)
                resumed.set()
                status = settled(http, eid)
                assert status["status"] == "SUCCEEDED", status
                assert [(r["event"], r["data"]["memory"]) for r in status["results"]] == [
                    ("ADD", "Plays chess")
                ]
                [(mid, text)] = memories(http, user)
                assert text == "Plays chess" and status["results"][0]["id"] == mid
            # exactly once: one decision, the one failure, the LLM asked once more per call
            events = log_events(again)
            assert len(having(events, event_type="InferenceDecided", messages_event_id=eid)) == 1
            [record] = having(events, event_type="InferenceFailed")
            assert (record["messages_event_id"], record["attempts"]) == (lost, 1)
            assert len(llm.requests) == 4
        finally:
            stop_server(first)
            if again is not None:
                stop_server(again)


@pytest.mark.slow
@pytest.mark.kafka
def test_two_servers_on_one_topic_both_resume_an_owed_add_and_one_decision_applies(
    tmp_path: Path, kafka_bootstrap: str, gates: list[threading.Event]
) -> None:
    held, both = threading.Event(), threading.Event()
    gates += [held, both]
    user = f"lee-{uuid.uuid4().hex[:6]}"
    kafka = (kafka_bootstrap, f"memstream-resume.{uuid.uuid4().hex[:10]}")
    lock = threading.Lock()
    texts = iter(["Plays go", "Plays go on Sundays"])  # the two settlers decide differently

    def respond(request: dict[str, Any]) -> Reply:
        if not held.is_set():  # the first server's extraction: it is killed waiting
            return Reply(facts("Plays go"), gate=held)
        if schema_name(request) == "facts":  # both resumers, answered once both asked
            return Reply(facts("Plays go"), gate=both)
        with lock:
            text = next(texts)
        return Reply(decide({"id": "n", "text": text, "event": "ADD"}))

    with ScriptedLLM(responder=respond) as llm:
        first = start_server(tmp_path / "a", kafka=kafka, keys={"k": ("org_k", "p", None)},
                             env=llm_env(llm))  # fmt: skip
        key = first.keys["k"]
        # servers sharing a topic share its master key (subject keys are wrapped under it)
        env = {**llm_env(llm), "MEMSTREAM_MASTER_KEY_FILE": str(tmp_path / "a" / "master.key")}
        servers: list[Server] = []
        try:
            with client(first, key) as http:
                eid = add_async(http, user, "I play go")
            until("the LLM to be asked", lambda: len(llm.requests) == 1)
            kill(first)
            held.set()  # its answer goes to a dead connection; every later question resumes
            # both resume it at start; neither can settle it before the other asked (`both`)
            for name in ("a", "b"):
                servers.append(start_server(tmp_path / name, kafka=kafka, env=env))
            extractions = lambda: [r for r in llm.requests[1:] if schema_name(r) == "facts"]  # noqa: E731
            until("both servers to resume the add", lambda: len(extractions()) == 2)
            both.set()
            answers = []
            for server in servers:
                with client(server, key) as http:
                    status = settled(http, eid)
                    assert status["status"] == "SUCCEEDED", status
                    until("the memory", lambda h=http: memories(h, user))  # type: ignore[misc]
                    answers.append((status["results"], memories(http, user)))
            # one decision applied, the same on both projections
            assert answers[0] == answers[1]
            home = next(s for s in servers if s.data_dir == tmp_path / "a")  # has the master key
            [result], [(mid, text)] = answers[0]
            assert (result["event"], result["id"], result["data"]["memory"]) == ("ADD", mid, text)
            decisions = having(
                log_events(home), event_type="InferenceDecided", messages_event_id=eid
            )
            assert len(decisions) == 2 and all(d["settles"] for d in decisions)
            outcomes = audit(home, "org_k", "p", user)
            assert sorted(outcomes[d["event_id"]][1] for d in decisions) == ["DECIDED", "DUPLICATE"]
            adds = [o for o in outcomes.values() if o[0] == "MemoryAdded"]
            assert sorted(adds) == [("MemoryAdded", "ADD"), ("MemoryAdded", "DUPLICATE")]
            for server in servers:
                stop_server(server)
            # replay from the topic: the same outcomes (so the same single memory)
            home.cli("replay")
            assert audit(home, "org_k", "p", user) == outcomes
        finally:
            stop_server(first)
            for server in servers:
                stop_server(server)
