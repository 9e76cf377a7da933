"""`Webhooks`: the registry, the delivery records and the dispatcher of one deployment.

The service (memstream.service) holds one; the REST face and the CLI reach webhooks only
through it. It needs the memory log and the subject key store already started (the
dispatcher reads and opens events with them) and opens the webhooks log itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from typing import Any

from memstream.errors import ValidationError
from memstream.events import Actor
from memstream.keystore.base import KeyStore
from memstream.log.base import EventLog, Offsets
from memstream.models import Tenant
from memstream.settings import Settings
from memstream.webhooks.deliveries import STATUSES, Delivery, DeliveryStore
from memstream.webhooks.dispatcher import DeliveryPolicy, Dispatcher, Outcomes
from memstream.webhooks.registry import (
    Webhook,
    WebhookRegistry,
    format_offsets,
    parse_start,
    webhooks_log,
)

log = logging.getLogger("memstream.webhooks")

MAX_PAGE = 1000


class Webhooks:
    def __init__(
        self,
        settings: Settings,
        memory_log: EventLog,
        keys: KeyStore,
        outcomes: Outcomes | None = None,
    ) -> None:
        """`outcomes`: the projection's decisions (the service's), so that only changes it
        applied are delivered; without one (`memstream webhooks run`, no projection) every
        change event in the log is (docs/webhooks.md)."""
        self.settings = settings
        self.memory_log = memory_log
        self.keys = keys
        self.outcomes = outcomes
        self.dir = settings.data_dir / "webhooks"
        self.registry = WebhookRegistry(webhooks_log(settings))
        self._deliveries: DeliveryStore | None = None

    @property
    def deliveries(self) -> DeliveryStore:
        if self._deliveries is None:
            self._deliveries = DeliveryStore(self.dir / "deliveries.sqlite3")
        return self._deliveries

    def policy(self) -> DeliveryPolicy:
        s = self.settings
        return DeliveryPolicy(
            max_attempts=max(1, s.webhook_max_attempts),
            backoff_s=max(0.0, s.webhook_backoff_s),
            timeout_s=s.webhook_timeout_s,
        )

    async def start(self) -> Webhooks:
        await self.registry.start()
        return self

    async def close(self) -> None:
        await self.registry.close()
        if self._deliveries is not None:
            self._deliveries.close()
            self._deliveries = None

    # -- registrations -------------------------------------------------------------------
    async def _start_offsets(self, start: Any) -> Offsets:
        end = await self.memory_log.end_offsets()
        wanted = parse_start(start)
        if wanted is None:
            return end
        for partition, offset in wanted.items():
            if partition not in end:
                raise ValidationError(
                    f"start: the log has no partition {partition} (it has {sorted(end)})"
                )
            if offset > end[partition]:
                raise ValidationError(
                    f"start: {partition}:{offset} is past the log's end "
                    f"({format_offsets({partition: end[partition]})})"
                )
        return {p: wanted.get(p, 0) for p in end}

    async def create(
        self,
        tenant: Tenant,
        *,
        name: Any,
        url: Any,
        event_types: Any,
        start: Any = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Register a webhook. The answer holds its signing `secret`, which is never shown
        again. `start`: "now" (default), "earliest", or a log position to replay from."""
        await self.start()
        offsets = await self._start_offsets(start)
        hook = await self.registry.create(
            tenant, name=name, url=url, event_types=event_types, start_offsets=offsets,
            actor=actor,
        )  # fmt: skip
        return {**hook.to_api(), "secret": hook.secret}

    async def all(self, tenant: Tenant) -> list[dict[str, Any]]:
        await self.start()
        await self.registry.refresh()
        return [self._describe(h) for h in self.registry.of(tenant)]

    async def get(self, tenant: Tenant, webhook_id: str) -> dict[str, Any]:
        await self.start()
        return self._describe(await self.registry.get(tenant, webhook_id))

    def _describe(self, hook: Webhook) -> dict[str, Any]:
        return {**hook.to_api(), "deliveries": self.deliveries.counts(hook.webhook_id)}

    async def update(
        self, tenant: Tenant, webhook_id: str, *, actor: Actor | None = None, **changes: Any
    ) -> dict[str, Any]:
        await self.start()
        hook = await self.registry.update(tenant, webhook_id, actor=actor, **changes)
        return hook.to_api()

    async def delete(self, tenant: Tenant, webhook_id: str, *, actor: Actor | None = None) -> None:
        await self.start()
        await self.registry.delete(tenant, webhook_id, actor=actor)

    async def delivery_log(
        self,
        tenant: Tenant,
        webhook_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Delivery]:
        """The webhook's delivery records, newest first (this data directory's dispatcher)."""
        await self.start()
        await self.registry.get(tenant, webhook_id)
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status: one of {', '.join(STATUSES)}, not {status!r}")
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit: between 1 and {MAX_PAGE}")
        if offset < 0:
            raise ValidationError("offset: must not be negative")
        return self.deliveries.list(webhook_id, status=status, limit=limit, offset=offset)

    # -- dispatching ---------------------------------------------------------------------
    async def dispatch(self, stop: asyncio.Event, policy: DeliveryPolicy | None = None) -> None:
        """Run the dispatcher until `stop` is set. One dispatcher per data directory: a
        second one (a `memstream webhooks run` beside `serve`) stands by until the first
        stops, so two never deliver the same events side by side."""
        await self.start()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "dispatcher.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waiting_logged = False
            while not stop.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting_logged:
                        log.info("another webhook dispatcher runs on %s: standing by", self.dir)
                        waiting_logged = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return
            dispatcher = Dispatcher(
                self.memory_log, self.keys, self.registry, self.deliveries,
                policy or self.policy(), outcomes=self.outcomes,
            )  # fmt: skip
            await dispatcher.run(stop)
        finally:
            os.close(fd)  # releases the lock
