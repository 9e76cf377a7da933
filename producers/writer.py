"""The write side: turn a request into events, append them, and (by default) wait for them.

A write returns only after its events are durable in the log; with `wait=True` it also waits
until the projector has applied them, so the caller reads its own writes and learns the
projector's decision (e.g. `NONE` for an exact duplicate). Duplicates are decided by the
projector in log order, never by a check-then-insert here, so racing writers cannot both win.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from memstream import cancellation, metrics
from memstream.crypto import forget_secrets, keyed_hash
from memstream.errors import ConflictError, NotFoundError, ValidationError
from memstream.events import (
    Actor,
    DeleteAllRequested,
    Event,
    FeedbackGiven,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    RetentionPolicyRemoved,
    RetentionPolicySet,
    SubjectErased,
    message_of,
    new_id,
    now_ms,
)
from memstream.keystore.base import Subject, SubjectKey
from memstream.log.base import EventLog, Offsets, Position
from memstream.models import UNSET, MemoryView, Tenant, WriteResult
from memstream.producers import validation as v
from memstream.producers.phases import Phases
from memstream.projector import erasure
from memstream.projector.projector import Projector
from memstream.query.filters import compile_filters
from memstream.query.reader import MemoryReader
from memstream.query.retention import check_policy, parse_ttl
from memstream.scope import ENTITY_FIELDS, Scope, normalise_id
from memstream.settings import Limits

# one encoder for every add's source hash: json.dumps with options builds one per call
_SOURCE_JSON = json.JSONEncoder(sort_keys=True, default=str)


class _Producer:
    """Append events and, unless told not to, wait until the projector has applied them."""

    def __init__(
        self,
        log: EventLog,
        projector: Projector,
        reader: MemoryReader,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.log = log
        self.projector = projector
        self.reader = reader

    async def _key(self, scope: Scope) -> SubjectKey | None:
        """The key the scope's data is sealed under (None for a scope with no entity)."""
        subject = Subject.of_scope(scope)
        return await self.projector.keys.key_for(subject) if subject is not None else None

    async def _append(
        self,
        events: list[Event],
        wait: bool = True,
        phases: Phases | None = None,
        sealing: tuple[Scope, SubjectKey] | None = None,
    ) -> list[Position]:
        """Seal each event's data under its subject's key, append, and (by default) wait.
        A client that disconnects does not interrupt the append itself
        (memstream.cancellation): the batch is in the log whole or not at all.
        `sealing`: the key the caller just looked up for one scope (and hashed the texts
        under) -- events of that scope are sealed under it instead of looking it up again,
        so an event's hash and its sealed text are always under the same key."""
        self.projector.check_writable()  # a pinned projection (replay --to-position): 409
        messages = []
        for e in events:
            key = None
            if e.SEALED:
                if sealing is not None and e.scope == sealing[0]:
                    key = sealing[1]
                else:
                    key = await self._key(e.scope)
            messages.append(message_of(e, key))
        if phases is not None:
            phases.mark("seal")
        with cancellation.committing():
            positions = await self.log.append(messages)
            if phases is not None:
                phases.mark("append")
            metrics.count_appended(e.event_type for e in events)
            self.projector.note_appended(positions)
        if wait:  # the projector applies the events whether anyone waits or not
            await self.projector.wait_for(positions)
        return positions


