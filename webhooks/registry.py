"""Webhook registrations: events on a small log of their own, projected into memory.

Like API keys (memstream.keys), webhooks are state, so every change is first an event
(`WebhookCreated`, `WebhookUpdated`, `WebhookDeleted`, schemas/memstream.Webhook*.avsc) on
a log beside the memory log:

- embedded: a file log in `<data_dir>/webhooks/log/`;
- Kafka: the topic `<topic>.webhooks` (one partition), next to the memory topic.

The registration carries the signing secret (the dispatcher needs it to sign each delivery),
so it is kept off the memory topic: whoever reads memories for analytics never sees it. The
registry is rebuilt from offset 0 whenever a process starts (it is tiny) and then follows
the log, so a webhook created or deleted from any process reaches every dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from memstream.errors import LogUnavailableError, MemstreamError, NotFoundError, ValidationError
from memstream.events import EPOCH, Actor, codec, new_id, now_ms
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets
from memstream.models import Tenant, iso_ms
from memstream.settings import Settings

log = logging.getLogger("memstream.webhooks")

WEBHOOK_CREATED = "memstream.WebhookCreated"
WEBHOOK_UPDATED = "memstream.WebhookUpdated"
WEBHOOK_DELETED = "memstream.WebhookDeleted"
MAX_NAME = 200
MAX_URL = 2000

# The Mem0 platform's event types. The first three (and memstream's own memory_expire and
# subject_erase) are delivered; the platform's categorize and ingest-job types are accepted so
# that a registration written for the platform works unchanged, but memstream has no such events.
DELIVERED_TYPES = ("memory_add", "memory_update", "memory_delete", "memory_expire", "subject_erase")
ACCEPTED_TYPES = (
    *DELIVERED_TYPES,
    "memory_categorize",
    "ingest_job_completed",
    "ingest_job_partially_completed",
    "ingest_job_failed",
    "ingest_job_cancelled",
)


@dataclass(frozen=True, slots=True)
class Webhook:
    """One registration, as the webhooks log says it is now."""

    webhook_id: str
    org_id: str
    project_id: str
    name: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    start_offsets: Offsets
    created_at: int
    updated_at: int
    owner: str | None = None  # the API key id that created it
    is_active: bool = True

    @property
    def tenant(self) -> Tenant:
        return Tenant(self.org_id, self.project_id)

    @property
    def group_id(self) -> str:
        """The consumer group (file log: the progress file) of this webhook's deliveries."""
        return f"memstream-webhooks-{self.webhook_id}"

    def to_api(self) -> dict[str, Any]:
        """The Mem0 webhook object (never the secret), plus where delivery started."""
        return {
            "webhook_id": self.webhook_id,
            "name": self.name,
            "url": self.url,
            "event_types": list(self.event_types),
            "owner": self.owner,
            "is_active": self.is_active,
            "project": self.project_id,
            "org_id": self.org_id,
            "created_at": iso_ms(self.created_at),
            "updated_at": iso_ms(self.updated_at),
            "start_position": format_offsets(self.start_offsets),
        }


def webhooks_log(settings: Settings) -> EventLog:
    """The log that holds webhook events for these settings (see the module docstring)."""
    if settings.kafka_bootstrap:
        from memstream.log.kafka import KafkaEventLog

        return KafkaEventLog(
            settings.kafka_bootstrap, topic=f"{settings.topic}.webhooks", partitions=1
        )
    from memstream.log.file import FileEventLog

    return FileEventLog(settings.data_dir / "webhooks" / "log")


def format_offsets(offsets: Offsets) -> str:
    """`0:12,1:40`, the notation `--as-of` and `memstream log --from` use."""
    return ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


def parse_start(value: Any) -> Offsets | None:
    """A webhook's starting point: None for "now" (the log's end when it is created);
    "earliest"/"beginning" for the whole history; an offset (partition 0) or "p:o[,p:o]" for
    a position (partitions not named start at their beginning)."""
    if value is None or value == "now":
        return None
    if value in ("earliest", "beginning"):
        return {}
    if isinstance(value, bool):
        raise ValidationError("start: 'now', 'earliest', an offset or 'partition:offset,...'")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("start: 'now', 'earliest', an offset or 'partition:offset,...'")
    out: Offsets = {}
    for part in value.split(","):
        p, sep, o = part.strip().rpartition(":")
        try:
            partition, offset = (int(p), int(o)) if sep else (0, int(o))
        except ValueError:
            raise ValidationError(
                f"start: {part.strip()!r} is not an offset or 'partition:offset'"
            ) from None
        if partition < 0 or offset < 0:
            raise ValidationError(f"start: {part.strip()!r} must not be negative")
        out[partition] = offset
    return out


