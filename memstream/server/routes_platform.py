"""Platform plumbing the client needs: key validation (ping), the key's project, feedback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from memstream.errors import NotFoundError, UnsupportedError, ValidationError
from memstream.keys import KeyRegistry
from memstream.models import iso_ms
from memstream.server.auth import Caller, CallerDep
from memstream.server.deps import IdempotencyDep, MsDep, memory_id_param
from memstream.server.schemas import FeedbackRequest, Out, PingOut, ProjectUpdateRequest, doc
from memstream.service import Memstream

router = APIRouter(tags=["platform"])

PROJECT_NOT_FOUND = "Organization or project not found"


@router.get("/v1/ping/", responses=doc(PingOut), summary="Validate the API key")
async def ping(caller: CallerDep) -> Any:
    """The mem0 client calls this when it is constructed and reads org_id, project_id, user_email."""
    return {
        "status": "ok",
        "message": "pong",
        "org_id": caller.tenant.org_id,
        "project_id": caller.tenant.project_id,
        "user_email": caller.user_email,
        "key_id": caller.key.key_id,
    }


async def _project(request: Request, caller: Caller) -> dict[str, Any]:
    keys: KeyRegistry = request.app.state.keys
    ms: Memstream = request.app.state.ms
    settings = await ms.project(tenant=caller.tenant)
    mine = [k for k in keys.list() if k.tenant == caller.tenant]
    created = min((k.created_at for k in mine), default=caller.key.created_at)
    updated = max((k.revoked_at or k.created_at for k in mine), default=created)
    return {
        "org_id": caller.tenant.org_id,
        "project_id": caller.tenant.project_id,
        "name": caller.tenant.project_id,
        "description": None,
        "created_at": iso_ms(created),
        "updated_at": iso_ms(updated),
        "members": [
            {
                "username": caller.key.name or caller.key.key_id,
                "role": "OWNER",
                "email": caller.user_email,
            }
        ],
        "custom_instructions": settings.custom_instructions,
        "custom_categories": settings.custom_categories or [],
        "memory_depth": None,
        "usecase": None,
        "multilingual": False,
    }


@router.get(
    "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/", summary="The key's project"
)
async def get_project(
    request: Request, caller: CallerDep, org_id: str, project_id: str,
    fields: Annotated[list[str] | None, Query(description="restrict the answer to these keys")] = None,
) -> Any:  # fmt: skip
    """Only the project the key belongs to exists for it: any other org/project is 404."""
    if (org_id, project_id) != (caller.tenant.org_id, caller.tenant.project_id):
        raise NotFoundError(PROJECT_NOT_FOUND)
    doc = await _project(request, caller)
    if fields:
        keep = {"org_id", "project_id", *fields}
        doc = {k: v for k, v in doc.items() if k in keep}
    return doc


@router.get("/api/v1/orgs/organizations/{org_id}/projects/", summary="The key's projects")
async def list_projects(request: Request, caller: CallerDep, org_id: str) -> Any:
    if org_id != caller.tenant.org_id:
        raise NotFoundError(PROJECT_NOT_FOUND)
    return [await _project(request, caller)]


@router.patch(
    "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/",
    summary="Update the key's project (custom instructions and categories)",
)
async def update_project(
    ms: MsDep, caller: CallerDep, org_id: str, project_id: str, body: ProjectUpdateRequest
) -> Any:
    """What the SDKs' `update_project` / `project.update` send. `custom_instructions` steer
    fact extraction and `custom_categories` are what the LLM may assign (docs/inference.md);
    stored as a ProjectSettingsUpdated event. Other settings are accepted and ignored."""
    if (org_id, project_id) != (caller.tenant.org_id, caller.tenant.project_id):
        raise NotFoundError(PROJECT_NOT_FOUND)
    if body.custom_instructions is None and body.custom_categories is None:
        raise ValidationError(
            "give custom_instructions and/or custom_categories (the settings memstream keeps)"
        )
    await ms.update_project(
        tenant=caller.tenant, actor=caller.actor,
        custom_instructions=body.custom_instructions, custom_categories=body.custom_categories,
    )  # fmt: skip
    return {"message": "Updated custom instructions"}


PROJECTS_ARE_KEYS = (
    "Projects are not managed over the API on a self-hosted memstream: a project exists once "
    "a key is created for it (memstream keys create --org-id ORG --project-id PROJECT)."
)
MEMBERS_ARE_KEYS = (
    "Project members are not managed on a self-hosted memstream: give each person or app its "
    "own API key (memstream keys create) and revoke it to remove them."
)


@router.post(
    "/api/v1/orgs/organizations/{org_id}/projects/", status_code=501,
    summary="Create a project (501: projects come from keys)",
)  # fmt: skip
async def create_project(caller: CallerDep, org_id: str) -> Any:
    raise UnsupportedError(PROJECTS_ARE_KEYS)


@router.delete(
    "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/", status_code=501,
    summary="Delete a project (501: revoke its keys)",
)  # fmt: skip
async def delete_project(caller: CallerDep, org_id: str, project_id: str) -> Any:
    raise UnsupportedError(
        "Projects are not deleted over the API on a self-hosted memstream: revoke the "
        "project's keys (memstream keys revoke) and erase its subjects (memstream erase)."
    )


async def project_members(caller: CallerDep, org_id: str, project_id: str) -> Any:
    raise UnsupportedError(MEMBERS_ARE_KEYS)


for _method in ("GET", "POST", "PUT", "DELETE"):  # one operation (and id) per method
    router.add_api_route(
        "/api/v1/orgs/organizations/{org_id}/projects/{project_id}/members/",
        project_members, methods=[_method], status_code=501,
        operation_id=f"project_members_{_method.lower()}",
        summary="Project members (501: one key per member)",
    )  # fmt: skip


PROFILES_NOT_HERE = (
    "Memory profiles are not implemented on a self-hosted memstream: read a user's memories "
    'with get_all or search (filters: {"user_id": ...}) instead.'
)
SUMMARIES_NOT_HERE = (
    "Memory summaries are not implemented on a self-hosted memstream: read the memories with "
    "get_all, or export them (POST /v1/exports/ or memstream export)."
)


async def profiles(caller: CallerDep) -> Any:
    raise UnsupportedError(PROFILES_NOT_HERE)


# what the mem0ai SDKs (Python 2.2, Node 3.3) call for profiles; a plain 404 would reach their
# users as "memory not found" (the Node SDK raises MemoryNotFoundError), so: 501 and a sentence
for _path, _method, _name in (
    ("/v2/entities/{entity_type}/{entity_id}/profile/", "GET", "get_profile"),
    ("/v2/profiles/jobs/", "POST", "create_profile_job"),
    ("/v2/profiles/jobs/{job_id}/", "GET", "get_profile_job"),
    ("/v2/profiles/settings/", "GET", "get_profile_settings"),
    ("/v2/profiles/settings/", "POST", "update_profile_settings"),
):
    router.add_api_route(
        _path, profiles, methods=[_method], status_code=501, operation_id=_name,
        summary="Memory profiles (501: not implemented)",
    )  # fmt: skip


@router.post(
    "/v1/summary/", status_code=501, summary="Memory summary (501: not implemented)"
)  # fmt: skip
async def summary(caller: CallerDep) -> Any:
    raise UnsupportedError(SUMMARIES_NOT_HERE)


@router.post("/v1/feedback/", responses=doc(Out), summary="Rate a memory")
async def feedback(
    ms: MsDep, caller: CallerDep, body: FeedbackRequest, idempotency: IdempotencyDep
) -> Any:
    """Recorded as a `FeedbackGiven` event on the log (it shows in the memory's history)."""
    event = await ms.feedback(
        memory_id_param(body.memory_id), tenant=caller.tenant, actor=caller.actor,
        request_id=idempotency, feedback=body.feedback, feedback_reason=body.feedback_reason,
    )  # fmt: skip
    return {
        "id": event.event_id,
        "memory_id": event.memory_id,
        "feedback": body.feedback,
        "feedback_reason": body.feedback_reason,
    }
