"""The example consumers in examples/, run as a user would (subprocesses, no memstream code
in them), decode the events memstream wrote to a real Kafka topic: the Python one (fastavro,
aiokafka) and the Java one (Apache Avro's BinaryMessageDecoder, built with Maven)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memstream.service import Memstream
from memstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python-consumer" / "consume.py"


@dataclass
class Written:
    bootstrap: str
    topic: str
    ids: dict[str, str]


EXPECTED = ["MemoryAdded", "MemoryUpdated", "FeedbackGiven", "MemoryAdded", "MemoryDeleted"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Written:
    topic = f"memstream-consumer-{uuid.uuid4().hex[:10]}"
    settings = Settings(data_dir=tmp_path_factory.mktemp("consumer") / "data",
                        kafka_bootstrap=kafka_bootstrap, topic=topic, embedder="hashing")  # fmt: skip

    async def write() -> dict[str, str]:
        async with Memstream(settings) as ms:
            [tea] = await ms.add("likes green tea", user_id="alice", run_id="t-1")
            await ms.update(tea.id, text="likes oolong", timestamp=1_700_000_000)
            await ms.feedback(tea.id, feedback="POSITIVE", feedback_reason=None)
            [oslo] = await ms.add("lives in Oslo", user_id="alice")
            await ms.delete(oslo.id)
            return {"tea": tea.id, "oslo": oslo.id}

    return Written(kafka_bootstrap, topic, asyncio.run(write()))


def check(events: list[dict[str, Any]], ids: dict[str, str]) -> None:
    events.sort(key=lambda e: e["occurred_at"])
    assert [(e["event_type"], e["memory_id"]) for e in events] == list(zip(
        EXPECTED, [ids["tea"]] * 3 + [ids["oslo"]] * 2, strict=True))  # fmt: skip
    added, _, feedback, _, deleted = events
    assert added["scope"] == {"org_id": "local", "project_id": "default", "user_id": "alice",
                              "agent_id": None, "app_id": None, "run_id": "t-1"}  # fmt: skip
    assert feedback["feedback"] == "POSITIVE" and deleted["reason"] == "api"
    # texts are sealed under the subject's key: a Kafka-side reader sees placeholders + ciphertext
    assert added["text"] == "" and added["sealed"] and added["key_id"]


@pytest.mark.kafka
def test_the_python_example_decodes_what_memstream_wrote(written: Written) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", written.bootstrap, "--topic", written.topic,
         "--schemas", str(ROOT / "schemas"), "--limit", "5", "--idle-ms", "20000"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    check(events, written.ids)
    updated = next(e for e in events if e["event_type"] == "MemoryUpdated")
    assert updated["timestamp"].startswith("2023-11-14T22:13:20")  # timestamp-millis, logical
    assert "green tea" not in run.stdout


@pytest.mark.kafka
@pytest.mark.slow
def test_the_java_example_decodes_byte_for_byte(written: Written) -> None:
    """Maven builds the example (from Maven Central the first time), then Java's
    BinaryMessageDecoder decodes every message: it checks the magic bytes and looks the
    fingerprint up among the schemas, so memstream's fingerprints are Avro's own."""
    if (shutil.which("mvn") is None or shutil.which("java") is None) and not os.environ.get("CI"):
        pytest.skip("Maven and Java 17 are needed for the Java example")
    project = ROOT / "examples" / "java-consumer"
    subprocess.run(
        ["mvn", "-q", "-B", "compile", "dependency:build-classpath",
         "-Dmdep.outputFile=target/classpath.txt"],
        cwd=project, check=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    classpath = f"{project / 'target' / 'classes'}:{(project / 'target' / 'classpath.txt').read_text().strip()}"
    run = subprocess.run(
        ["java", "-cp", classpath, "io.memstream.example.Consume", written.bootstrap,
         written.topic, str(ROOT / "schemas"), "5", "20000"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    events = []
    for line in run.stdout.splitlines():
        _partition, _offset, event_type, record = line.split(" ", 3)
        events.append({"event_type": event_type, **json.loads(record)})
    check(events, written.ids)
    updated = next(e for e in events if e["event_type"] == "MemoryUpdated")
    assert updated["timestamp"] == 1_700_000_000_000  # no logical-type conversion: the long
