"""Runtime settings: flags override environment variables override defaults.

Every input bound lives here (`Limits`), so the REST edge, the Python API and the CLI refuse
the same oversized input with the same message, and an operator can change a bound with an
environment variable (docs/rest.md, "Limits") without touching code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from memstream.errors import ValidationError


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class Limits:
    """Bounds on every input, checked before anything is written or evaluated, so that each
    request does bounded work and nothing is stored that a read could not answer.
    The environment variable of each is `MEMSTREAM_` + its name in capitals."""

    max_body_bytes: int = 4 * 1024 * 1024  # one HTTP request body (413 beyond it)
    max_text_chars: int = 100_000  # one memory's text (an add's message, an update's text)
    max_messages: int = 1_000  # messages in one add (each becomes an event)
    max_query_chars: int = 10_000  # a search query
    max_metadata_bytes: int = 64 * 1024  # one memory's metadata, as compact JSON
    max_metadata_depth: int = 32  # nesting of objects and lists inside metadata
    max_filter_list: int = 1_000  # values in one `in` / `nin` / memory_ids list
    max_filter_nodes: int = 5_000  # every object, list and value of one filters tree
    rate_limit_per_s: float = 0.0  # requests per second per API key; 0 = no limit
    rate_limit_burst: int = 0  # a key's bucket size (0 = max(1, 2 s worth of requests))

    @classmethod
    def from_env(cls) -> Limits:
        values: dict[str, Any] = {}
        for f in fields(cls):
            default = getattr(cls, f.name)
            value = _env_number(f"MEMSTREAM_{f.name.upper()}", default)
            values[f.name] = int(value) if isinstance(default, int) else value
        return cls(**values)

    def check_filters(self, filters: Any, where: str = "filters") -> None:
        """Refuse a filters tree past the list-length and node-count bounds, before it is
        parsed or evaluated (so the work a filter can cause is bounded), naming the part."""
        if filters is None:
            return
        nodes = 0
        stack: list[tuple[str, Any]] = [(where, filters)]
        while stack:
            path, value = stack.pop()
            nodes += 1
            if nodes > self.max_filter_nodes:
                raise ValidationError(
                    f"{where}: more than {self.max_filter_nodes} objects, lists and values "
                    "(MEMSTREAM_MAX_FILTER_NODES)"
                )
            if isinstance(value, dict):
                stack.extend((f"{path}.{k}", v) for k, v in value.items())
            elif isinstance(value, list | tuple):
                if len(value) > self.max_filter_list:
                    raise ValidationError(
                        f"{path}: {len(value)} values, more than {self.max_filter_list} "
                        "(MEMSTREAM_MAX_FILTER_LIST)"
                    )
                stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))

    def check_query(self, query: Any, where: str = "query") -> None:
        if isinstance(query, str) and len(query) > self.max_query_chars:
            raise ValidationError(
                f"{where}: {len(query)} characters, more than {self.max_query_chars} "
                "(MEMSTREAM_MAX_QUERY_CHARS)"
            )


DEFAULT_TIER_ROWS = 2000
DEFAULT_TIER_AGE_S = 1.0


def tier_rows_from_env() -> int:
    """MEMSTREAM_TIER_ROWS: events the fresh tier holds before it is flushed (0: no tier)."""
    return int(_env_number("MEMSTREAM_TIER_ROWS", DEFAULT_TIER_ROWS))


def tier_age_from_env() -> float:
    """MEMSTREAM_TIER_AGE_S: seconds an event stays in the fresh tier at most (0: no tier)."""
    return _env_number("MEMSTREAM_TIER_AGE_S", DEFAULT_TIER_AGE_S)


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
    # the projector's fresh tier (projector/tier.py, docs/configuration.md): applied events
    # wait in memory, searchable, and are written to LanceDB in batches of up to
    # `tier_rows` events or after `tier_age_s` seconds; either 0 turns the tier off.
    # Defaults read from the environment, so every Settings (tests too) follows it.
    tier_rows: int = field(default_factory=tier_rows_from_env)
    tier_age_s: float = field(default_factory=tier_age_from_env)
    # inference (docs/inference.md): an OpenAI-compatible chat-completions endpoint, or off
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = 60.0  # per attempt
    llm_max_retries: int = 2  # on 429, 5xx, timeouts and refused connections, with backoff
    llm_temperature: float = 0.0
    # async inferred adds (producers/resume.py): transient failures are retried until the
    # add is this old; owed adds another server accepted are resumed once this old; and
    # owed adds are looked for this often
    infer_retry_for_s: float = 600.0
    infer_resume_after_s: float = 300.0
    infer_resume_interval_s: float = 30.0
    webhooks: bool = True  # `serve` runs the webhook dispatcher (docs/webhooks.md)
    webhook_max_attempts: int = 8  # tries per event before it is recorded as failed
    webhook_backoff_s: float = 1.0  # wait after the first failed try; doubles per try
    webhook_timeout_s: float = 10.0  # per HTTP request to a receiver
    # signed checkpoints of the log's chain heads (memstream.log.checkpoint)
    checkpoint_key: str | None = None  # Ed25519 seed (64 hex) or a passphrase
    checkpoint_key_file: Path | None = None  # else this file, else <data_dir>/checkpoint.key
    checkpoint_interval_s: float = 300.0  # `serve` writes one this often (0 = never)
    # a write to Kafka not acknowledged within this is answered 503 (and dropped from the
    # producer's queue, see docs/guarantees.md "Availability")
    append_timeout_s: float = 10.0
    # reads wait at most this long for a projection being rebuilt, then answer 503
    ready_wait_s: float = 2.0
    # /readyz answers 503 while the projection is more than this many events behind the log
    ready_max_lag: int = 10_000
    # the key-encryption key of the Kafka subject-key store (base64 of 32 bytes); None ->
    # master_key_file, else <data_dir>/master.key (generated, mode 0600)
    master_key: str | None = field(default=None, repr=False)
    master_key_file: Path | None = None
    master_key_previous: str | None = field(default=None, repr=False)  # comma-separated
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        key_file = env.get("MEMSTREAM_MASTER_KEY_FILE") or None
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
            infer_retry_for_s=_env_number("MEMSTREAM_INFER_RETRY_FOR_S", 600.0),
            infer_resume_after_s=_env_number("MEMSTREAM_INFER_RESUME_AFTER_S", 300.0),
            infer_resume_interval_s=_env_number("MEMSTREAM_INFER_RESUME_INTERVAL_S", 30.0),
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
            append_timeout_s=_env_number("MEMSTREAM_APPEND_TIMEOUT_S", 10.0),
            ready_wait_s=_env_number("MEMSTREAM_READY_WAIT_S", 2.0),
            ready_max_lag=int(_env_number("MEMSTREAM_READY_MAX_LAG", 10_000)),
            master_key=env.get("MEMSTREAM_MASTER_KEY") or None,
            master_key_file=Path(key_file) if key_file else None,
            master_key_previous=env.get("MEMSTREAM_MASTER_KEY_PREVIOUS") or None,
            limits=Limits.from_env(),
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
