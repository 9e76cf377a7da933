"""Prometheus metrics: one registry for the process, served at `/metrics` by `memstream serve`.

Instrumentation stays cheap: hot loops count per batch (one `inc(n)` per event type, not one
per event), and nothing here takes a lock beyond what prometheus-client's counters do. Gauges
that need I/O (the projector's lag behind the log's end) are set by the `/metrics` handler
when it is scraped, never on the write path. See docs/metrics.md for every series.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

EVENTS_APPENDED = Counter(
    "memstream_events_appended",
    "Events this process appended to the memory log, by event type",
    ["type"],
    registry=REGISTRY,
)
EVENTS_PROJECTED = Counter(
    "memstream_events_projected",
    "Events this process applied to the projection (live and replay), by event type",
    ["type"],
    registry=REGISTRY,
)
PROJECTOR_BATCH = Histogram(
    "memstream_projector_batch_size",
    "Events per batch the projector applied",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
PROJECTOR_LAG = Gauge(
    "memstream_projector_lag_events",
    "Events in the log not yet applied to the live projection (log end minus checkpoint)",
    ["partition"],
    registry=REGISTRY,
)
EMBED_SECONDS = Histogram(
    "memstream_embed_seconds",
    "Wall time of one call to the embedding model (a batch of texts, or one query)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EMBED_TEXTS = Counter(
    "memstream_embed_texts", "Texts handed to the embedding model", registry=REGISTRY
)
SEARCH_SECONDS = Histogram(
    "memstream_search_seconds",
    "Wall time of a search (embedding the query, filtering, ranking)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_PHASE_SECONDS = Histogram(
    "memstream_inference_phase_seconds",
    "Wall time of each phase of an inferred add (validate, catch_up, llm_extract, embed, "
    "search, llm_decide, seal, append, projection_wait, ...)",
    ["phase"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "memstream_webhook_deliveries",
    "Webhook delivery attempts by outcome: succeeded, retried (an attempt failed, another "
    "follows), failed (gave up after the last attempt)",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "memstream_webhook_delivery_seconds",
    "Wall time of one webhook HTTP request",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_LAG = Gauge(
    "memstream_webhook_lag_events",
    "Events in the log a webhook's dispatcher has not passed yet (all partitions)",
    ["webhook_id"],
    registry=REGISTRY,
)

CLIENT_DISCONNECTS = Counter(
    "memstream_client_disconnects",
    "Requests whose client disconnected before the answer, by route template and outcome: "
    "cancelled (the work was stopped) or completed (a write already appending ran to its end)",
    ["route", "outcome"],
    registry=REGISTRY,
)

_appended: dict[str, Any] = {}
_projected: dict[str, Any] = {}
_phases: dict[str, Any] = {}


def _child(counter: Counter | Histogram, cache: dict[str, Any], label: str) -> Any:
    child = cache.get(label)
    if child is None:
        child = cache[label] = counter.labels(label)
    return child


def count_appended(event_types: Iterable[str]) -> None:
    counts: dict[str, int] = {}  # a plain dict: a Counter costs ~3 us to build, per add
    for kind in event_types:
        counts[kind] = counts.get(kind, 0) + 1
    for kind, n in counts.items():
        _child(EVENTS_APPENDED, _appended, kind).inc(n)


def count_projected(event_types: Iterable[str], batch_size: int) -> None:
    for kind, n in Tally(event_types).items():
        _child(EVENTS_PROJECTED, _projected, kind).inc(n)
    PROJECTOR_BATCH.observe(batch_size)


def observe_inference_phase(phase: str, seconds: float) -> None:
    _child(INFERENCE_PHASE_SECONDS, _phases, phase).observe(seconds)


def set_projector_lag(end: dict[int, int], checkpoint: dict[int, int]) -> None:
    for partition, offset in end.items():
        PROJECTOR_LAG.labels(str(partition)).set(max(0, offset - checkpoint.get(partition, 0)))


def exposition() -> tuple[bytes, str]:
    """The text format body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