def check_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > MAX_NAME
        or any(ord(c) < 32 for c in name)
    ):
        raise ValidationError(f"name: must be 1..{MAX_NAME} printable characters")
    return name


def check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("url: an http:// or https:// URL is required")
    if len(url) > MAX_URL:
        raise ValidationError(f"url: longer than {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"url: {url!r} is not an http:// or https:// URL with a host")
    return url


def check_event_types(event_types: Any) -> tuple[str, ...]:
    if not isinstance(event_types, list | tuple) or not event_types:
        raise ValidationError(f"event_types: a non-empty list of {', '.join(ACCEPTED_TYPES)}")
    unknown = [t for t in event_types if t not in ACCEPTED_TYPES]
    if unknown:
        raise ValidationError(
            f"event_types: unknown {unknown!r}; known are {', '.join(ACCEPTED_TYPES)}"
        )
    return tuple(dict.fromkeys(event_types))


def _covers(have: Offsets, need: Offsets) -> bool:
    return all(have.get(p, 0) >= o for p, o in need.items())


def _ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def _actor(actor: Actor | None) -> dict[str, Any]:
    who = actor or Actor()
    return {"key_id": who.key_id, "source": who.source}


class WebhookRegistry:
    """Create, change, delete and look up webhooks; an in-memory projection of their log."""

    def __init__(self, log_: EventLog) -> None:
        self.log = log_
        self._hooks: dict[str, Webhook] = {}
        self._next: Offsets = {}
        self._reader: LogReader | None = None
        self._lock = asyncio.Lock()
        self._started = False

    async def start(self) -> WebhookRegistry:
        if not self._started:
            await self.log.start()
            self._started = True
            await self.refresh()
        return self

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        if self._started:
            self._started = False
            await self.log.close()

    # -- following the log ---------------------------------------------------------------
    def _apply(self, records: Iterable[LogRecord]) -> None:
        for rec in records:
            p = rec.position.partition
            self._next[p] = max(self._next.get(p, 0), rec.position.offset + 1)
            name, r = codec().decode(rec.value, logical=False)
            at = _ms(r["occurred_at"])
            if name == WEBHOOK_CREATED:
                self._hooks.setdefault(
                    r["webhook_id"],
                    Webhook(
                        webhook_id=r["webhook_id"], org_id=r["org_id"],
                        project_id=r["project_id"], name=r["name"], url=r["url"],
                        event_types=tuple(r["event_types"]), secret=r["secret"],
                        start_offsets={int(k): int(v) for k, v in r["start_offsets"].items()},
                        created_at=at, updated_at=at, owner=r["actor"]["key_id"],
                    ),
                )  # fmt: skip
            elif name == WEBHOOK_UPDATED:
                hook = self._hooks.get(r["webhook_id"])
                if hook is None:
                    continue
                changes: dict[str, Any] = {"updated_at": at}
                for field in ("name", "url", "is_active"):
                    if r.get(field) is not None:
                        changes[field] = r[field]
                if r.get("event_types") is not None:
                    changes["event_types"] = tuple(r["event_types"])
                self._hooks[hook.webhook_id] = replace(hook, **changes)
            elif name == WEBHOOK_DELETED:
                self._hooks.pop(r["webhook_id"], None)
            else:
                log.warning("ignoring %s at %s in the webhooks log", name, rec.position)

    async def _read(self, timeout_s: float) -> list[LogRecord]:
        if self._reader is None:
            self._reader = await self.log.reader(dict(self._next))
        batch = await self._reader.next_batch(1000, timeout_s)
        self._apply(batch)
        return batch

    async def refresh(self, timeout_s: float = 15.0) -> None:
        """Apply every webhook event appended so far (by any process)."""
        await self.start()
        async with self._lock:
            end = await self.log.end_offsets()
            deadline = time.monotonic() + timeout_s
            while not _covers(self._next, end):
                if time.monotonic() > deadline:
                    raise LogUnavailableError(
                        "the webhooks log could not be read up to its end in time"
                    )
                await self._read(0.2)

    async def follow(self, stop: asyncio.Event, interval_s: float = 0.2) -> None:
        """Keep applying new webhook events until `stop` is set (the dispatcher's task)."""
        while not stop.is_set():
            try:
                async with self._lock:
                    await self._read(0.0)
            except MemstreamError as exc:
                log.warning("webhooks log: %s (retrying)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # -- reading -------------------------------------------------------------------------
    def all(self) -> list[Webhook]:
        return sorted(self._hooks.values(), key=lambda h: (h.created_at, h.webhook_id))

    def current(self, webhook_id: str) -> Webhook | None:
        return self._hooks.get(webhook_id)

    def of(self, tenant: Tenant) -> list[Webhook]:
        return [h for h in self.all() if h.tenant == tenant]

    async def get(self, tenant: Tenant, webhook_id: str) -> Webhook:
        """The tenant's webhook, or NotFoundError (also for another project's: ids do not leak)."""
        await self.refresh()
        hook = self._hooks.get(webhook_id)
        if hook is None or hook.tenant != tenant:
            raise NotFoundError("Webhook not found")
        return hook

    # -- writing -------------------------------------------------------------------------
    async def create(
        self,
        tenant: Tenant,
        *,
        name: Any,
        url: Any,
        event_types: Any,
        start_offsets: Offsets,
        actor: Actor | None = None,
    ) -> Webhook:
        """Register a webhook; the returned value holds the secret (shown to the caller once)."""
        record = {
            "event_id": new_id(),
            "occurred_at": now_ms(),
            "webhook_id": f"wh_{secrets.token_hex(8)}",
            "org_id": tenant.org_id,
            "project_id": tenant.project_id,
            "name": check_name(name),
            "url": check_url(url),
            "event_types": list(check_event_types(event_types)),
            "secret": f"whsec_{secrets.token_urlsafe(32)}",
            "start_offsets": {str(p): int(o) for p, o in start_offsets.items()},
            "actor": _actor(actor),
        }
        await self._append(WEBHOOK_CREATED, record, tenant)
        await self.refresh()
        return self._hooks[str(record["webhook_id"])]

    async def update(
        self,
        tenant: Tenant,
        webhook_id: str,
        *,
        name: Any = None,
        url: Any = None,
        event_types: Any = None,
        is_active: Any = None,
        actor: Actor | None = None,
    ) -> Webhook:
        hook = await self.get(tenant, webhook_id)
        if is_active is not None and not isinstance(is_active, bool):
            raise ValidationError("is_active: must be true or false")
        record = {
            "event_id": new_id(),
            "occurred_at": now_ms(),
            "webhook_id": hook.webhook_id,
            "name": check_name(name) if name is not None else None,
            "url": check_url(url) if url is not None else None,
            "event_types": list(check_event_types(event_types))
            if event_types is not None
            else None,
            "is_active": is_active,
            "actor": _actor(actor),
        }
        if all(record[f] is None for f in ("name", "url", "event_types", "is_active")):
            raise ValidationError("nothing to update: give name, url, event_types or is_active")
        await self._append(WEBHOOK_UPDATED, record, tenant)
        await self.refresh()
        return self._hooks[hook.webhook_id]

    async def delete(self, tenant: Tenant, webhook_id: str, *, actor: Actor | None = None) -> None:
        hook = await self.get(tenant, webhook_id)
        record = {
            "event_id": new_id(),
            "occurred_at": now_ms(),
            "webhook_id": hook.webhook_id,
            "actor": _actor(actor),
        }
        await self._append(WEBHOOK_DELETED, record, tenant)
        await self.refresh()

    async def _append(self, name: str, record: dict[str, Any], tenant: Tenant) -> None:
        await self.start()
        key = json.dumps([tenant.org_id, tenant.project_id], separators=(",", ":")).encode()
        await self.log.append([(key, codec().encode(name, record))])
