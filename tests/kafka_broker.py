"""pytest plugin: a real Apache Kafka broker for the tests that need one.

Hooked up from tests/conftest.py with ``pytest_plugins = ["tests.kafka_broker"]``.

``kafka_bootstrap`` (session scope) finds a broker, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment (used as is, never stopped);
2. testcontainers' Kafka module, when a Docker engine answers a ping within a few seconds
   (image ``MEMSTREAM_KAFKA_IMAGE``, default ``confluentinc/cp-kafka:7.9.0`` in KRaft mode);
3. ``scripts/kafka-local start`` (Kafka from Maven Central jars, Java 17 + Maven), in a
   temporary state dir, stopped at session end; a watchdog also stops it if pytest dies.

When none works: ``pytest.fail`` if ``CI`` is true-ish or ``MEMSTREAM_REQUIRE_KAFKA=1``
(a CI run must never silently skip the Kafka suite), else ``pytest.skip`` with the reasons.
Only tests that request the fixture pay for the broker; a skip/fail is cached for the session.

``kafka_topic`` gives each test a fresh topic name; ``unique_topic_name`` is the factory
behind it, for tests that need several.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO_ROOT / "scripts" / "kafka-local"
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.9.0"
START_TIMEOUT_S = 600.0  # covers a cold jar fetch (~20 s here) plus the broker start (~5 s)

_broker_note: list[str] = []  # for the terminal summary


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on", "y"}


def kafka_required() -> bool:
    """A missing broker fails the run (CI, or explicitly asked) instead of skipping."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("MEMSTREAM_REQUIRE_KAFKA"))


def _no_broker(reason: str) -> None:
    msg = f"no Kafka broker available: {reason}"
    if kafka_required():
        pytest.fail(
            msg + " (CI / MEMSTREAM_REQUIRE_KAFKA set: failing, not skipping)", pytrace=False
        )
    pytest.skip(msg)


def _docker_engine_answers(timeout_s: float = 3.0) -> bool:
    if _truthy(os.environ.get("MEMSTREAM_KAFKA_NO_DOCKER")):
        return False
    try:
        import docker  # the SDK testcontainers itself uses

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.kafka import KafkaContainer

    image = os.environ.get("MEMSTREAM_KAFKA_IMAGE", DEFAULT_IMAGE)
    container = KafkaContainer(image).with_kraft()
    container.start(timeout=180)
    return container.get_bootstrap_server(), container.stop


def _start_kafka_local(state_dir: Path) -> tuple[str, Callable[[], None]]:
    if not KAFKA_LOCAL.is_file():
        raise RuntimeError(f"{KAFKA_LOCAL} is missing")
    base = [sys.executable, str(KAFKA_LOCAL)]
    try:
        proc = subprocess.run(
            [*base, "start", "--dir", str(state_dir), "--owner-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        subprocess.run([*base, "stop", "--dir", str(state_dir)], capture_output=True, timeout=60)
        raise RuntimeError(f"kafka-local start took over {START_TIMEOUT_S:.0f}s") from exc
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode != 0 or not last.startswith("KAFKA_BOOTSTRAP_SERVERS="):
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        raise RuntimeError(f"kafka-local start failed (exit {proc.returncode}):\n{tail}")

    def stop() -> None:
        subprocess.run(
            [*base, "stop", "--dir", str(state_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=90,
        )

    return last.split("=", 1)[1], stop


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`host:port` of a running Kafka broker (see the module docstring for where it comes from)."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env:
        _broker_note.append(f"kafka: KAFKA_BOOTSTRAP_SERVERS={env}")
        yield env
        return

    reasons: list[str] = []
    started: tuple[str, Callable[[], None]] | None = None
    t0 = time.monotonic()
    if _docker_engine_answers():
        try:
            started = _start_container()
            source = "testcontainers"
        except Exception as exc:
            reasons.append(f"testcontainers Kafka failed: {type(exc).__name__}: {exc}")
    else:
        reasons.append("no Docker engine answers (testcontainers not usable)")
    if started is None:
        try:
            started = _start_kafka_local(tmp_path_factory.mktemp("kafka-local"))
            source = "scripts/kafka-local"
        except Exception as exc:
            reasons.append(f"scripts/kafka-local: {exc}")
    if started is None:
        _no_broker("; ".join(reasons))
        return  # unreachable: _no_broker raises
    bootstrap, stop = started
    _broker_note.append(f"kafka: {source} at {bootstrap}, ready in {time.monotonic() - t0:.1f}s")
    try:
        yield bootstrap
    finally:
        stop()


@pytest.fixture
def unique_topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory: a fresh, legal Kafka topic name per call, readable in broker logs."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:120]

    def make(prefix: str = "memstream-test") -> str:
        return f"{prefix}.{test}.{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def kafka_topic(unique_topic_name: Callable[[str], str]) -> str:
    """A topic name no other test (or earlier run against the same broker) has used."""
    return unique_topic_name("memstream-test")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for note in _broker_note:
        terminalreporter.write_line(note)
