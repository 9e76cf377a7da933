"""Model-based proof of point-in-time reads: the fold of the events table is the log's state.

Hypothesis draws random histories — add (with duplicates, immutables, expiration dates),
update (text and/or metadata and/or categories and/or expiration date, also of deleted or
immutable memories), delete, delete_all of a scope, the sweeper's MemoryExpired, retention
policies set and removed — with random, monotonic non-decreasing `occurred_at` (ties
included). The events are built directly (so the test controls time) and appended to the
real file log of a real `Memstream` with the hashing embedder, which projects them. For
random instants and log positions, `get_all(as_of=...)` and `get(id, as_of=...)` must equal
a reference state computed here in plain Python from the events up to the cut, deciding
duplicates, immutability and no-ops itself rather than trusting the projector's outcomes.

Each example writes to its own project in one shared data directory: tenancy keeps them
apart, which this test therefore checks too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstream.errors import NotFoundError
from memstream.events import (
    DeleteAllRequested,
    Event,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    RetentionPolicyRemoved,
    RetentionPolicySet,
    message_of,
    text_hash,
)
from memstream.models import MemoryView, Tenant
from memstream.query.filters import compile_filters
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

BASE_MS = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3_600_000
SCOPES = (
    {"user_id": "u1"},
    {"user_id": "u1", "agent_id": "a1"},
    {"user_id": "u2", "agent_id": "a2"},
)
TEXTS = ("likes tea", "likes coffee", "lives in Oslo", "has a cat")
METAS = ({}, {"k": 1}, {"k": 2, "tag": "x"})
CATEGORIES = ((), ("food",), ("food", "home"))
EXPIRATIONS = (None, "2026-03-01", "2026-03-02", "2026-03-04")
STEPS = (0, 0, 1, 1000, HOUR, 12 * HOUR)  # ms between events; 0 = same millisecond
EVERYTHING = {"user_id": "*", "agent_id": ["*", None]}
FILTERS = (
    EVERYTHING,
    {"user_id": "u1"},
    {"user_id": "u1", "agent_id": "*"},
    {"AND": [EVERYTHING, {"metadata": {"k": 1}}]},
    {"AND": [EVERYTHING, {"categories": {"contains": "home"}}]},
    {"AND": [EVERYTHING, {"keywords": "likes"}]},
)


# --------------------------------------------------------------------------------------
# Operations and the events they become
# --------------------------------------------------------------------------------------

add_op = st.tuples(
    st.just("add"),
    st.integers(0, len(SCOPES) - 1),
    st.sampled_from(TEXTS),
    st.sampled_from(METAS),
    st.sampled_from(CATEGORIES),
    st.sampled_from(EXPIRATIONS),
    st.sampled_from((False, False, False, True)),  # immutable
)
update_op = st.tuples(
    st.just("update"),
    st.integers(0, 50),  # which memory ever created (modulo)
    st.none() | st.sampled_from(TEXTS),
    st.none() | st.sampled_from(METAS),
    st.none() | st.sampled_from(CATEGORIES),
    st.booleans(),  # set the expiration date?
    st.sampled_from(EXPIRATIONS),
)
delete_op = st.tuples(st.just("delete"), st.integers(0, 50))
delete_all_op = st.tuples(st.just("delete_all"), st.integers(0, len(SCOPES) - 1))
expire_op = st.tuples(st.just("expire"), st.integers(0, 50))
policy_op = st.tuples(
    st.just("policy"),
    st.sampled_from(("p1", "p2")),
    st.sampled_from(("a1", "a*", "*")),
    st.sampled_from((1, 3600, 86400)),
)
unpolicy_op = st.tuples(st.just("unpolicy"), st.sampled_from(("p1", "p2")))
op = st.one_of(
    add_op, add_op, add_op, update_op, update_op, delete_op, delete_all_op, expire_op,
    policy_op, policy_op, unpolicy_op,
)  # fmt: skip


@dataclass
class Memory:
    id: str
    scope: Scope
    text: str
    metadata: str
    categories: tuple[str, ...]
    expiration_date: str | None
    immutable: bool
    created_at: int
    updated_at: int
    expired_at: int | None = None


@dataclass
class Model:
    """The reference: live memories and policies, changed by events in log order."""

    live: dict[str, Memory] = field(default_factory=dict)
    policies: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def apply(self, e: Event) -> None:
        if isinstance(e, MemoryAdded):
            assert e.memory_id is not None
            duplicate = any(m.scope == e.scope and m.text == e.text for m in self.live.values())
            if not duplicate:
                self.live[e.memory_id] = Memory(
                    e.memory_id, e.scope, e.text, e.metadata, e.categories, e.expiration_date,
                    e.immutable, e.occurred_at, e.occurred_at,
                )  # fmt: skip
        elif isinstance(e, MemoryUpdated):
            m = self.live.get(e.memory_id or "")
            if m is None or m.immutable:
                return
            if e.text is not None:
                m.text = e.text
            if e.metadata is not None:
                m.metadata = e.metadata
            if e.categories is not None:
                m.categories = e.categories
            if e.set_expiration_date:
                m.expiration_date = e.expiration_date
            m.updated_at = e.occurred_at
        elif isinstance(e, MemoryDeleted):
            self.live.pop(e.memory_id or "", None)
        elif isinstance(e, MemoryExpired):
            m = self.live.get(e.memory_id or "")
            if m is not None and m.expired_at is None:
                m.expired_at = e.occurred_at
        elif isinstance(e, RetentionPolicySet):
            self.policies[e.policy_id] = (e.field, e.pattern, e.ttl_seconds)
        elif isinstance(e, RetentionPolicyRemoved):
            self.policies.pop(e.policy_id, None)

    def visible(self, m: Memory, at_ms: int) -> bool:
        """The retention rules (query/retention.py), at `at_ms`."""
        day = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).date().isoformat()
        if m.expiration_date is not None and m.expiration_date < day:
            return False
        if m.expired_at is not None:
            return False
        for field_, pattern, ttl in self.policies.values():
            value = m.scope.entities()[field_]
            if value is None:
                continue
            hit = (
                pattern == "*"
                or (pattern.endswith("*") and value.startswith(pattern[:-1]))
                or value == pattern
            )
            if hit and m.updated_at < at_ms - ttl * 1000:
                return False
        return True


def row_of(m: Memory) -> dict[str, Any]:
    ids = m.scope.entities()
    return {
        "id": m.id, "org_id": m.scope.org_id, "project_id": m.scope.project_id, **ids,
        "text": m.text, "metadata": m.metadata, "categories": list(m.categories),
        "created_at": m.created_at, "updated_at": m.updated_at,
        "expiration_date": m.expiration_date,
    }  # fmt: skip


def view_of(m: Memory) -> dict[str, Any]:
    ids = m.scope.entities()
    return {
        "id": m.id, "memory": m.text, **ids, "hash": text_hash(m.text),
        "metadata": json.loads(m.metadata), "categories": list(m.categories),
        "created_at": m.created_at, "updated_at": m.updated_at,
        "expiration_date": m.expiration_date, "immutable": m.immutable,
        "expired_at": m.expired_at,
    }  # fmt: skip


def got_of(v: MemoryView) -> dict[str, Any]:
    return {
        "id": v.id, "memory": v.memory, "user_id": v.user_id, "agent_id": v.agent_id,
        "app_id": v.app_id, "run_id": v.run_id, "hash": v.hash, "metadata": v.metadata,
        "categories": v.categories, "created_at": v.created_at, "updated_at": v.updated_at,
        "expiration_date": v.expiration_date, "immutable": v.immutable,
        "expired_at": v.expired_at,
    }  # fmt: skip


def build_events(tenant: Tenant, ops: list[Any], steps: list[int]) -> list[Event]:
    """Turn operations into events, resolving targets (and delete_all) like a producer would,
    against a model of what was written so far."""
    scopes = [Scope.of(tenant.org_id, tenant.project_id, **s) for s in SCOPES]
    model = Model()
    created: list[tuple[str, Scope]] = []
    events: list[Event] = []
    now = BASE_MS
    for operation, step in zip(ops, steps, strict=True):
        now += step
        kind = operation[0]
        new: list[Event] = []
        if kind == "add":
            _, si, text, meta, cats, exp, immutable = operation
            mid = str(uuid.uuid4())
            created.append((mid, scopes[si]))
            new.append(MemoryAdded(
                scope=scopes[si], memory_id=mid, text=text, hash=text_hash(text),
                metadata=json.dumps(meta), categories=cats, expiration_date=exp,
                immutable=immutable, occurred_at=now,
            ))  # fmt: skip
        elif kind in ("update", "delete", "expire") and created:
            mid, scope = created[operation[1] % len(created)]
            if kind == "update":
                _, _, text, meta, cats, set_exp, exp = operation
                if text is None and meta is None and cats is None and not set_exp:
                    text = TEXTS[0]
                new.append(MemoryUpdated(
                    scope=scope, memory_id=mid, text=text,
                    hash=text_hash(text) if text is not None else None,
                    metadata=json.dumps(meta) if meta is not None else None, categories=cats,
                    expiration_date=exp if set_exp else None, set_expiration_date=set_exp,
                    occurred_at=now,
                ))  # fmt: skip
            elif kind == "delete":
                new.append(MemoryDeleted(scope=scope, memory_id=mid, occurred_at=now))
            else:
                new.append(MemoryExpired(
                    scope=scope, memory_id=mid, reason="expiration_date", occurred_at=now
                ))  # fmt: skip
        elif kind == "delete_all":
            scope = scopes[operation[1]]
            ids = [m.id for m in model.live.values() if m.scope == scope]
            audit = DeleteAllRequested(
                scope=scope, filters=json.dumps(scope.entities()), count=len(ids),
                memory_ids=tuple(ids), occurred_at=now,
            )  # fmt: skip
            new.append(audit)
            new.extend(
                MemoryDeleted(scope=scope, memory_id=mid, reason="delete_all",
                              cause_event_id=audit.event_id, occurred_at=now)
                for mid in ids
            )  # fmt: skip
        elif kind == "policy":
            _, pid, pattern, ttl = operation
            new.append(RetentionPolicySet(
                scope=Scope(tenant.org_id, tenant.project_id), policy_id=pid,
                field="agent_id", pattern=pattern, ttl_seconds=ttl, occurred_at=now,
            ))  # fmt: skip
        elif kind == "unpolicy":
            new.append(RetentionPolicyRemoved(
                scope=Scope(tenant.org_id, tenant.project_id), policy_id=operation[1],
                occurred_at=now,
            ))  # fmt: skip
        for e in new:
            model.apply(e)
        events.extend(new)
    return events


def reference(events: list[Event], at_ms: int) -> Model:
    model = Model()
    for e in events:
        if e.occurred_at <= at_ms:
            model.apply(e)
    return model


# --------------------------------------------------------------------------------------
# The system under test: one Memstream for the module, one project per example
# --------------------------------------------------------------------------------------


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    ms: Memstream

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    data_dir: Path = tmp_path_factory.mktemp("asof-model")
    loop = asyncio.new_event_loop()
    ms = Memstream(Settings(data_dir=data_dir, embedder="hashing"))
    loop.run_until_complete(ms.start())
    try:
        yield Harness(loop, ms)
    finally:
        loop.run_until_complete(ms.close())
        loop.close()


def as_of_views(
    h: Harness, tenant: Tenant, filters: dict[str, Any], as_of: Any, show_expired: bool
) -> list[dict[str, Any]]:
    page = h.run(h.ms.get_all(
        filters, tenant=tenant, as_of=as_of, page_size=1000, show_expired=show_expired
    ))  # fmt: skip
    assert page.count == len(page.results)
    return [got_of(v) for v in page.results]


def expected_views(
    model: Model, tenant: Tenant, filters: dict[str, Any], at_ms: int, show_expired: bool
) -> list[dict[str, Any]]:
    compiled = compile_filters(filters, org_id=tenant.org_id, project_id=tenant.project_id)
    chosen = [
        m
        for m in model.live.values()
        if compiled.matches(row_of(m)) and (show_expired or model.visible(m, at_ms))
    ]
    chosen.sort(key=lambda m: (-m.created_at, m.id))
    return [view_of(m) for m in chosen]


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    first=st.lists(add_op, min_size=1, max_size=4),
    rest=st.lists(op, max_size=12),
    data=st.data(),
)
def test_get_all_as_of_equals_the_reference_state(
    harness: Harness, first: list[Any], rest: list[Any], data: st.DataObject
) -> None:
    h = harness
    ops = first + rest
    tenant = Tenant("org-model", f"p-{uuid.uuid4().hex[:12]}")
    steps = data.draw(st.lists(st.sampled_from(STEPS), min_size=len(ops), max_size=len(ops)))
    events = build_events(tenant, ops, steps)
    positions = h.run(h.ms.log.append([message_of(e) for e in events]))
    h.run(h.ms.catch_up())

    # by time: instants on, just before and between the events, and long after
    times = sorted({e.occurred_at for e in events})
    candidates = sorted({t + d for t in times for d in (-1, 0)} | {times[-1] + 30 * 24 * HOUR})
    instants = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3))
    instants.append(times[-1] + 2 * HOUR)  # where TTL policies and expiry dates have bitten
    for at in instants:
        model = reference(events, at)
        when = dt.datetime.fromtimestamp(at / 1000, tz=dt.UTC).isoformat()
        filters = data.draw(st.sampled_from(FILTERS))
        show_expired = data.draw(st.booleans())
        got = as_of_views(h, tenant, filters, when, show_expired)
        assert got == expected_views(model, tenant, filters, at, show_expired), (when, filters)
        # get(id) answers for every memory live then, expired or not, and 404 otherwise
        ever = sorted({e.memory_id for e in events if e.memory_id})
        probe = data.draw(st.sampled_from(ever)) if ever else None
        if probe is not None:
            if probe in model.live:
                got_one = got_of(h.run(h.ms.get(probe, tenant=tenant, as_of=when)))
                assert got_one == view_of(model.live[probe])
            else:
                with pytest.raises(NotFoundError):
                    h.run(h.ms.get(probe, tenant=tenant, as_of=when))

    # by log position: exactly the events up to and including the named one
    k = data.draw(st.integers(0, len(events) - 1))
    model = Model()
    for e in events[: k + 1]:
        model.apply(e)
    cut = {"partition": positions[k].partition, "offset": positions[k].offset}
    show_expired = data.draw(st.booleans())
    got = as_of_views(h, tenant, EVERYTHING, cut, show_expired)
    at = events[k].occurred_at
    assert got == expected_views(model, tenant, EVERYTHING, at, show_expired), cut

    # and the fold of the whole log is the live projection
    last = {"partition": positions[-1].partition, "offset": positions[-1].offset}
    folded = as_of_views(h, tenant, EVERYTHING, last, True)
    live = h.run(h.ms.get_all(EVERYTHING, tenant=tenant, page_size=1000, show_expired=True))
    assert folded == [got_of(v) for v in live.results]
