"""`memstream.Client` and `memstream.AsyncClient`: typed access to a memstream REST server.

The mem0 client works against memstream unchanged and returns raw JSON; these return the
same values the Python facade does (`MemoryView`, `Page`, `WriteResult`, `HistoryEntry`) and
raise memstream's own errors (`NotFoundError`, `ValidationError`, `AuthError`, ...).

Both faces share one request-building layer: each operation is a `Call` (method, path, query,
body, and how to read the answer), built once by `_Api`; `Client` sends it with
`httpx.Client`, `AsyncClient` with `httpx.AsyncClient`. Transport failures (connection
refused, timeouts) surface as httpx's own exceptions.

    with memstream.Client(api_key=KEY, host="http://127.0.0.1:8000") as ms:
        ms.add("I like green tea", user_id="alice")
        hits = ms.search("what does alice drink?", {"user_id": "alice"})
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from memstream.errors import (
    AuthError,
    ConflictError,
    LogUnavailableError,
    MemstreamError,
    NotFoundError,
    ValidationError,
)
from memstream.events import EPOCH
from memstream.models import HistoryEntry, MemoryView, Page, Tenant, WriteResult

__all__ = ["AsyncClient", "Client", "ServerError"]

T = TypeVar("T")
DEFAULT_HOST = "http://127.0.0.1:8000"
_UNSET: Any = object()


class ServerError(MemstreamError):
    """The server answered with a status memstream has no more specific error for (e.g. 500, 504)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


_ERRORS: dict[int, type[MemstreamError]] = {
    400: ValidationError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    503: LogUnavailableError,
}


def error_for(response: httpx.Response) -> MemstreamError:
    """The memstream error for a non-2xx answer (its message is the server's `detail`)."""
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    message = detail if isinstance(detail, str) else (response.text or response.reason_phrase)
    cls = _ERRORS.get(response.status_code)
    if cls is None:
        return ServerError(f"HTTP {response.status_code}: {message}", response.status_code)
    return cls(message)


# -- reading answers ---------------------------------------------------------------------
def _ms(value: str | None) -> int | None:
    if value is None:
        return None
    return (dt.datetime.fromisoformat(value) - EPOCH) // dt.timedelta(milliseconds=1)


def memory_from_api(d: Mapping[str, Any], tenant: Tenant) -> MemoryView:
    return MemoryView(
        id=d["id"],
        memory=d["memory"],
        user_id=d.get("user_id"),
        agent_id=d.get("agent_id"),
        app_id=d.get("app_id"),
        run_id=d.get("run_id", d.get("session_id")),
        hash=d.get("hash") or "",
        metadata=d.get("metadata") or {},
        categories=list(d.get("categories") or []),
        created_at=_ms(d["created_at"]) or 0,
        updated_at=_ms(d.get("updated_at")) or _ms(d["created_at"]) or 0,
        expiration_date=d.get("expiration_date"),
        immutable=bool(d.get("immutable", False)),
        org_id=tenant.org_id,
        project_id=tenant.project_id,
        score=d.get("score"),
    )


def write_result_from_api(d: Mapping[str, Any]) -> WriteResult:
    return WriteResult(
        id=d["id"],
        event=d["event"],
        memory=d.get("memory"),
        event_id=d.get("event_id"),
        pending=d.get("status") == "PENDING",
    )


def history_from_api(d: Mapping[str, Any]) -> HistoryEntry:
    actor = d.get("actor") or {}
    pos = d.get("position") or {}
    return HistoryEntry(
        id=d["id"],
        memory_id=d["memory_id"],
        event=d["event"],
        event_type=d.get("event_type", ""),
        old_memory=d.get("old_memory"),
        new_memory=d.get("new_memory"),
        user_id=d.get("user_id"),
        agent_id=d.get("agent_id"),
        app_id=d.get("app_id"),
        run_id=d.get("run_id", d.get("session_id")),
        metadata=d.get("metadata"),
        old_metadata=d.get("old_metadata"),
        categories=d.get("categories"),
        reason=d.get("reason"),
        actor_key_id=actor.get("key_id"),
        actor_source=actor.get("source"),
        request_id=d.get("request_id"),
        position=(int(pos.get("partition", 0)), int(pos.get("offset", 0))),
        created_at=_ms(d["created_at"]) or 0,
    )


