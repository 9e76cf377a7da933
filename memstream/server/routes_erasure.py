"""Subject erasure (memstream's own endpoint; the platform's entity delete is a soft delete).

`DELETE /v2/entities/{type}/{name}/` keeps Mem0's meaning: the memories are deleted and the
audit keeps their texts. `POST /v1/erasures/` is what a data-subject request needs: the
subject's keys are destroyed, so the texts are gone from every read, export, replay and raw
log dump, and the projections drop what they derived (see docs/erasure.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from memstream.server.auth import CallerDep
from memstream.server.deps import MsDep
from memstream.server.schemas import ErasureOut, ErasureRequest, doc

router = APIRouter(tags=["erasure"])


@router.post("/v1/erasures/", responses=doc(ErasureOut), summary="Erase a subject for good")
async def erase_subject(ms: MsDep, caller: CallerDep, body: ErasureRequest) -> Any:
    """Crypto-shred one user (or agent, app, run) of the key's project. Irreversible."""
    return await ms.erase(
        tenant=caller.tenant, user_id=body.user_id, agent_id=body.agent_id, app_id=body.app_id,
        run_id=body.run_id, reason=body.reason, actor=caller.actor,
    )  # fmt: skip
