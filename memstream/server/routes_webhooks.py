"""Webhooks, as the Mem0 SDKs call them, plus their delivery records (docs/webhooks.md).

The project in the path must be the key's own: a key sees and changes only its project's
webhooks, and another project's webhook id is answered like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from memstream.errors import NotFoundError
from memstream.server.auth import Caller, CallerDep
from memstream.server.deps import MsDep
from memstream.server.schemas import Body, MessageOut, Out, doc

router = APIRouter(tags=["webhooks"])

WEBHOOK_NOT_FOUND = "Webhook not found"


class WebhookCreate(Body):
    name: str = Field(description="a label for people")
    url: str = Field(description="where events are POSTed (http or https)")
    event_types: list[str] = Field(
        description="memory_add, memory_update, memory_delete (and memstream's memory_expire, "
        "subject_erase); the platform's other types are accepted and never fire"
    )
    start: str | int | None = Field(
        None,
        description="memstream: where delivery starts: 'now' (default), 'earliest' (the whole "
        "history), or a log position ('0:120', '0:12,1:40')",
    )


class WebhookUpdate(Body):
    name: str | None = None
    url: str | None = None
    event_types: list[str] | None = None
    is_active: bool | None = Field(
        None, description="memstream: false pauses delivery (the cursor waits), true resumes"
    )


class WebhookOut(Out):
    webhook_id: str
    name: str
    url: str
    event_types: list[str]
    owner: str | None
    is_active: bool
    project: str
    created_at: str
    updated_at: str
    start_position: str
    secret: str | None = Field(None, description="only in the create response, never again")


class DeliveryOut(Out):
    webhook_id: str
    event_id: str
    event_type: str
    memory_id: str | None
    position: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_error: str | None
    response_status: int | None
    created_at: str
    updated_at: str


def _own_project(caller: Caller, project_id: str) -> None:
    if project_id != caller.tenant.project_id:
        raise NotFoundError(
            f"Project {project_id!r} not found: this API key belongs to project "
            f"{caller.tenant.project_id!r}"
        )


@router.get(
    "/api/v1/webhooks/projects/{project_id}/",
    responses=doc(list[WebhookOut]),
    summary="The project's webhooks",
)
async def list_webhooks(ms: MsDep, caller: CallerDep, project_id: str) -> Any:
    _own_project(caller, project_id)
    return await ms.webhooks.all(caller.tenant)


@router.post(
    "/api/v1/webhooks/projects/{project_id}/",
    responses=doc(WebhookOut, 201),
    status_code=201,
    summary="Register a webhook",
)
async def create_webhook(ms: MsDep, caller: CallerDep, project_id: str, body: WebhookCreate) -> Any:
    """Recorded as a `WebhookCreated` event. The answer holds the signing `secret`, once."""
    _own_project(caller, project_id)
    return await ms.webhooks.create(
        caller.tenant, name=body.name, url=body.url, event_types=body.event_types,
        start=body.start, actor=caller.actor,
    )  # fmt: skip


@router.get("/api/v1/webhooks/{webhook_id}/", responses=doc(WebhookOut), summary="One webhook")
async def get_webhook(ms: MsDep, caller: CallerDep, webhook_id: str) -> Any:
    return await ms.webhooks.get(caller.tenant, webhook_id)


@router.put("/api/v1/webhooks/{webhook_id}/", responses=doc(WebhookOut), summary="Change a webhook")
async def update_webhook(ms: MsDep, caller: CallerDep, webhook_id: str, body: WebhookUpdate) -> Any:
    hook = await ms.webhooks.update(
        caller.tenant, webhook_id, actor=caller.actor, name=body.name, url=body.url,
        event_types=body.event_types, is_active=body.is_active,
    )  # fmt: skip
    return {"message": "Webhook updated successfully", **hook}


@router.delete(
    "/api/v1/webhooks/{webhook_id}/", responses=doc(MessageOut), summary="Delete a webhook"
)
async def delete_webhook(ms: MsDep, caller: CallerDep, webhook_id: str) -> Any:
    await ms.webhooks.delete(caller.tenant, webhook_id, actor=caller.actor)
    return {"message": "Webhook deleted successfully"}


@router.get(
    "/api/v1/webhooks/{webhook_id}/deliveries/",
    responses=doc(list[DeliveryOut]),
    summary="A webhook's delivery records, newest first",
)
async def list_deliveries(
    ms: MsDep,
    caller: CallerDep,
    webhook_id: str,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """What this server's dispatcher did: status, attempts, last error, event id, position."""
    found = await ms.webhooks.delivery_log(
        caller.tenant, webhook_id, status=status, limit=limit, offset=offset
    )
    return [d.to_api() for d in found]
