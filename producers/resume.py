"""Async inferred adds that outlive the server which accepted them.

`async_mode: true` answers PENDING only once the conversation is durably in the log: a
`MessagesRecorded` with `pending = true` and the add's other fields (`options`), appended
alone. If that append fails, the caller gets the error (503), never PENDING. From then on
the add's decision is *owed*, and the log says so to every server.

Whoever settles it runs the ordinary pipeline (`InferenceWriter.infer` with `recorded=`)
and appends the decision (`settles = true`) with its memory events, or, when inference
fails for good, an `InferenceFailed` with the reason. The projector applies only the first
settling event of a pending MessagesRecorded in log order; a later one is recorded as
DUPLICATE and its memory events change nothing (projector/apply.py). So several settlers
-- servers on one Kafka topic, a restart racing a slow task -- may each decide the same add
and it still changes memories once, identically on every projection and on replay.

Who settles (`AsyncAdds`):
- the server that accepted the add, at once, in a task of its own;
- every server at start, once its projection has caught up with the log: every owed add
  (the server that accepted it is most likely the one restarting);
- every server every `interval_s`: owed adds older than `resume_after_s` (their server died
  and did not come back). Each process settles one add at most once at a time.

Failures. An LLM that answered and was refused or unusable (HTTP 4xx other than 429,
malformed output, a decision about a memory it was not shown) fails the add at once: asking
again is expected to give the same answer. A request that no longer validates fails too.
Anything else -- the LLM unreachable, timing out or answering 429/5xx, the log or the
projection unavailable -- is retried with exponential backoff (`backoff_s` doubling up to
`max_backoff_s`) until the add is `retry_for_s` old; the next such failure is final. Every
restart gives an owed add at least one more attempt. A final failure is appended as
`InferenceFailed`; if even that append fails, the add stays owed and is resumed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from memstream.cancellation import unbound_context
from memstream.crypto import keyed_hash
from memstream.errors import ValidationError
from memstream.events import Actor, InferenceFailed, MessagesRecorded, now_ms
from memstream.llm.base import LLMUnavailableError
from memstream.log.base import Offsets
from memstream.models import Tenant
from memstream.producers import validation as v
from memstream.producers.inference import InferenceWriter
from memstream.producers.writer import MemoryWriter
from memstream.projector.apply import scope_of_row
from memstream.projector.store import Generation
from memstream.projector.tier import EMPTY, TierView
from memstream.query.explain import settlement
from memstream.query.tiered import events_where

log = logging.getLogger("memstream.inference")

PENDING_MARK = '%"pending": true%'  # in a pending MessagesRecorded's audit payload


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When owed adds are resumed and how long a failing one is retried (docs/inference.md)."""

    retry_for_s: float = 600.0  # transient failures are retried until the add is this old
    resume_after_s: float = 300.0  # periodic scans resume owed adds at least this old
    interval_s: float = 30.0  # between two scans
    backoff_s: float = 1.0  # the wait after a first transient failure; doubles each time
    max_backoff_s: float = 60.0
    max_running: int = 32  # resumed adds settled at once; the rest wait for the next scan


