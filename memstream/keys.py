"""API keys: who may call the REST server, and for which org and project.

Keys are events, like everything else that changes state (DESIGN: "key/project changes are
events"). `KeyCreated` and `KeyRevoked` (schemas/memstream.Key*.avsc, Avro single-object
encoding like the memory events) go to a small log of their own beside the memory log:

- embedded: a file log in `<data_dir>/keys/`;
- Kafka: the topic `<topic>.keys` (one partition), next to the memory topic.

A separate log keeps credentials out of the memory topic (whoever reads memories for
analytics never sees key hashes), keeps memory replay free of key events, and lets every
server that shares a Kafka topic share its keys too. The registry is a projection of that
log held in memory: a server reads it from offset 0 when it starts (it is tiny) and then
follows it, so a key created or revoked from any process takes effect on every server
within a fraction of a second; a key the server has not seen yet triggers a catch-up
before it is refused, so a freshly created key works at once.

A key reads `msk_<key_id>_<secret>`: `key_id` (16 hex digits) is public and names the key in
`keys list` / `keys revoke` and in every event's actor; `secret` is 32 random bytes, shown
once, and only its sha256 is recorded. With 256 bits of entropy a plain hash is sound (a
slow password hash protects guessable secrets, which these are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from memstream.errors import (
    AuthError,
    LogUnavailableError,
    MemstreamError,
    NotFoundError,
    ValidationError,
)
from memstream.events import EPOCH, Actor, codec, new_id, now_ms
from memstream.log.base import EventLog, LogReader, LogRecord, Offsets
from memstream.models import Tenant, iso_ms
from memstream.scope import normalise_id
from memstream.settings import Settings

log = logging.getLogger("memstream.keys")

KEY_PREFIX = "msk"
MAX_NAME = 200
KEY_CREATED = "memstream.KeyCreated"
KEY_REVOKED = "memstream.KeyRevoked"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One issued key, as the keys log says it is now (never holds the secret)."""

    key_id: str
    org_id: str
    project_id: str
    name: str | None
    secret_sha256: str
    created_at: int
    revoked_at: int | None = None

    @property
    def tenant(self) -> Tenant:
        return Tenant(self.org_id, self.project_id)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_public(self) -> dict[str, Any]:
        """What `keys list --json` prints: everything but the hash."""
        return {
            "key_id": self.key_id,
            "org_id": self.org_id,
            "project_id": self.project_id,
            "name": self.name,
            "created_at": iso_ms(self.created_at),
            "revoked_at": iso_ms(self.revoked_at),
            "active": self.active,
        }


def keys_log(settings: Settings) -> EventLog:
    """The log that holds key events for these settings (see the module docstring)."""
    if settings.kafka_bootstrap:
        from memstream.log.kafka import KafkaEventLog

        return KafkaEventLog(settings.kafka_bootstrap, topic=f"{settings.topic}.keys", partitions=1)
    from memstream.log.file import FileEventLog

    return FileEventLog(settings.data_dir / "keys")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key_id, secret = parts[1], parts[2]
    if len(key_id) != 16 or any(c not in "0123456789abcdef" for c in key_id) or not secret:
        return None
    return key_id, secret


def _covers(have: Offsets, need: Offsets) -> bool:
    return all(have.get(p, 0) >= o for p, o in need.items())


