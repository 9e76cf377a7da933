"""A client that disconnects stops its request's work (issue 13): a real `memstream serve`,
real sockets, and the server process's CPU time from /proc/PID/stat.

The expensive request is a genuine one, within the default limits: a filter of 1,600
metadata conditions (none matching) over one user's 2,000 memories. Metadata cannot be
decided inside Lance, so every row goes through the reference evaluator (or, `as_of`, through
a DuckDB fold): seconds of CPU. Each test first runs the request to its answer and measures
what it costs; then sends it again on a raw socket, closes the socket once the server has
spent a quarter of that, and requires the server's CPU time to level off well below the
whole cost, and the cancellation to be counted in /metrics. Nothing is compared with the
wall clock: the loaded machine only makes every run slower, not the ratio different.

The inference test holds the scripted LLM's answer until the client has gone: the add is
abandoned before anything reaches the log, which a later add to the same scope shows.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_metrics import scrape, value
from tests.llm_server import Reply, ScriptedLLM, decide, facts
from tests.servers import Server, start_server, stop_server

USER = "busy-user"
CORPUS = 1000
CONDITIONS = [{"metadata": {"n": -i}} for i in range(1600)]  # no memory has a negative n
EXPENSIVE = {"user_id": USER, "AND": [{"OR": CONDITIONS[:1000]}, {"OR": CONDITIONS[1000:]}]}
POLL_S = 0.5
MAX_POLLS = 1200  # every wait below is bounded: 10 minutes of polls at most


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as llm:
        yield llm


@pytest.fixture(scope="module")
def busy(scripted: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own (its CPU time is the measurement) with the corpus, and an LLM."""
    srv = start_server(
        tmp_path_factory.mktemp("disconnect"),
        keys={"a": ("org_dc", "proj_dc", None)},
        env={
            "MEMSTREAM_LLM_BASE_URL": scripted.base_url,
            "MEMSTREAM_LLM_MODEL": "scripted-disconnect",
            "MEMSTREAM_LLM_MAX_RETRIES": "0",
            "MEMSTREAM_LLM_TIMEOUT_S": "120",
        },
        log_level="info",  # the cancellations are logged at INFO
    )
    try:
        with api(srv) as client:
            for start in range(0, CORPUS, 1000):
                messages = [
                    {"role": "user", "content": f"memory {i} about topic {i % 97}"}
                    for i in range(start, start + 1000)
                ]
                r = client.post("/v3/memories/add/", json={
                    "messages": messages, "user_id": USER, "infer": False, "metadata": {"n": 1},
                })  # fmt: skip
                assert r.status_code == 200, r.text
        settled_cpu_s(srv)  # the tests read the CPU time from an idle server
        yield srv
    finally:
        stop_server(srv)


def api(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Token {server.keys['a']}"},
        timeout=600,
    )


def cpu_s(server: Server) -> float:
    """User + system CPU seconds of the server process, all its threads."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_cpu_s(server: Server) -> float:
    """The CPU time once it has levelled off: two successive polls each adding less than a
    fifth of a core's worth (an idle server, its projector polling, uses ~0.04 of one)."""
    quiet = 0
    last = cpu_s(server)
    for _ in range(MAX_POLLS):
        time.sleep(POLL_S)
        now = cpu_s(server)
        quiet = quiet + 1 if now - last < 0.2 * POLL_S else 0
        last = now
        if quiet >= 2:
            return now
    raise AssertionError("the server's CPU time never levelled off")


