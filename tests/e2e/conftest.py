"""End-to-end fixtures: a real `memstream serve` subprocess on a free loopback port.

`server` (session scope, parametrized over the embedded file log and real Kafka) starts
`memstream [--kafka B --topic T] --embedder hashing serve` in a temporary data dir, creates
API keys with the real CLI (`memstream keys create`, the key read from the last stdout line),
waits until the server answers, and stops it (SIGTERM) at the end. Tests share the servers,
so each test writes under its own unique entity ids or its own project (`server.new_key()`).
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.servers import Server, start_server, stop_server

os.environ.setdefault("MEM0_TELEMETRY", "False")  # the mem0 client must not phone home


def _session_server(request: pytest.FixtureRequest, backend: str) -> Iterator[Server]:
    kafka = None
    if backend == "kafka":
        kafka = (
            request.getfixturevalue("kafka_bootstrap"),
            f"memstream-e2e.{uuid.uuid4().hex[:10]}",
        )
    keys = {
        "a": ("org_a", "proj_a", "alpha"),
        "a2": ("org_a", "proj_a2", None),
        "b": ("org_b", "proj_b", None),
    }
    tmp = request.getfixturevalue("tmp_path_factory").mktemp(f"serve-{backend}")
    srv = start_server(tmp, kafka=kafka, keys=keys)
    try:
        yield srv
    finally:
        stop_server(srv)
        if srv.proc is not None and srv.proc.returncode not in (0, -signal.SIGTERM):
            print(f"memstream serve exited {srv.proc.returncode}:\n{srv.log_tail()}")


@pytest.fixture(scope="session")
def file_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server on the embedded file log, with keys for two orgs and three projects (a, a2, b)."""
    yield from _session_server(request, "file")


@pytest.fixture(scope="session")
def kafka_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The same on a fresh topic of a real Kafka broker (tests/kafka_broker.py)."""
    yield from _session_server(request, "kafka")


@pytest.fixture(scope="session", params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest) -> Server:
    """`file_server` and `kafka_server` in turn: every test using it runs on both logs."""
    srv: Server = request.getfixturevalue(f"{request.param}_server")
    return srv


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique entity ids per test, readable in the server's data."""
    token = uuid.uuid4().hex[:8]

    def make(name: str) -> str:
        return f"{name}-{token}"

    return make
