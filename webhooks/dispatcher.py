"""The webhook dispatcher: one more consumer of the memory log, with its own positions.

Each webhook has its own cursor over the log (a consumer group `memstream-webhooks-<id>`:
Kafka's committed offsets, or the file log's progress file in `<data_dir>/log/groups/`), so a
slow or failing receiver never holds up another, and a webhook created "from" an old position
replays history to its new subscriber without touching anyone else's. A worker per webhook:

1. reads the next batch of records from its cursor, skipping other projects' records by their
   key (the scope) without decoding them;
2. decodes the rest with the subject key store (sealed texts open like the projector's; an
   erased subject's text stays closed and is sent as null);
3. POSTs every event whose Mem0 type the webhook subscribes to, one at a time in log order
   (so in order per scope, which lives in one partition), retrying a failed POST with
   exponential backoff up to `max_attempts` tries, recording each try (webhooks/deliveries.py);
4. commits its cursor after the events it passed, so a stopped dispatcher resumes after the
   last event it finished with. An event being retried when the process stops is sent again
   on restart: delivery is at least once, and `event_id` is the receiver's deduplication key.

After the last attempt an event is recorded as `failed` and the worker moves on (bounded
retries): the delivery record, the CLI and the API show it, and `memstream_webhook_deliveries
{outcome="failed"}` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memstream import metrics
from memstream.errors import MemstreamError
from memstream.events import Event, decode_event, now_ms
from memstream.keystore.base import KeyStore
from memstream.log.base import EventLog, LogRecord, Offsets, Position
from memstream.webhooks.deliveries import DeliveryStore
from memstream.webhooks.payload import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    body_of,
    mem0_type,
    payload,
    sign,
)
from memstream.webhooks.registry import Webhook, WebhookRegistry

if TYPE_CHECKING:  # httpx loads when the dispatcher runs: importing the service stays light
    import httpx

log = logging.getLogger("memstream.webhooks")

USER_AGENT = "memstream-webhooks/1"
RESTART_S = 2.0  # pause before a failed worker starts again
KEYS_REFRESH_S = 1.0  # at most this stale, an erasure stops texts from being sent
MAX_ERROR = 500

# What the projection decided an event changed nothing: a second copy of a racing add
# (DUPLICATE), an update or delete of a memory that had changed since it was decided
# (CONFLICT) or is gone (NOOP), an inference that kept nothing (NONE) or failed. A
# receiver is told of changes to memories, so these are not delivered.
UNAPPLIED = frozenset({"DUPLICATE", "CONFLICT", "NOOP", "NONE", "FAILED"})

Outcomes = Callable[[Mapping[str, Position]], Awaitable[dict[str, str]]]
"""The projection's outcome of each event (event id -> its log position), once applied."""


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    backoff_s: float = 1.0  # the wait after the first failed try; doubles per try
    max_backoff_s: float = 60.0
    timeout_s: float = 10.0  # per HTTP request
    batch: int = 100

    def delay(self, attempt: int) -> float:
        """The wait after failed try number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def _tenant_prefix(org_id: str, project_id: str) -> bytes:
    """How every message key (memstream.scope.Scope.key) of one project starts."""
    text = json.dumps([org_id, project_id], separators=(",", ":"), ensure_ascii=False)
    return text[:-1].encode() + b","


class Dispatcher:
    """Deliver memory events to every registered webhook until stopped (see module docstring)."""

    def __init__(
        self,
        log_: EventLog,
        keys: KeyStore,
        registry: WebhookRegistry,
        deliveries: DeliveryStore,
        policy: DeliveryPolicy | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        outcomes: Outcomes | None = None,
    ) -> None:
        self.log = log_
        self.keys = keys
        self.registry = registry
        self.deliveries = deliveries
        self.policy = policy or DeliveryPolicy()
        self._transport = transport
        # None: no projection here (`memstream webhooks run`): every change event is sent
        self._outcomes = outcomes
        self._keys_at = 0.0
        self._batch_at = 0.0
        self.progress: dict[str, Offsets] = {}  # webhook id -> next offsets it will read

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the registry; keep one worker per webhook; return once `stop` is set."""
        import httpx

        await self.registry.start()
        follower = asyncio.create_task(self.registry.follow(stop))
        workers: dict[str, asyncio.Task[None]] = {}
        failed_at: dict[str, float] = {}  # a worker that failed is restarted after a pause
        last_lag = 0.0
        async with httpx.AsyncClient(
            timeout=self.policy.timeout_s,
            follow_redirects=False,
            trust_env=False,  # a receiver is called directly, never through an env proxy
            transport=self._transport,
            headers={"User-Agent": USER_AGENT},
        ) as client:
            try:
                while not stop.is_set():
                    for hook in self.registry.all():
                        task = workers.get(hook.webhook_id)
                        if task is not None and task.done():
                            if not task.cancelled() and task.exception() is not None:
                                log.warning(
                                    "webhook %s: worker stopped (%r); restarting in %.0fs",
                                    hook.webhook_id,
                                    task.exception(),
                                    RESTART_S,
                                )
                                failed_at[hook.webhook_id] = time.monotonic()
                            workers.pop(hook.webhook_id)
                            task = None
                        waited = time.monotonic() - failed_at.get(hook.webhook_id, -RESTART_S)
                        if task is None and waited >= RESTART_S:
                            workers[hook.webhook_id] = asyncio.create_task(
                                self._worker(hook.webhook_id, client, stop)
                            )
                    for hook_id in [i for i, t in workers.items() if t.done()]:
                        if self.registry.current(hook_id) is None:
                            workers.pop(hook_id)
                            self.progress.pop(hook_id, None)
                            with contextlib.suppress(KeyError):
                                metrics.WEBHOOK_LAG.remove(hook_id)
                    if time.monotonic() - last_lag > 5.0:
                        last_lag = time.monotonic()
                        await self._measure_lag()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
            finally:
                stop.set()
                await asyncio.gather(*workers.values(), return_exceptions=True)
                await follower

    async def _measure_lag(self) -> None:
        if not self.progress:
            return
        try:
            end = await self.log.end_offsets()
        except MemstreamError:
            return
        for hook_id, done in list(self.progress.items()):
            behind = sum(max(0, o - done.get(p, 0)) for p, o in end.items())
            metrics.WEBHOOK_LAG.labels(hook_id).set(behind)

    async def _worker(self, hook_id: str, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        hook = self.registry.current(hook_id)
        if hook is None:
            return
        # where it stopped last; partitions it never committed start where the webhook does
        start = {**hook.start_offsets, **await self.log.committed(hook.group_id)}
        done: Offsets = dict(start)  # next offset per partition: everything before is passed
        saved: Offsets = dict(start)
        self.progress[hook_id] = done
        prefix = _tenant_prefix(hook.org_id, hook.project_id)
        reader = await self.log.reader(start, group_id=hook.group_id)
        try:
            while not stop.is_set():
                hook = self.registry.current(hook_id)
                if hook is None:
                    return  # deleted
                if not hook.is_active:  # paused: the cursor waits where it is
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                    continue
                batch = await reader.next_batch(self.policy.batch, 0.5)
                self._batch_at = time.monotonic()
                events = await self._decode_batch(hook_id, prefix, batch)
                for rec, event in zip(batch, events, strict=True):
                    if stop.is_set():
                        break
                    if event is not None and not await self._handle(
                        hook_id, event, rec, client, stop
                    ):
                        break
                    done[rec.position.partition] = rec.position.offset + 1
                if done != saved:
                    await reader.commit(dict(done))
                    saved = dict(done)
        finally:
            if done != saved:
                with contextlib.suppress(Exception):
                    await reader.commit(dict(done))
            await reader.close()

    async def _decode_batch(
        self, hook_id: str, prefix: bytes, batch: Sequence[LogRecord]
    ) -> list[Event | None]:
        """The events of `batch` this webhook is to receive (None where it is not): its
        project's, of a type it subscribes to now, and (with a projection here) changes the
        projection applied, so a receiver never hears of a memory that does not exist."""
        hook = self.registry.current(hook_id)
        if hook is None:  # deleted meanwhile: nothing is sent, the worker then returns
            return [None] * len(batch)
        events: list[Event | None] = []
        for rec in batch:
            if not rec.key.startswith(prefix):
                events.append(None)  # another project's event: never decoded
                continue
            try:
                event = await self._decode(rec)
            except Exception as exc:  # poison: the projector dead-letters it (guarantees.md)
                log.warning("webhooks: skipping the undecodable record at %d:%d: %s",
                            rec.position.partition, rec.position.offset, exc)  # fmt: skip
                events.append(None)
                continue
            kind = mem0_type(event)
            events.append(event if kind is not None and kind in hook.event_types else None)
        wanted = {e.event_id: r.position for r, e in zip(batch, events, strict=True) if e}
        if self._outcomes is None or not wanted:
            return events
        decided = await self._outcomes(wanted)
        return [None if e is None or decided.get(e.event_id) in UNAPPLIED else e for e in events]

    async def _handle(
        self,
        hook_id: str,
        event: Event,
        rec: LogRecord,
        client: httpx.AsyncClient,
        stop: asyncio.Event,
    ) -> bool:
        """Deliver `event`; False if stopped before it was finished."""
        hook = self.registry.current(hook_id)
        if hook is None:
            return False
        kind = mem0_type(event)
        assert kind is not None  # _decode_batch keeps only subscribed types
        return await self._deliver(hook, event, kind, rec.position, client, stop)

    async def _decode(self, rec: LogRecord) -> Event:
        """The event, opened with keys at most KEYS_REFRESH_S stale (an erasure destroys
        keys before it is logged, so a refresh is what stops an erased text being sent)."""
        if time.monotonic() - self._keys_at > KEYS_REFRESH_S:
            await self.keys.refresh()
            self._keys_at = time.monotonic()
        event = decode_event(rec.value, self.keys.lookup)
        if event.erased and self._keys_at < self._batch_at:
            # perhaps a key another process created since our last refresh: once per batch
            await self.keys.refresh()
            self._keys_at = time.monotonic()
            event = decode_event(rec.value, self.keys.lookup)
        return event

    async def _deliver(
        self,
        hook: Webhook,
        event: Event,
        kind: str,
        position: Position,
        client: httpx.AsyncClient,
        stop: asyncio.Event,
    ) -> bool:
        import httpx

        body = body_of(payload(event, position, hook.webhook_id))
        attempt = 0
        while True:
            attempt += 1
            hook = self.registry.current(hook.webhook_id) or hook  # the url may have changed
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(hook.secret, body),
                EVENT_ID_HEADER: event.event_id,
                EVENT_TYPE_HEADER: kind,
                WEBHOOK_ID_HEADER: hook.webhook_id,
                ATTEMPT_HEADER: str(attempt),
            }
            status: int | None = None
            started = time.perf_counter()
            try:
                response = await client.post(hook.url, content=body, headers=headers)
                status = response.status_code
                error = None if 200 <= status < 300 else f"HTTP {status}: {response.text}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            metrics.WEBHOOK_DELIVERY_SECONDS.observe(time.perf_counter() - started)
            last = attempt >= self.policy.max_attempts
            outcome = "succeeded" if error is None else "failed" if last else "retried"
            metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
            self.deliveries.record(
                hook.webhook_id, event.event_id, kind, event.memory_id, position,
                status="pending" if outcome == "retried" else outcome, attempts_added=1,
                last_error=error[:MAX_ERROR] if error else None, response_status=status,
                at=now_ms(),
            )  # fmt: skip
            if outcome != "retried":
                if outcome == "failed":
                    log.warning(
                        "webhook %s: gave up on event %s after %d attempts: %s",
                        hook.webhook_id, event.event_id, attempt, error,
                    )  # fmt: skip
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.delay(attempt))
            if stop.is_set():
                return False
            if self.registry.current(hook.webhook_id) is None:
                return False  # deleted while we were retrying
