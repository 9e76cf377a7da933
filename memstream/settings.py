"""Runtime settings: flags override environment variables override defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./memstream-data")
    kafka_bootstrap: str | None = None  # None -> the embedded file log in data_dir/log
    topic: str = "memstream.events"
    partitions: int = 3
    embedder: str | None = None  # None -> the live projection's embedder, else minilm
    sweep_interval_s: float = 60.0  # expiry sweeper period in server mode
    org_id: str = "local"
    project_id: str = "default"
    keep_versions_s: float = 300.0  # superseded LanceDB table versions kept this long

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        base = cls(
            data_dir=Path(env.get("MEMSTREAM_DATA_DIR", "./memstream-data")),
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            topic=env.get("MEMSTREAM_TOPIC", "memstream.events"),
            partitions=int(env.get("MEMSTREAM_PARTITIONS", "3")),
            embedder=env.get("MEMSTREAM_EMBEDDER") or None,
            sweep_interval_s=float(env.get("MEMSTREAM_SWEEP_INTERVAL_S", "60")),
            org_id=env.get("MEMSTREAM_ORG_ID", "local"),
            project_id=env.get("MEMSTREAM_PROJECT_ID", "default"),
            keep_versions_s=float(env.get("MEMSTREAM_KEEP_VERSIONS_S", "300")),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def log_description(self) -> str:
        if self.kafka_bootstrap:
            return f"Kafka {self.kafka_bootstrap} topic {self.topic}"
        return f"file log {self.data_dir / 'log'}"