class KeyRegistry:
    """Issue, revoke and check API keys; an in-memory projection of the keys log."""

    def __init__(self, log_: EventLog) -> None:
        self.log = log_
        self._keys: dict[str, ApiKey] = {}
        self._next: Offsets = {}
        self._reader: LogReader | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRegistry:
        return cls(keys_log(settings))

    async def start(self) -> KeyRegistry:
        await self.log.start()
        await self.refresh()
        return self

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()
        await self.log.close()

    async def __aenter__(self) -> KeyRegistry:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- following the log ---------------------------------------------------------------
    def _apply(self, records: list[LogRecord]) -> None:
        for rec in records:
            p = rec.position.partition
            self._next[p] = max(self._next.get(p, 0), rec.position.offset + 1)
            name, r = codec().decode(rec.value)
            if name == KEY_CREATED:
                self._keys.setdefault(
                    r["key_id"],
                    ApiKey(r["key_id"], r["org_id"], r["project_id"], r["name"], r["secret_sha256"],
                           _ms(r["occurred_at"])),
                )  # fmt: skip
            elif name == KEY_REVOKED:
                key = self._keys.get(r["key_id"])
                if key is not None and key.revoked_at is None:
                    self._keys[key.key_id] = replace(key, revoked_at=_ms(r["occurred_at"]))
            else:
                log.warning("ignoring %s at %s in the keys log", name, rec.position)

    async def _read(self, timeout_s: float) -> list[LogRecord]:
        if self._reader is None:
            self._reader = await self.log.reader(dict(self._next))
        batch = await self._reader.next_batch(1000, timeout_s)
        self._apply(batch)
        return batch

    async def refresh(self, timeout_s: float = 15.0) -> None:
        """Apply every key event appended so far (by any process)."""
        async with self._lock:
            end = await self.log.end_offsets()
            deadline = time.monotonic() + timeout_s
            while not _covers(self._next, end):
                if time.monotonic() > deadline:
                    raise LogUnavailableError(
                        "the keys log could not be read up to its end in time"
                    )
                await self._read(0.2)

    async def follow(self, stop: asyncio.Event, interval_s: float = 0.2) -> None:
        """Keep applying new key events until `stop` is set (a server's background task)."""
        while not stop.is_set():
            try:
                async with self._lock:
                    await self._read(0.0)
            except MemstreamError as exc:
                log.warning("keys log: %s (retrying)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # -- reading -------------------------------------------------------------------------
    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def list(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    async def authenticate(self, token: str) -> ApiKey:
        """The active key `token` is, or AuthError (the same message for unknown and malformed)."""
        parsed = parse_key(token)
        if parsed is None:
            raise AuthError("Invalid API key.")
        key_id, secret = parsed
        key = self._keys.get(key_id)
        if key is None:
            await self.refresh()  # created a moment ago by another process?
            key = self._keys.get(key_id)
        if key is None or not hmac.compare_digest(key.secret_sha256, hash_secret(secret)):
            raise AuthError("Invalid API key.")
        if not key.active:
            raise AuthError("API key has been revoked.")
        return key

    # -- writing -------------------------------------------------------------------------
    async def create(
        self, org_id: str, project_id: str, name: str | None = None, *, actor: Actor | None = None
    ) -> tuple[ApiKey, str]:
        """Issue a key; returns it and the plaintext key, which is not stored anywhere."""
        org = normalise_id("org_id", org_id)
        project = normalise_id("project_id", project_id)
        if org is None or project is None:
            raise ValidationError("org_id and project_id are required")
        if name is not None and (
            not name.strip() or len(name) > MAX_NAME or any(ord(c) < 32 for c in name)
        ):
            raise ValidationError(f"name: must be 1..{MAX_NAME} printable characters")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        who = actor or Actor()
        record = {
            "event_id": new_id(), "occurred_at": now_ms(), "key_id": key_id, "org_id": org,
            "project_id": project, "name": name, "secret_sha256": hash_secret(secret),
            "actor": {"key_id": who.key_id, "source": who.source},
        }  # fmt: skip
        await self._append(KEY_CREATED, record, org, project)
        await self.refresh()
        return self._keys[key_id], f"{KEY_PREFIX}_{key_id}_{secret}"

    async def revoke(self, key_id: str, *, actor: Actor | None = None) -> ApiKey:
        """Revoke a key by its id (idempotent). NotFoundError for an unknown id."""
        await self.refresh()
        key = self._keys.get(key_id)
        if key is None:
            raise NotFoundError(f"no such key: {key_id}")
        if key.active:
            who = actor or Actor()
            record = {
                "event_id": new_id(), "occurred_at": now_ms(), "key_id": key_id,
                "actor": {"key_id": who.key_id, "source": who.source},
            }  # fmt: skip
            await self._append(KEY_REVOKED, record, key.org_id, key.project_id)
            await self.refresh()
        return self._keys[key_id]

    async def _append(self, name: str, record: dict[str, Any], org: str, project: str) -> None:
        key = json.dumps([org, project], separators=(",", ":")).encode()
        await self.log.append([(key, codec().encode(name, record))])


def _ms(value: Any) -> int:
    """occurred_at as ms (fastavro decodes timestamp-millis to an aware datetime)."""
    if isinstance(value, int):
        return value
    return (value - EPOCH) // dt.timedelta(milliseconds=1)
