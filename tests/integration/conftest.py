"""Every integration test runs against both logs: the embedded file log and real Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from memstream.settings import Settings


@pytest.fixture(params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "kafka":
        return Settings(
            data_dir=tmp_path / "data",
            kafka_bootstrap=request.getfixturevalue("kafka_bootstrap"),
            topic=request.getfixturevalue("kafka_topic"),
            embedder="hashing",
        )
    return Settings(data_dir=tmp_path / "data", embedder="hashing")