# -- building requests (shared by both faces) -------------------------------------------
@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: what to send and how to read the JSON answer."""

    method: str
    path: str
    read: Callable[[Any, Tenant], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    needs_tenant: bool = False


def _seg(value: str) -> str:
    return quote(str(value), safe="")


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Api:
    """Every operation as a `Call`; no I/O here."""

    @staticmethod
    def ping() -> Call[Tenant]:
        return Call("GET", "/v1/ping/", lambda b, _t: Tenant(b["org_id"], b["project_id"]))

    @staticmethod
    def add(messages: Any, **kw: Any) -> Call[list[WriteResult]]:
        body = {"messages": messages, **_drop_none(kw)}
        return Call(
            "POST",
            "/v3/memories/add/",
            lambda b, _t: [write_result_from_api(r) for r in b["results"]],
            json=body,
        )

    @staticmethod
    def search(query: str, filters: Mapping[str, Any] | None, **kw: Any) -> Call[list[MemoryView]]:
        body = {"query": query, "filters": filters, **kw}
        return Call(
            "POST",
            "/v3/memories/search/",
            lambda b, t: [memory_from_api(r, t) for r in b["results"]],
            json=body,
            needs_tenant=True,
        )

    @staticmethod
    def get_all(
        filters: Mapping[str, Any] | None, page: int, page_size: int, show_expired: bool
    ) -> Call[Page]:
        def read(b: Any, t: Tenant) -> Page:
            return Page(b["count"], page, page_size, [memory_from_api(r, t) for r in b["results"]])

        return Call(
            "POST",
            "/v3/memories/",
            read,
            params={"page": page, "page_size": page_size},
            json={"filters": filters, "show_expired": show_expired},
            needs_tenant=True,
        )

    @staticmethod
    def get(memory_id: str) -> Call[MemoryView]:
        return Call("GET", f"/v1/memories/{_seg(memory_id)}/", memory_from_api, needs_tenant=True)

    @staticmethod
    def update(memory_id: str, expiration_date: Any, **kw: Any) -> Call[MemoryView]:
        body = _drop_none(kw)
        if expiration_date is not _UNSET:
            body["expiration_date"] = expiration_date  # None clears it
        return Call(
            "PUT", f"/v1/memories/{_seg(memory_id)}/", memory_from_api, json=body, needs_tenant=True
        )

    @staticmethod
    def delete(memory_id: str) -> Call[None]:
        return Call("DELETE", f"/v1/memories/{_seg(memory_id)}/", lambda _b, _t: None)

    @staticmethod
    def delete_all(filters: Mapping[str, Any] | None, **ids: Any) -> Call[int]:
        params = _drop_none(ids)
        if filters is not None:
            params["filters"] = json.dumps(dict(filters))
        return Call("DELETE", "/v1/memories/", lambda b, _t: int(b.get("count", 0)), params=params)

    @staticmethod
    def history(memory_id: str) -> Call[list[HistoryEntry]]:
        return Call(
            "GET",
            f"/v1/memories/{_seg(memory_id)}/history/",
            lambda b, _t: [history_from_api(h) for h in b],
        )


def _settings(api_key: str | None, host: str | None) -> tuple[str, str]:
    key = api_key or os.environ.get("MEMSTREAM_API_KEY") or os.environ.get("MEM0_API_KEY")
    if not key:
        raise AuthError("no API key: pass api_key= or set MEMSTREAM_API_KEY")
    return key, (host or os.environ.get("MEMSTREAM_URL") or DEFAULT_HOST).rstrip("/")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Token {api_key}", "X-Mem0-Source": "memstream-python"}


# -- the two faces -------------------------------------------------------------------------
class Client:
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        api_key: str | None = None,
        host: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key, self.host = _settings(api_key, host)
        self._http = httpx.Client(
            base_url=self.host, headers=_headers(key), timeout=timeout, transport=transport
        )
        self._tenant: Tenant | None = None

    def _send(self, call: Call[T]) -> T:
        tenant = self.tenant if call.needs_tenant else Tenant("", "")
        r = self._http.request(call.method, call.path, params=call.params or None, json=call.json)
        if r.is_error:
            raise error_for(r)
        return call.read(r.json(), tenant)

    @property
    def tenant(self) -> Tenant:
        """The org and project of the key (asked once from the server)."""
        if self._tenant is None:
            self._tenant = self._send(_Api.ping())
        return self._tenant

    def add(
        self,
        messages: str | dict[str, Any] | list[dict[str, Any]],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        categories: list[str] | None = None,
        expiration_date: str | None = None,
        immutable: bool | None = None,
        request_id: str | None = None,
        async_mode: bool | None = None,
    ) -> list[WriteResult]:
        """Each non-system message becomes one memory; returns one result per message."""
        return self._send(_Api.add(messages, user_id=user_id, agent_id=agent_id, app_id=app_id,
                                   run_id=run_id, metadata=metadata, categories=categories,
                                   expiration_date=expiration_date, immutable=immutable,
                                   request_id=request_id, async_mode=async_mode))  # fmt: skip

    def search(
        self,
        query: str,
        filters: Mapping[str, Any] | None = None,
        *,
        top_k: int = 10,
        threshold: float | None = 0.1,
        show_expired: bool = False,
    ) -> list[MemoryView]:
        return self._send(_Api.search(query, filters, top_k=top_k, threshold=threshold,
                                      show_expired=show_expired))  # fmt: skip

    def get_all(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        page: int = 1,
        page_size: int = 100,
        show_expired: bool = False,
    ) -> Page:
        return self._send(_Api.get_all(filters, page, page_size, show_expired))

    def get(self, memory_id: str) -> MemoryView:
        return self._send(_Api.get(memory_id))

    def update(
        self,
        memory_id: str,
        *,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        categories: list[str] | None = None,
        expiration_date: str | None = _UNSET,
    ) -> MemoryView:
        """Returns the updated memory; `expiration_date=None` clears it."""
        return self._send(_Api.update(memory_id, expiration_date, text=text, metadata=metadata,
                                      categories=categories))  # fmt: skip

    def delete(self, memory_id: str) -> None:
        self._send(_Api.delete(memory_id))

    def delete_all(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Delete what get_all(filters) returns; returns how many memories were deleted."""
        return self._send(_Api.delete_all(filters, user_id=user_id, agent_id=agent_id,
                                          app_id=app_id, run_id=run_id))  # fmt: skip

    def history(self, memory_id: str) -> list[HistoryEntry]:
        return self._send(_Api.history(memory_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client. Use as an async context manager, or await `aclose()`."""

    def __init__(
        self,
        api_key: str | None = None,
        host: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key, self.host = _settings(api_key, host)
        self._http = httpx.AsyncClient(
            base_url=self.host, headers=_headers(key), timeout=timeout, transport=transport
        )
        self._tenant: Tenant | None = None

    async def _send(self, call: Call[T]) -> T:
        tenant = await self.tenant() if call.needs_tenant else Tenant("", "")
        r = await self._http.request(
            call.method, call.path, params=call.params or None, json=call.json
        )
        if r.is_error:
            raise error_for(r)
        return call.read(r.json(), tenant)

    async def tenant(self) -> Tenant:
        """The org and project of the key (asked once from the server)."""
        if self._tenant is None:
            self._tenant = await self._send(_Api.ping())
        return self._tenant

    async def add(
        self,
        messages: str | dict[str, Any] | list[dict[str, Any]],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        categories: list[str] | None = None,
        expiration_date: str | None = None,
        immutable: bool | None = None,
        request_id: str | None = None,
        async_mode: bool | None = None,
    ) -> list[WriteResult]:
        return await self._send(_Api.add(messages, user_id=user_id, agent_id=agent_id,
                                         app_id=app_id, run_id=run_id, metadata=metadata,
                                         categories=categories, expiration_date=expiration_date,
                                         immutable=immutable, request_id=request_id,
                                         async_mode=async_mode))  # fmt: skip

    async def search(
        self,
        query: str,
        filters: Mapping[str, Any] | None = None,
        *,
        top_k: int = 10,
        threshold: float | None = 0.1,
        show_expired: bool = False,
    ) -> list[MemoryView]:
        return await self._send(_Api.search(query, filters, top_k=top_k, threshold=threshold,
                                            show_expired=show_expired))  # fmt: skip

    async def get_all(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        page: int = 1,
        page_size: int = 100,
        show_expired: bool = False,
    ) -> Page:
        return await self._send(_Api.get_all(filters, page, page_size, show_expired))

    async def get(self, memory_id: str) -> MemoryView:
        return await self._send(_Api.get(memory_id))

    async def update(
        self,
        memory_id: str,
        *,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        categories: list[str] | None = None,
        expiration_date: str | None = _UNSET,
    ) -> MemoryView:
        return await self._send(_Api.update(memory_id, expiration_date, text=text,
                                            metadata=metadata, categories=categories))  # fmt: skip

    async def delete(self, memory_id: str) -> None:
        await self._send(_Api.delete(memory_id))

    async def delete_all(
        self,
        filters: Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        app_id: str | None = None,
        run_id: str | None = None,
    ) -> int:
        return await self._send(_Api.delete_all(filters, user_id=user_id, agent_id=agent_id,
                                                app_id=app_id, run_id=run_id))  # fmt: skip

    async def history(self, memory_id: str) -> list[HistoryEntry]:
        return await self._send(_Api.history(memory_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
