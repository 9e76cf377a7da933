"""`MemstreamStore`: a LangGraph `BaseStore` whose items are memories in the ledger.

LangGraph agents (and LangMem, which writes through the graph's store) keep long-term memory
in a `BaseStore`; this one maps each namespace to a memstream entity scope, so what an agent
remembers is audited, scoped per user, searchable by meaning, erasable per subject and
rebuilt by replay like any other memory. Needs the optional extra: `pip install
'memstream[langgraph]'`. The mapping (docs/langgraph.md):

- leading `(kind, id)` pairs of the namespace name the scope: `("users", U)` -> user_id,
  `("agents", A)` -> agent_id, `("apps", X)` -> app_id, `("runs", R)` (or `"sessions"`) ->
  run_id; the rest of the namespace is a path inside that scope. A namespace that names no
  entity (`("memories", "u1")`) is kept under `app_id = default_app_id` ("langgraph").
- an item is one memory: its text is what gets embedded (the `index` fields of the put, else
  the value's `content`/`text`/`memory` string, else the value as JSON); the namespace, the
  key and the whole value are kept in the memory's metadata (`lg_namespace`, `lg_key`,
  `lg_value`), so `get` returns exactly what was put.

The store owns a `Memstream` on a private event loop thread, so the sync `batch` (a graph run
with `invoke`) and the async `abatch` (`ainvoke`) both work, from any thread or loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from memstream.models import MemoryView, Tenant
from memstream.service import Memstream
from memstream.settings import Settings

T = TypeVar("T")

KINDS = {
    "users": "user_id",
    "agents": "agent_id",
    "apps": "app_id",
    "runs": "run_id",
    "sessions": "run_id",
}
ENTITY_FIELDS = ("user_id", "agent_id", "app_id", "run_id")
TEXT_FIELDS = ("content", "text", "memory")
PAGE = 1000  # memstream's largest page and top_k
ANY: list[Any] = ["*", None]  # an entity id that may be anything, set or not


@dataclass(frozen=True, slots=True)
class Scope:
    """The entity ids a namespace (or a namespace prefix) names."""

    ids: dict[str, str]

    def exact(self) -> dict[str, Any]:
        """Filters for exactly this scope (implicit null scoping does the rest)."""
        return dict(self.ids)

    def within(self) -> list[dict[str, Any]]:
        """Filters for this scope and every scope below it (ids it does not name: any), as
        disjoint parts: memstream reads must positively name an entity, so an empty scope
        is "user_id set", "user_id null and agent_id set", ... (every memory has an id)."""
        if self.ids:
            return [{f: self.ids.get(f, ANY) for f in ENTITY_FIELDS}]
        return [
            {**{f: None for f in ENTITY_FIELDS[:i]}, field: "*",
             **{f: ANY for f in ENTITY_FIELDS[i + 1 :]}}
            for i, field in enumerate(ENTITY_FIELDS)
        ]  # fmt: skip


def scope_of(namespace: tuple[str, ...], default_app_id: str, *, prefix: bool = False) -> Scope:
    """The leading (kind, id) pairs of `namespace`. A full namespace without any gets the
    default app id; a prefix without any stays unconstrained (it may cover every scope)."""
    ids: dict[str, str] = {}
    i = 0
    while i + 1 < len(namespace) and (field := KINDS.get(namespace[i])) and field not in ids:
        ids[field] = namespace[i + 1]
        i += 2
    if not ids and not prefix:
        ids["app_id"] = default_app_id
    return Scope(ids)


def text_of(value: Mapping[str, Any], index: list[str] | None) -> str:
    """What gets embedded for an item."""
    if index:
        parts = [_at_path(value, path) for path in index]
        found = [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in parts if p]
        if found:
            return "\n".join(found)
    for name in TEXT_FIELDS:
        if isinstance(value.get(name), str) and value[name].strip():
            return str(value[name])
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _at_path(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def matches(value: Any, condition: Any) -> bool:
    """LangGraph's filter semantics (those of its InMemoryStore): equality, nested objects,
    and the `$eq $ne $gt $gte $lt $lte` operators."""
    if isinstance(condition, Mapping):
        if any(str(k).startswith("$") for k in condition):
            return all(_operator(value, op, arg) for op, arg in condition.items())
        return isinstance(value, Mapping) and all(
            matches(value.get(k), v) for k, v in condition.items()
        )
    if isinstance(condition, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(condition)
            and all(matches(a, b) for a, b in zip(value, condition, strict=True))
        )
    return bool(value == condition)


def _operator(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if value is None:
        return False
    compare = {"$gt": float.__gt__, "$gte": float.__ge__, "$lt": float.__lt__, "$lte": float.__le__}
    if op not in compare:
        raise ValueError(f"unsupported filter operator: {op}")
    return bool(compare[op](float(value), float(arg)))


def namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    window = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    if condition.match_type not in ("prefix", "suffix"):
        raise ValueError(f"unsupported match type: {condition.match_type}")
    return all(p == "*" or p == k for k, p in zip(window, path, strict=True)) if path else True


def _when(ms_utc: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms_utc / 1000, tz=dt.UTC)


def _item_parts(m: MemoryView) -> tuple[tuple[str, ...], str, dict[str, Any]] | None:
    meta = m.metadata or {}
    ns, key, value = meta.get("lg_namespace"), meta.get("lg_key"), meta.get("lg_value")
    if not isinstance(ns, str) or not isinstance(key, str) or not isinstance(value, dict):
        return None  # a memory not written through a LangGraph store
    return tuple(json.loads(ns)), key, value


class MemstreamStore(BaseStore):
    """A LangGraph store on the memstream ledger (see the module docstring for the mapping).

    `MemstreamStore(settings)` opens the ledger the settings name (data dir, file log or
    Kafka, embedder) for the tenant `tenant` (default: the settings' org/project); `close()`
    it, or use it as a context manager.
    """

    supports_ttl = False

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tenant: Tenant | None = None,
        default_app_id: str = "langgraph",
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.default_app_id = default_app_id
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="memstream-store", daemon=True
        )
        self._thread.start()
        try:
            self._ms: Memstream = self._call(self._open())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
            raise
        self.tenant = tenant or self._ms.tenant

    async def _open(self) -> Memstream:
        ms = Memstream(self.settings)
        await ms.start()
        return ms

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro).result()

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self._ms.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> MemstreamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- BaseStore -------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return self._call(self._run(list(ops)))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.wrap_future(self._submit(self._run(list(ops))))

    async def _run(self, ops: list[Op]) -> list[Result]:
        """Apply the ops in order (a put is visible to a later get of the same batch)."""
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(await self._get(op.namespace, op.key))
            elif isinstance(op, PutOp):
                await self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(await self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(op))
            else:
                raise ValueError(f"unknown store operation: {op!r}")
        return results

    # -- operations ------------------------------------------------------------------------
    def _item_filters(self, namespace: tuple[str, ...], key: str) -> dict[str, Any]:
        scope = scope_of(namespace, self.default_app_id)
        lg = {"lg_namespace": json.dumps(list(namespace)), "lg_key": key}
        return {**scope.exact(), "metadata": lg}

    async def _find(self, namespace: tuple[str, ...], key: str) -> MemoryView | None:
        page = await self._ms.get_all(
            self._item_filters(namespace, key), tenant=self.tenant, page_size=1
        )
        return page.results[0] if page.results else None

    async def _get(self, namespace: tuple[str, ...], key: str) -> Item | None:
        found = await self._find(namespace, key)
        return self._item(found) if found is not None else None

    @staticmethod
    def _item(m: MemoryView) -> Item:
        parts = _item_parts(m)
        assert parts is not None
        ns, key, value = parts
        return Item(value=value, key=key, namespace=ns,
                    created_at=_when(m.created_at), updated_at=_when(m.updated_at))  # fmt: skip

    async def _put(self, op: PutOp) -> None:
        found = await self._find(op.namespace, op.key)
        if op.value is None:
            if found is not None:
                await self._ms.delete(found.id, tenant=self.tenant)
            return
        value = dict(op.value)
        json.dumps(value)  # not JSON: fail before anything is written
        index = op.index if isinstance(op.index, list) else None
        text = text_of(value, index)
        metadata = {
            "lg_namespace": json.dumps(list(op.namespace)),
            "lg_key": op.key,
            "lg_value": value,
        }
        if found is not None:
            await self._ms.update(found.id, tenant=self.tenant, text=text, metadata=metadata)
            return
        scope = scope_of(op.namespace, self.default_app_id)
        ids: dict[str, Any] = dict(scope.ids)  # entity ids only: never `infer`
        [result] = await self._ms.add(text, tenant=self.tenant, metadata=metadata, **ids)
        if result.event == "NONE":
            # memstream keeps one memory per text and scope: another item of this scope has
            # the same text, so this one is told apart by its key
            await self._ms.add(f"{text} [{op.key}]", tenant=self.tenant, metadata=metadata,
                               **ids)  # fmt: skip

    async def _items_under(self, prefix: tuple[str, ...]) -> list[MemoryView]:
        """Every LangGraph item of the tenant whose namespace starts with `prefix`, newest first."""
        scope = scope_of(prefix, self.default_app_id, prefix=True)
        out: list[MemoryView] = []
        for filters in scope.within():
            page = 1
            while True:
                got = await self._ms.get_all(filters, tenant=self.tenant, page=page, page_size=PAGE)
                out.extend(m for m in got.results if self._under(m, prefix))
                if page * PAGE >= got.count:
                    break
                page += 1
        out.sort(key=lambda m: (-m.created_at, m.id))  # newest first, as one listing would be
        return out

    @staticmethod
    def _under(m: MemoryView, prefix: tuple[str, ...]) -> bool:
        parts = _item_parts(m)
        return parts is not None and parts[0][: len(prefix)] == prefix

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        if op.query:
            scope = scope_of(prefix, self.default_app_id, prefix=True)
            hits = [
                m
                for filters in scope.within()
                for m in await self._ms.search(
                    op.query, filters, tenant=self.tenant, top_k=PAGE, threshold=None
                )
            ]
            hits.sort(key=lambda m: -(m.score or 0.0))
            candidates = [m for m in hits if self._under(m, prefix)]
        else:
            candidates = await self._items_under(prefix)
        kept = [
            m
            for m in candidates
            if not op.filter or matches((_item_parts(m) or ((), "", {}))[2], op.filter)
        ]
        return [
            SearchItem(
                namespace=item.namespace, key=item.key, value=item.value,
                created_at=item.created_at, updated_at=item.updated_at, score=m.score,
            )
            for m in kept[op.offset : op.offset + op.limit]
            for item in (self._item(m),)
        ]  # fmt: skip

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found = {
            parts[0] for m in await self._items_under(()) if (parts := _item_parts(m)) is not None
        }
        if op.match_conditions:
            found = {
                ns for ns in found if all(namespace_matches(c, ns) for c in op.match_conditions)
            }
        if op.max_depth is not None:
            found = {ns[: op.max_depth] for ns in found}
        return sorted(found)[op.offset : op.offset + op.limit]


__all__ = ["MemstreamStore", "scope_of", "text_of"]