class AsyncAdds(MemoryWriter):
    """Accept async inferred adds durably, and settle every owed one (module docstring)."""

    def __init__(self, inference: InferenceWriter, policy: RetryPolicy | None = None) -> None:
        super().__init__(inference.log, inference.projector, inference.reader, inference.limits)
        self.inference = inference
        self.policy = policy or RetryPolicy()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None
        # per partition: no owed add below this offset (moved up by each scan)
        self._low: Offsets = {}

    # -- accepting -----------------------------------------------------------------------
    async def accept(
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
    ) -> str:
        """Validate (a bad request is a 400 at once), append the pending MessagesRecorded
        (durable on return; a failing log raises and nothing is promised), start settling
        it here, and return its event id. A retried request (same request_id) returns the
        first one's id and appends nothing."""
        req = v.add_request(
            tenant.org_id, tenant.project_id, messages, v.conversation, self.limits,
            user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
            metadata=metadata, categories=categories, expiration_date=expiration_date,
            immutable=immutable, request_id=request_id,
        )  # fmt: skip
        rid = req.request_id
        if rid is not None and (previous := await self._accepted(tenant, rid)) is not None:
            return previous
        key = await self._key(req.scope)
        assert key is not None  # Scope.of requires an entity
        options = {
            "metadata": json.loads(req.metadata), "categories": list(req.categories),
            "expiration_date": req.expiration_date, "immutable": req.immutable,
        }  # fmt: skip
        recorded = MessagesRecorded(
            scope=req.scope, actor=actor or Actor(), request_id=req.request_id,
            messages=json.dumps(req.messages, ensure_ascii=False),
            source_hash=keyed_hash(key, json.dumps(messages, sort_keys=True, default=str)),
            pending=True, options=json.dumps(options, ensure_ascii=False),
        )  # fmt: skip
        await self._append([recorded], wait=False)
        self._settle_soon(tenant, recorded)
        return recorded.event_id

    async def _accepted(self, tenant: Tenant, request_id: str) -> str | None:
        await self.projector.catch_up(flush=False)  # the reader merges the fresh tier
        rows = await asyncio.to_thread(self.reader.events_for_request, tenant, request_id)
        if not rows:
            return None
        recorded = [r for r in rows if r["event_type"] == "MessagesRecorded"]
        return str((recorded or rows)[0]["event_id"])

    # -- settling ------------------------------------------------------------------------
    def _settle_soon(self, tenant: Tenant, recorded: MessagesRecorded) -> None:
        eid = recorded.event_id
        if eid in self._running:
            return  # this process is settling it already
        # started by the request that accepted the add, but it must outlive that request:
        # a client leaving (memstream.cancellation) does not stop an accepted add
        task = asyncio.create_task(self._settle(tenant, recorded), context=unbound_context())
        self._running[eid] = task
        task.add_done_callback(lambda _: self._running.pop(eid, None))

    async def _settle(self, tenant: Tenant, recorded: MessagesRecorded) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                if await self._settled(recorded.event_id):
                    return  # another server (or an earlier run of this one) did
                await self._decide(tenant, recorded)
                return
            except Exception as exc:  # noqa: BLE001 -- classified below, never lost
                error: Exception = exc
            old = now_ms() - recorded.occurred_at >= self.policy.retry_for_s * 1000
            if is_final(error) or old:
                await self._fail(recorded, error, attempt)
                return
            wait = min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (attempt - 1))
            log.warning(
                "async add %s: attempt %d failed, retrying in %.0f s: %s",
                recorded.event_id, attempt, wait, reason_of(error),
            )  # fmt: skip
            if await self._stopped_within(wait):
                return  # shutting down: it stays owed, and is resumed at the next start

    async def _settled(self, messages_event_id: str) -> bool:
        """Whether the projection (caught up with the log) shows the add settled, or its
        subject erased since (then nothing may be decided from the messages: this
        process's copy of them is all that is left)."""
        await self.projector.catch_up(flush=False)  # both reads merge the fresh tier
        gen = self.projector.generation()
        view = self.projector.tier_view(gen)
        row = (await asyncio.to_thread(self.reader.outcomes, [messages_event_id])).get(
            messages_event_id
        )
        if row is not None and (row["outcome"] == "ERASED" or row["text"] is None):
            log.warning("async add %s: its subject was erased, not deciding it", messages_event_id)
            return True
        found = await asyncio.to_thread(settlement, gen, messages_event_id, None, view)
        return found is not None

    async def _decide(self, tenant: Tenant, recorded: MessagesRecorded) -> None:
        options = json.loads(recorded.options or "{}")
        scope = recorded.scope
        await self.inference.infer(
            tenant, json.loads(recorded.messages),
            user_id=scope.user_id, agent_id=scope.agent_id, app_id=scope.app_id,
            run_id=scope.run_id, metadata=options.get("metadata"),
            categories=options.get("categories") or None,
            expiration_date=options.get("expiration_date"),
            immutable=bool(options.get("immutable", False)), request_id=recorded.request_id,
            actor=recorded.actor, wait=False, recorded=recorded,
        )  # fmt: skip

    async def _fail(self, recorded: MessagesRecorded, error: Exception, attempts: int) -> None:
        llm = self.inference.llm
        failed = InferenceFailed(
            scope=recorded.scope, actor=recorded.actor, request_id=recorded.request_id,
            messages_event_id=recorded.event_id, model=llm.model, llm_host=llm.host,
            reason=reason_of(error), attempts=attempts,
        )  # fmt: skip
        try:
            await self._append([failed], wait=False)
        except Exception:  # the add stays owed: a later scan resumes it
            log.exception("async add %s: could not record its failure", recorded.event_id)
            return
        log.warning("async add %s failed after %d attempt(s): %s",
                    recorded.event_id, attempts, failed.reason)  # fmt: skip

    # -- resuming ------------------------------------------------------------------------
    def start(self) -> None:
        """Resume owed adds now (once the projection has caught up) and every interval."""
        self._stop.clear()
        self._scanner = asyncio.create_task(self._scan_forever())

    async def _scan_forever(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    await self.projector.catch_up()
                n = await self.resume(0.0 if first else self.policy.resume_after_s)
                if n:
                    log.warning("resuming %d owed async inferred add(s)", n)
                first = False
            except Exception:  # the next scan tries again; the server keeps serving
                log.exception("looking for owed async inferred adds failed")
            if await self._stopped_within(self.policy.interval_s):
                return

    async def resume(self, older_than_s: float = 0.0) -> int:
        """Start settling every owed add at least `older_than_s` old that this process is
        not settling already (at most `max_running` at once); how many were started."""
        gen = self.projector.generation()
        owed = await asyncio.to_thread(self._owed, gen, self.projector.tier_view(gen))
        now = now_ms()
        started = 0
        for row in owed:
            if row["event_id"] in self._running:
                continue
            if now - row["occurred_at"] < older_than_s * 1000:
                continue
            if len(self._running) >= self.policy.max_running:
                break
            recorded = recorded_of(row)
            if recorded is not None:
                self._settle_soon(Tenant(row["org_id"], row["project_id"]), recorded)
                started += 1
        return started

    def _owed(self, gen: Generation, view: TierView = EMPTY) -> list[dict[str, Any]]:
        """The audit rows of the pending MessagesRecorded no event settles yet, oldest
        first. Reads only from the low-water mark of the previous scan on, in the tables
        and in this process's fresh tier (`view`, taken before the tables are read): a
        settling event still in the tier settles its add as one in the tables does."""
        done = gen.checkpoint()  # read first: every row below it is in the table
        where = f"event_type = 'MessagesRecorded' AND payload LIKE '{PENDING_MARK}'"
        since = self._low
        candidates = events_where(
            gen, view, f"{where} AND {_from(since)}",
            lambda a: a["event_type"] == "MessagesRecorded"
            and bool(_json(a["payload"]).get("pending"))
            and _at_or_after(a, since),
        )  # fmt: skip
        first: Offsets = {}
        for row in candidates:
            p, o = row["partition"], row["offset"]
            first[p] = min(first.get(p, o), o)
        settled: set[str] = set()
        if first:  # a settling event follows its messages on their partition
            for row in events_where(
                gen, view,
                "event_type IN ('InferenceDecided', 'InferenceFailed') "
                f"AND outcome IN ('DECIDED', 'FAILED') AND {_from(first, after=True)}",
                lambda a: a["event_type"] in ("InferenceDecided", "InferenceFailed")
                and a["outcome"] in ("DECIDED", "FAILED")
                and a["offset"] > first.get(a["partition"], a["offset"]),
            ):  # fmt: skip
                payload = json.loads(row["payload"] or "{}")
                if row["event_type"] == "InferenceFailed" or payload.get("settles"):
                    settled.add(payload.get("messages_event_id"))
        owed = sorted(
            (r for r in candidates if r["event_id"] not in settled and r["text"] is not None),
            key=lambda r: (r["occurred_at"], r["partition"], r["offset"]),
        )
        low = dict(done)
        for row in owed:
            p = row["partition"]
            low[p] = min(low.get(p, row["offset"]), row["offset"])
        self._low = low
        return owed

    # -- stopping ------------------------------------------------------------------------
    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def close(self) -> None:
        """Stop resuming; let attempts under way finish (each is bounded by the LLM's
        timeouts). Adds waiting to retry stay owed: the next start resumes them."""
        self._stop.set()
        if self._scanner is not None:
            with contextlib.suppress(Exception):
                await self._scanner
            self._scanner = None
        running = list(self._running.values())
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def _from(low: Offsets, *, after: bool = False) -> str:
    """Rows at or after (strictly after, with `after`) `low[p]` on each partition it names;
    without `after`, every row of the partitions it does not name too."""
    op = ">" if after else ">="
    parts = [f"(partition = {int(p)} AND offset {op} {int(o)})" for p, o in sorted(low.items())]
    if low and not after:
        parts.append(f"partition NOT IN ({', '.join(str(int(p)) for p in sorted(low))})")
    if not parts:
        return "false" if after else "true"
    return "(" + " OR ".join(parts) + ")"


def _at_or_after(row: dict[str, Any], low: Offsets) -> bool:
    """What `_from(low)` selects, for a row in Python (the fresh tier's audit rows)."""
    return row["offset"] >= low.get(row["partition"], 0)


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def recorded_of(row: dict[str, Any]) -> MessagesRecorded | None:
    """A pending MessagesRecorded as its audit row holds it (None once erased)."""
    try:
        payload = json.loads(row["payload"] or "{}")
    except ValueError:
        return None
    if row["text"] is None or not payload.get("pending"):
        return None
    return MessagesRecorded(
        scope=scope_of_row(row), actor=Actor(row["actor_key_id"], row["actor_source"]),
        request_id=row["request_id"], event_id=row["event_id"],
        occurred_at=row["occurred_at"], messages=row["text"],
        source_hash=payload.get("source_hash"), pending=True,
        options=json.dumps(payload.get("options") or {}, ensure_ascii=False),
    )  # fmt: skip


def is_final(error: Exception) -> bool:
    """Whether asking again cannot help (module docstring): a refused or unusable answer of
    the LLM, or a request that no longer validates."""
    if isinstance(error, LLMUnavailableError):
        return not error.transient
    return isinstance(error, ValidationError)


def reason_of(error: Exception) -> str:
    message = getattr(error, "message", None)
    return str(message) if message else f"{type(error).__name__}: {error}"
