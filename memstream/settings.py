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
    # inference (docs/inference.md): an OpenAI-compatible chat-completions endpoint, or off
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = 60.0  # per attempt
    llm_max_retries: int = 2  # on 429, 5xx, timeouts and refused connections, with backoff
    llm_temperature: float = 0.0
    webhooks: bool = True  # `serve` runs the webhook dispatcher (docs/webhooks.md)
    webhook_max_attempts: int = 8  # tries per event before it is recorded as failed
    webhook_backoff_s: float = 1.0  # wait after the first failed try; doubles per try
    webhook_timeout_s: float = 10.0  # per HTTP request to a receiver
    # signed checkpoints of the log's chain heads (memstream.log.checkpoint)
    checkpoint_key: str | None = None  # Ed25519 seed (64 hex) or a passphrase
    checkpoint_key_file: Path | None = None  # else this file, else <data_dir>/checkpoint.key
    checkpoint_interval_s: float = 300.0  # `serve` writes one this often (0 = never)

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
            llm_base_url=env.get("MEMSTREAM_LLM_BASE_URL") or None,
            llm_model=env.get("MEMSTREAM_LLM_MODEL") or None,
            llm_api_key=env.get("MEMSTREAM_LLM_API_KEY") or None,
            llm_timeout_s=float(env.get("MEMSTREAM_LLM_TIMEOUT_S", "60")),
            llm_max_retries=int(env.get("MEMSTREAM_LLM_MAX_RETRIES", "2")),
            llm_temperature=float(env.get("MEMSTREAM_LLM_TEMPERATURE", "0")),
            webhooks=env.get("MEMSTREAM_WEBHOOKS", "1").lower() not in ("0", "false", "no", "off"),
            webhook_max_attempts=int(env.get("MEMSTREAM_WEBHOOK_MAX_ATTEMPTS", "8")),
            webhook_backoff_s=float(env.get("MEMSTREAM_WEBHOOK_BACKOFF_S", "1")),
            webhook_timeout_s=float(env.get("MEMSTREAM_WEBHOOK_TIMEOUT_S", "10")),
            checkpoint_key=env.get("MEMSTREAM_CHECKPOINT_KEY") or None,
            checkpoint_key_file=(
                Path(env["MEMSTREAM_CHECKPOINT_KEY_FILE"])
                if env.get("MEMSTREAM_CHECKPOINT_KEY_FILE")
                else None
            ),
            checkpoint_interval_s=float(env.get("MEMSTREAM_CHECKPOINT_INTERVAL_S", "300")),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def log_description(self) -> str:
        if self.kafka_bootstrap:
            return f"Kafka {self.kafka_bootstrap} topic {self.topic}"
        return f"file log {self.data_dir / 'log'}"

    @property
    def llm_description(self) -> str:
        """Whether inference is on, and with which model where (never the key)."""
        if not (self.llm_base_url and self.llm_model):
            return "inference off (no LLM configured: infer=True stores messages verbatim)"
        return f"inference on: model {self.llm_model} at {self.llm_base_url}"
