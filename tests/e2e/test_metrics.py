"""`GET /metrics` of a real `memstream serve`, read with prometheus_client's own text parser:
the counters and histograms move when memories are added and searched."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from mem0 import MemoryClient
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Server


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by the Prometheus text-format parser."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_adds_and_searches(server: Server, uid: Callable[[str], str]) -> None:
    before = scrape(server)
    client = MemoryClient(api_key=server.keys["a"], host=server.base_url)
    user = uid("metered")
    try:
        for i in range(3):
            client.add(f"metered fact {i}", user_id=user)
        for _ in range(2):
            client.search("fact", filters={"user_id": user})
    finally:
        client.client.close()
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("memstream_events_appended_total", type="MemoryAdded") == 3
    assert moved("memstream_events_projected_total", type="MemoryAdded") == 3
    assert moved("memstream_search_seconds_count") == 2
    assert moved("memstream_search_seconds_sum") > 0
    assert moved("memstream_embed_seconds_count") >= 3  # the projection's batches + 2 queries
    assert moved("memstream_embed_texts_total") >= 5
    assert moved("memstream_projector_batch_size_count") >= 1
    assert moved("memstream_projector_batch_size_sum") >= 3
    # every partition of the log has a lag series, and the adds above are applied
    lags = {k[1]: v for k, v in after.items() if k[0] == "memstream_projector_lag_events"}
    assert lags and all(v >= 0 for v in lags.values())
    expected = {"0"} if server.backend == "file" else {"0", "1", "2"}
    assert {dict(labels)["partition"] for labels in lags} == expected
    assert ("process_resident_memory_bytes", ()) in after