class MemoryWriter(_Producer):
    async def _decisions(self, events: list[Event]) -> list[dict[str, Any]]:
        """The projector's decision for each event: from memory when this process applied
        it, else read back (off the event loop) when another process did."""
        ids = [e.event_id for e in events]
        found = self.projector.decided(ids)
        if missing := [i for i in ids if i not in found]:
            found.update(await asyncio.to_thread(self.reader.outcomes, missing))
        return [found[i] for i in ids]

    async def _replayed(self, tenant: Tenant, request_id: str | None) -> list[WriteResult] | None:
        """The original results of a retried request (same request_id), or None if it is new."""
        if request_id is None:
            return None
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        rows = self.reader.events_for_request(tenant, request_id)
        if not rows:
            return None
        return self._results_of(rows)

    async def results_at(self, positions: list[Position]) -> list[WriteResult]:
        """The answer of an add whose events are at `positions` (appended by a process that
        could not wait for them, memstream/light_writes.py): once they are applied, the
        projector's decisions, as `add` would have answered."""
        await self.projector.wait_for(positions)
        rows = await asyncio.to_thread(
            self.reader.events_at, [(p.partition, p.offset) for p in positions]
        )
        return [_result_of(row) for row in rows]

    def _results_of(self, rows: list[dict[str, Any]]) -> list[WriteResult]:
        """The answer a request gave, rebuilt from its audit rows."""
        return [_result_of(row) for row in rows if row["event_type"] != "DeleteAllRequested"]

    async def add(
        self,
        tenant: Tenant,
        messages: Any,
        *,
        user_id: Any = None,
        agent_id: Any = None,
        app_id: Any = None,
        run_id: Any = None,
        metadata: Any = None,
        categories: Any = None,
        expiration_date: Any = None,
        immutable: Any = False,
        request_id: Any = None,
        actor: Actor | None = None,
        wait: bool = True,
    ) -> list[WriteResult]:
        req = v.add_request(
            tenant.org_id, tenant.project_id, messages, v.memory_texts, self.limits,
            user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
            metadata=metadata, categories=categories, expiration_date=expiration_date,
            immutable=immutable, request_id=request_id,
        )  # fmt: skip
        scope, texts, meta, cats = req.scope, req.messages, req.metadata, req.categories
        expires, rid = req.expiration_date, req.request_id
        if rid is not None and (previous := await self._replayed(tenant, rid)) is not None:
            return previous
        key = await self._key(scope)
        assert key is not None  # Scope.of requires an entity
        source = _SOURCE_JSON.encode(messages)  # json.dumps(sort_keys=True, default=str)
        events: list[Event] = [
            MemoryAdded(
                scope=scope, memory_id=new_id(), actor=actor or Actor(), request_id=rid,
                text=t, hash=keyed_hash(key, t), metadata=meta, categories=cats,
                expiration_date=expires, immutable=immutable,
                source_hash=keyed_hash(key, source),
            )
            for t in texts
        ]  # fmt: skip
        # no await between the key's look-up and this append's sealing: the key is as fresh
        # as a second look-up would be (KeyStore.key_for's contract) and costs no stat
        await self._append(events, wait, sealing=(scope, key))
        if not wait:
            return [WriteResult(e.memory_id or "", "ADD", e.text, e.event_id, pending=True)
                    for e in events if isinstance(e, MemoryAdded)]  # fmt: skip
        return [_result_of(row) for row in await self._decisions(events)]

    async def update(
        self,
        tenant: Tenant,
        memory_id: str,
        *,
        text: Any = None,
        metadata: Any = None,
        categories: Any = None,
        expiration_date: Any = UNSET,
        timestamp: Any = None,
        request_id: Any = None,
        actor: Actor | None = None,
        wait: bool = True,
    ) -> WriteResult:
        """`timestamp` (Unix seconds or ISO-8601) backdates created_at and updated_at."""
        if (
            text is None
            and metadata is None
            and categories is None
            and expiration_date is UNSET
            and timestamp is None
        ):
            raise ValidationError(
                "update: give at least one of text, metadata, categories, expiration_date, timestamp"
            )
        backdate = v.timestamp_ms(timestamp) if timestamp is not None else None
        new_text = v.check_text(text, limits=self.limits) if text is not None else None
        meta = v.metadata_json(metadata, limits=self.limits) if metadata is not None else None
        cats = v.categories_list(categories, limits=self.limits) if categories is not None else None
        set_exp = expiration_date is not UNSET
        expires = v.expiration(expiration_date) if set_exp else None
        rid = v.request_id(request_id)
        if previous := await self._replayed(tenant, rid):  # [] = the id only named a delete_all
            return previous[0]
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        current = self.reader.get(tenant, memory_id)
        if current.immutable:
            raise ConflictError(f"memory {memory_id} is immutable and cannot be updated")
        scope = Scope.of_row(current)
        key = await self._key(scope)
        event = MemoryUpdated(
            scope=scope, memory_id=memory_id, actor=actor or Actor(), request_id=rid,
            text=new_text,
            hash=keyed_hash(key, new_text) if new_text is not None and key is not None else None,
            previous_hash=current.hash, metadata=meta, categories=cats,
            expiration_date=expires, set_expiration_date=set_exp, timestamp=backdate,
        )  # fmt: skip
        await self._append([event], wait)
        return WriteResult(
            memory_id, "UPDATE", new_text or current.memory, event.event_id, not wait
        )

    async def delete(
        self,
        tenant: Tenant,
        memory_id: str,
        *,
        request_id: Any = None,
        actor: Actor | None = None,
        wait: bool = True,
    ) -> WriteResult:
        rid = v.request_id(request_id)
        if previous := await self._replayed(tenant, rid):  # [] = the id only named a delete_all
            return previous[0]
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        current = self.reader.get(tenant, memory_id)
        event = MemoryDeleted(
            scope=Scope.of_row(current), memory_id=memory_id, actor=actor or Actor(), request_id=rid,
            reason="api",
        )  # fmt: skip
        await self._append([event], wait)
        return WriteResult(memory_id, "DELETE", current.memory, event.event_id, not wait)

    async def delete_all(
        self,
        tenant: Tenant,
        filters: Mapping[str, Any] | None,
        *,
        request_id: Any = None,
        actor: Actor | None = None,
        wait: bool = True,
    ) -> int:
        """Resolve `filters` against the caught-up projection and delete exactly what matched.

        Scoped by construction: the filters must positively name an entity (compile_filters
        refuses an empty or entity-less filter), and implicit null scoping keeps
        `{"user_id": "alice"}` from touching alice's agent- or run-scoped memories.
        """
        compile_filters(filters, org_id=tenant.org_id, project_id=tenant.project_id)
        rid = v.request_id(request_id)
        if (previous := await self._replayed(tenant, rid)) is not None:
            return len(previous)
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        ids: list[MemoryView] = []
        page = 1
        while True:  # off the event loop: resolving a wide filter is an expensive read
            chunk = await asyncio.to_thread(
                self.reader.get_all, tenant, filters, page=page, page_size=1000,
                show_expired=True,
            )  # fmt: skip
            ids.extend(chunk.results)
            if page * chunk.page_size >= chunk.count:
                break
            page += 1
        who = actor or Actor()
        simple = {
            k: filters[k] for k in ENTITY_FIELDS if filters and isinstance(filters.get(k), str)
        }
        audit_scope = Scope(tenant.org_id, tenant.project_id, **{
            k: val for k, val in simple.items() if val != "*"
        })  # fmt: skip
        audit = DeleteAllRequested(
            scope=audit_scope, actor=who, request_id=rid,
            filters=json.dumps(filters, sort_keys=True, default=str),
            count=len(ids), memory_ids=tuple(m.id for m in ids),
        )  # fmt: skip
        deletes: list[Event] = [
            MemoryDeleted(
                scope=Scope.of_row(m), memory_id=m.id, actor=who, request_id=rid,
                reason="delete_all", cause_event_id=audit.event_id,
            )
            for m in ids
        ]  # fmt: skip
        await self._append([audit, *deletes], wait)
        return len(ids)

    async def feedback(
        self,
        tenant: Tenant,
        memory_id: str,
        *,
        feedback: str | None,
        feedback_reason: str | None,
        request_id: Any = None,
        actor: Actor | None = None,
    ) -> FeedbackGiven:
        """Record a rating of a memory (its reason is the caller's text, so it is sealed)."""
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        current = self.reader.get(tenant, memory_id)
        event = FeedbackGiven(
            scope=Scope.of_row(current), memory_id=current.id, actor=actor or Actor(),
            request_id=v.request_id(request_id), feedback=feedback, feedback_reason=feedback_reason,
        )  # fmt: skip
        await self._append([event])
        return event


