"""`GET /metrics`: the Prometheus text format (docs/metrics.md).

Not part of the Mem0 API, so not in /openapi.json. No API key, like any scrape target: the series carry no memory data, only counts, latencies
and positions. Expose the port only where Prometheus can reach it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from memstream.server.deps import MsDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def prometheus_metrics(ms: MsDep) -> Response:
    """Counters, histograms and the projector's lag behind the log's end (measured now)."""
    body, content_type = await ms.prometheus()
    return Response(content=body, media_type=content_type)
