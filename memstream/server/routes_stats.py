"""Counts for people who look rather than read (memstream's own endpoint; the dashboard's).

`POST /v1/stats/` counts the memories a get_all of the same `filters` would see, grouped by
several keys in one scan (every user, agent, app and run id with its count, null included
as "none"), so the dashboard's filter pills and charts never fetch the memories themselves.
It also reports how far this server's projector trails the log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from memstream.server.auth import CallerDep
from memstream.server.deps import MsDep, combine
from memstream.server.schemas import LagOut, StatsOut, StatsRequest, doc

router = APIRouter(tags=["stats"])


@router.post("/v1/stats/", responses=doc(StatsOut), summary="Count memories, grouped")
async def stats(ms: MsDep, caller: CallerDep, body: StatsRequest) -> Any:
    """`{"total": n, "groups": {"user": [{"key": "alice", "count": 3}, {"key": null, ...}]},
    "projector": {"lag": n, ...}}`. `filters` as get_all's (implicit null scoping); without
    them, every live memory of the key's project. `day` is the UTC day of created_at;
    `category` counts a memory once per category. Largest counts first."""
    result = await ms.stats(
        combine(body.filters, body.entities()), by=body.by, tenant=caller.tenant,
        as_of=body.as_of, show_expired=body.show_expired,
    )  # fmt: skip
    return {**result, "projector": await ms.projector_lag()}


@router.get("/v1/projector/", responses=doc(LagOut), summary="The projector's lag")
async def projector(ms: MsDep, caller: CallerDep) -> Any:
    """How many events of the log this server has not applied yet (per partition and in
    all): what a read may not reflect. Says nothing about any project's data."""
    return await ms.projector_lag()