class RetentionWriter(_Producer):
    """Retention rules and the expiry sweeper: both only append facts to the log."""

    async def set_policy(
        self,
        tenant: Tenant,
        *,
        field: str,
        pattern: str,
        ttl: str | int,
        policy_id: str | None = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        check_policy(field, pattern)
        seconds = parse_ttl(ttl)
        pid = v.request_id(policy_id) or f"{field}:{pattern}"
        event = RetentionPolicySet(
            scope=Scope(tenant.org_id, tenant.project_id), actor=actor or Actor(),
            policy_id=pid, field=field, pattern=pattern, ttl_seconds=seconds,
        )  # fmt: skip
        await self._append([event])
        return {"policy_id": pid, "field": field, "pattern": pattern, "ttl_seconds": seconds}

    async def remove_policy(
        self, tenant: Tenant, policy_id: str, actor: Actor | None = None
    ) -> None:
        await self.projector.catch_up()
        if not any(p["policy_id"] == policy_id for p in self.reader.policies(tenant)):
            raise NotFoundError(f"retention policy not found: {policy_id}")
        event = RetentionPolicyRemoved(
            scope=Scope(tenant.org_id, tenant.project_id),
            actor=actor or Actor(),
            policy_id=policy_id,
        )
        await self._append([event])

    async def expire(self, now: int | None = None, actor: Actor | None = None) -> int:
        """Record MemoryExpired for every memory (in every project) that expired by `now`.

        Reads hide these memories already; the events make the expiry part of the audit.
        Running it twice, or in two processes at once, is safe: a second expiry is a no-op.
        """
        await self.projector.catch_up()
        when = now if now is not None else now_ms()
        events = [
            MemoryExpired(
                scope=Scope.of_row(row), memory_id=row["id"],
                actor=actor or Actor(source="sweeper"), reason=reason, policy_id=policy_id,
                expiration_date=row["expiration_date"] if reason == "expiration_date" else None,
            )
            for row, reason, policy_id in self.reader.due_for_expiry(when)
        ]  # fmt: skip
        for i in range(0, len(events), 1000):
            await self._append(list(events[i : i + 1000]))
        return len(events)


class SubjectEraser(_Producer):
    """Crypto-shredding: destroy a subject's keys, then record the erasure in the log."""

    async def erase(
        self,
        tenant: Tenant,
        *,
        user_id: Any = None,
        agent_id: Any = None,
        app_id: Any = None,
        run_id: Any = None,
        reason: Any = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Erase one subject of the tenant's project and return what was done.

        The keys go first: from then on nothing sealed under them opens anywhere (log dumps,
        replays, other processes). The `SubjectErased` event that follows makes every
        projector remove the plaintext it derived. Erasing twice is harmless.
        """
        named = {
            name: normalise_id(name, value)
            for name, value in zip(ENTITY_FIELDS, (user_id, agent_id, app_id, run_id), strict=True)
            if value is not None
        }
        if len(named) != 1:
            raise ValidationError(
                "erase: name exactly one of user_id, agent_id, app_id, run_id (the subject "
                f"whose data is erased), got {sorted(named) or 'none'}"
            )
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise ValidationError("reason: must be a string of at most 1000 characters")
        ((field, value),) = named.items()
        assert value is not None
        self.projector.check_writable()  # before the keys go: an erasure is a write
        subject = Subject(tenant.org_id, tenant.project_id, field, value)
        await self.projector.catch_up()  # flushed: dead_keys below scans the tables
        owned = self.reader.get_all(
            tenant, subject_filters(subject), page=1, page_size=1, show_expired=True
        ).count
        with cancellation.committing():  # from the keys' destruction to the event: whole
            key_ids = await self.projector.keys.destroy(subject)
            forget_secrets()  # no cache of this process keeps the destroyed secrets
            # keys an earlier erase destroyed before it was killed, leaving its event unwritten
            dead = (await self.dead_keys(subject)).get(subject, [])
            earlier = [k for k in dead if k not in key_ids]
            event = SubjectErased(
                scope=Scope(tenant.org_id, tenant.project_id, **{field: value}),
                actor=actor or Actor(), subject_field=field, key_ids=(*key_ids, *earlier),
                reason=reason,
            )  # fmt: skip
            positions = await self._append([event], wait=False)
        await self.projector.wait_for(positions)
        return {
            "subject": {field: value},
            "memories_erased": owned,
            "keys_destroyed": len(key_ids),
            "keys_already_destroyed": len(earlier),
            "event_id": event.event_id,
        }

    async def dead_keys(
        self, subject: Subject | None = None, *, since: Offsets | None = None
    ) -> dict[Subject, list[str]]:
        """Key ids the live projection's rows (or, with `since`, the rows of events at or
        after that checkpoint) were sealed under whose key no longer exists, by subject. Rows
        are read first, the key store refreshed after (a key created in between is then seen
        alive, never mistaken for a destroyed one)."""
        gen = self.projector.generation()
        scanned = await asyncio.to_thread(erasure.sealed_keys, gen, subject, since=since)
        if not scanned:
            return {}
        keys = self.projector.keys
        await keys.refresh()
        dead = {
            owner: sorted(k for k in ids if keys.lookup(owner, k) is None)
            for owner, ids in scanned.items()
        }
        return {owner: ids for owner, ids in dead.items() if ids}

    async def finish_interrupted(self) -> list[Subject]:
        """Complete erasures killed between destroying the keys and logging `SubjectErased`:
        one `SubjectErased` per subject whose projected rows are sealed under dead keys, so
        every projector removes that plaintext (run at start; harmless when repeated).

        The whole projection is read only when a key was destroyed since the generation's
        last clean scan (or it has none); otherwise only the rows of events projected since
        (projector/erasure.py, ScanStamp). A scan that finds nothing is recorded."""
        if self.projector.pinned is not None:
            return []
        gen = self.projector.generation()
        marker = self.projector.keys.erasure_marker()  # before the scan: a destroy during
        checkpoint = gen.checkpoint()  # it changes the marker, and the next start rescans
        stamp = erasure.read_scan_stamp(gen) if marker is not None else None
        since = stamp.checkpoint if stamp is not None and stamp.marker == marker else None
        if since is not None and since == checkpoint:
            return []  # no key destroyed and nothing projected since the last clean scan
        dead = await self.dead_keys(since=since)
        if not dead and marker is not None and gen is self.projector.generation():
            erasure.write_scan_stamp(gen, erasure.ScanStamp(marker, checkpoint))
        done: list[Subject] = []
        for subject, ids in dead.items():
            event = SubjectErased(
                scope=Scope(subject.org_id, subject.project_id, **{subject.field: subject.value}),
                actor=Actor(source="memstream:recovery"), subject_field=subject.field,
                key_ids=tuple(ids), reason="completing an interrupted erasure",
            )  # fmt: skip
            await self._append([event], wait=False)
            done.append(subject)
        return done


def subject_filters(subject: Subject) -> dict[str, Any]:
    """The get_all filters selecting what a subject owns: its id in its field, any value of
    the less personal entities (set or not), and (implicitly null) none of the more personal."""
    i = ENTITY_FIELDS.index(subject.field)
    return {subject.field: subject.value, **{name: ["*", None] for name in ENTITY_FIELDS[i + 1 :]}}


def _result_of(row: dict[str, Any]) -> WriteResult:
    outcome = row["outcome"]
    if outcome == "NONE":
        return WriteResult(row["resolved_memory_id"], "NONE", row["text"], row["event_id"])
    return WriteResult(row["memory_id"], outcome, row["text"] or row["old_text"], row["event_id"])
