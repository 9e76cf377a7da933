"""`GET /metrics`: the Prometheus text format (docs/metrics.md).

No API key, like any scrape target: the series carry no memory data, only counts, latencies
and positions. Expose the port only where Prometheus can reach it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from memstream.server.deps import MsDep

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def prometheus_metrics(ms: MsDep) -> Response:
    """Counters, histograms and the projector's lag behind the log's end (measured now)."""
    body, content_type = await ms.prometheus()
    return Response(content=body, media_type=content_type)
