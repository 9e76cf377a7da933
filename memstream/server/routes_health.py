"""Probes for orchestrators and load balancers: liveness and readiness (no API key needed).

`/healthz` answers 200 while the process serves HTTP. `/readyz` answers 200 only when reads
tell the truth: the projection has caught up with the log as it was at start (not while it
is being rebuilt) and is at most `ready_max_lag` events behind the log's end now; else 503
with Retry-After and the reason. Neither is in /openapi.json: they are not the Mem0 API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse as JSON

from memstream.errors import MemstreamError
from memstream.server.limits import retry_after
from memstream.service import Memstream

router = APIRouter(tags=["health"], include_in_schema=False)

END_OFFSETS_TIMEOUT_S = 3.0


@router.get("/healthz")
async def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Any:
    ms: Memstream | None = getattr(request.app.state, "ms", None)
    if ms is None:
        return JSON({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})
    left = ms.rebuilding()
    if left is not None:
        return JSON(
            {"status": "rebuilding", "events_to_apply": left},
            status_code=503,
            headers={"Retry-After": retry_after(ms.settings.ready_wait_s)},
        )
    try:
        lag = await asyncio.wait_for(ms.lag(), END_OFFSETS_TIMEOUT_S)
    except (MemstreamError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, MemstreamError) else "the log did not answer"
        return JSON(
            {"status": "log unavailable", "detail": reason},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    bound = ms.settings.ready_max_lag
    if lag > bound:
        return JSON(
            {"status": "lagging", "lag": lag, "max_lag": bound},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return {"status": "ready", "lag": lag}