def send_raw(server: Server, path: str, body: dict[str, Any]) -> socket.socket:
    """The request on a socket of our own, so the test decides when the client goes."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Token {server.keys['a']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def disconnects(server: Server, route: str, outcome: str) -> float:
    samples = scrape(server)
    return value(samples, "memstream_client_disconnects_total", route=route, outcome=outcome)


EXPENSIVE_READS = {
    "get_all": ("/v3/memories/", {"filters": EXPENSIVE}),
    "get_all_as_of": ("/v3/memories/", {"filters": EXPENSIVE, "as_of": "2099-01-01"}),
}


@pytest.mark.parametrize("read", EXPENSIVE_READS)
def test_a_client_that_leaves_stops_an_expensive_read(busy: Server, read: str) -> None:
    path, body = EXPENSIVE_READS[read]
    # the whole request, answered: its cost in CPU seconds on this machine, now
    before = cpu_s(busy)  # idle: the fixture and every test leave it settled
    with api(busy) as client:
        answered = client.post(path, json=body)
    assert answered.status_code == 200, answered.text
    whole = settled_cpu_s(busy) - before
    counted = disconnects(busy, path, "cancelled")

    # the same request; the client leaves once the server has spent a quarter of that
    before = cpu_s(busy)
    sock = send_raw(busy, path, body)
    for _ in range(MAX_POLLS):
        if cpu_s(busy) - before >= whole / 4:
            break
        time.sleep(POLL_S / 10)
    sock.close()
    spent = settled_cpu_s(busy) - before

    assert disconnects(busy, path, "cancelled") == counted + 1
    print(f"{read}: whole {whole:.2f} CPU s, {spent:.2f} after leaving at a quarter")
    assert spent < 0.6 * whole, f"{read}: {spent:.2f} CPU s after leaving, {whole:.2f} whole"
    assert f"POST {path} cancelled" in " ".join(busy.log_tail(400).split())
    # the server goes on serving, and the worker threads it used are free again
    with api(busy) as client:
        again = client.post("/v3/memories/", json={"filters": {"user_id": USER}, "page_size": 1})
    assert again.status_code == 200 and again.json()["count"] == CORPUS
    settled_cpu_s(busy)


def test_an_inferred_add_whose_client_leaves_writes_nothing(
    busy: Server, scripted: ScriptedLLM
) -> None:
    user = f"leaver-{uuid.uuid4().hex[:8]}"
    release = threading.Event()
    asked = len(scripted.requests)
    appended = scrape(busy)
    scripted.push(Reply(facts("Likes green tea"), hold=release))
    sock = send_raw(busy, "/v3/memories/add/", {
        "messages": [{"role": "user", "content": "I like green tea."}], "user_id": user,
    })  # fmt: skip
    try:
        for _ in range(MAX_POLLS):  # the server is waiting for the LLM's facts
            if len(scripted.requests) > asked:
                break
            time.sleep(POLL_S / 10)
        counted = disconnects(busy, "/v3/memories/add/", "cancelled")
        sock.close()
        for _ in range(MAX_POLLS):
            if disconnects(busy, "/v3/memories/add/", "cancelled") > counted:
                break
            time.sleep(POLL_S / 10)
        assert disconnects(busy, "/v3/memories/add/", "cancelled") == counted + 1
    finally:
        release.set()

    # a later inferred add to the same scope is all that reaches the log
    scripted.push(facts("Drinks coffee"), decide({"id": "n1", "text": "Drinks coffee",
                                                  "event": "ADD"}))  # fmt: skip
    with api(busy) as client:
        later = client.post("/v3/memories/add/", json={
            "messages": [{"role": "user", "content": "I drink coffee."}], "user_id": user,
        })  # fmt: skip
        assert later.status_code == 200, later.text
        listed = client.post("/v3/memories/", json={"filters": {"user_id": user}}).json()
    assert [m["memory"] for m in listed["results"]] == ["Drinks coffee"]
    now = scrape(busy)
    for kind in ("MessagesRecorded", "InferenceDecided", "MemoryAdded"):
        grew = value(now, "memstream_events_appended_total", type=kind) - value(
            appended, "memstream_events_appended_total", type=kind
        )
        assert grew == 1, f"{kind}: {grew} appended, only the later add's expected"
    assert len(scripted.requests) == asked + 3  # the abandoned add never asked again
