"""Shared request plumbing: the service objects, idempotency keys, ids, filters from queries."""

from __future__ import annotations

import ast
import asyncio
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from memstream.cancellation import unbound_context
from memstream.errors import ValidationError
from memstream.models import Tenant
from memstream.scope import ENTITY_FIELDS, normalise_id
from memstream.service import Memstream

MAX_QUERY_FILTERS = 65_536


def get_ms(request: Request) -> Memstream:
    ms: Memstream = request.app.state.ms
    return ms


MsDep = Annotated[Memstream, Depends(get_ms)]


class PendingAdds:
    """The event ids of recent `async_mode` adds, so GET /v1/event/{id}/ can answer PENDING for
    an add that is durable but not projected yet (bounded; this server's adds only)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._by_event: OrderedDict[str, tuple[Tenant, tuple[str, ...]]] = OrderedDict()
        self._tasks: OrderedDict[str, tuple[Tenant, asyncio.Task[Any]]] = OrderedDict()

    def remember(self, tenant: Tenant, event_ids: list[str]) -> None:
        if not event_ids:
            return
        self._by_event[event_ids[0]] = (tenant, tuple(event_ids))
        while len(self._by_event) > self.limit:
            self._by_event.popitem(last=False)

    def lookup(self, tenant: Tenant, event_id: str) -> tuple[str, ...] | None:
        """Every event id of the add that `event_id` names, if it was this tenant's."""
        entry = self._by_event.get(event_id)
        return entry[1] if entry is not None and entry[0] == tenant else None

    # -- async inferred adds: the LLM works after the answer -----------------------------
    def start(self, tenant: Tenant, event_id: str, work: Any) -> None:
        """Run an inferred add in the background under `event_id` (its MessagesRecorded).
        It outlives the request that started it, so its client leaving does not stop it."""
        task: asyncio.Task[Any] = asyncio.create_task(work, context=unbound_context())
        self._tasks[event_id] = (tenant, task)
        while len(self._tasks) > self.limit:
            oldest = next(iter(self._tasks))
            if not self._tasks[oldest][1].done():
                break  # never forget a running task: shutdown waits for it
            del self._tasks[oldest]

    def task(self, tenant: Tenant, event_id: str) -> asyncio.Task[Any] | None:
        entry = self._tasks.get(event_id)
        return entry[1] if entry is not None and entry[0] == tenant else None

    async def drain(self) -> None:
        """Let running inferences finish (shutdown); each is bounded by the LLM's timeouts."""
        running = [t for _, t in self._tasks.values() if not t.done()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def get_pending(request: Request) -> PendingAdds:
    pending: PendingAdds = request.app.state.pending
    return pending


PendingDep = Annotated[PendingAdds, Depends(get_pending)]


def idempotency_key(
    idempotency_key: Annotated[
        str | None, Header(description="Retry-safe writes: the same key twice writes once.")
    ] = None,
) -> str | None:
    return idempotency_key


IdempotencyDep = Annotated[str | None, Depends(idempotency_key)]


def memory_id_param(memory_id: str) -> str:
    """A memory id from a path or body: a plain, printable id (never empty, never '*')."""
    value = normalise_id("memory_id", memory_id)
    assert value is not None
    return value


def combine(
    filters: Mapping[str, Any] | None, *conditions: Mapping[str, Any]
) -> dict[str, Any] | None:
    """`filters` AND every extra condition (kept as is when there is none, so error paths stay short)."""
    parts = [dict(c) for c in conditions if c]
    if not parts:
        return dict(filters) if filters is not None else None
    if filters:
        parts.insert(0, dict(filters))
    return parts[0] if len(parts) == 1 else {"AND": parts}


def parse_query_object(name: str, text: str | None) -> dict[str, Any] | None:
    """A dict passed in a query string: JSON, or the Python repr the mem0 client sends for dicts."""
    if text is None:
        return None
    if len(text) > MAX_QUERY_FILTERS:
        raise ValidationError(f"{name}: longer than {MAX_QUERY_FILTERS} characters")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValidationError(f"{name}: not a JSON object (or Python dict literal)") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{name}: must be an object, got {type(value).__name__}")
    return value


def any_value(field: str) -> dict[str, Any]:
    """A condition that names `field` (lifting implicit null scoping) yet accepts null or any id."""
    return {"OR": [{field: "*"}, {field: None}]}


def entity_scope_filters(entity_type: str, name: str) -> dict[str, Any]:
    """Every memory of one entity, whatever its other ids (entity deletion)."""
    field = f"{entity_type}_id"
    return {"AND": [{field: name}, *(any_value(f) for f in ENTITY_FIELDS if f != field)]}
