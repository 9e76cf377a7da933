"""Delivery records: what the dispatcher did with each event for each webhook.

Operational state, not a fact about memories: it lives in SQLite in the data directory
(`<data_dir>/webhooks/deliveries.sqlite3`), written by the dispatcher and read by the API
and the CLI, possibly from other processes (WAL mode). One row per (webhook, event): a
redelivery after a restart updates the same row, so `attempts` counts every try. The most
recent `KEEP_PER_WEBHOOK` rows of each webhook are kept.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.log.base import Position
from memstream.models import iso_ms

KEEP_PER_WEBHOOK = 10_000
PRUNE_EVERY = 1_000
STATUSES = ("pending", "succeeded", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    memory_id TEXT,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    response_status INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS deliveries_by_hook ON deliveries (webhook_id, seq);
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    event_id: str
    event_type: str
    memory_id: str | None
    position: Position
    status: str  # pending | succeeded | failed
    attempts: int
    last_error: str | None
    response_status: int | None
    created_at: int
    updated_at: int

    def to_api(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "memory_id": self.memory_id,
            "position": f"{self.position.partition}:{self.position.offset}",
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "response_status": self.response_status,
            "created_at": iso_ms(self.created_at),
            "updated_at": iso_ms(self.updated_at),
        }


class DeliveryStore:
    """The delivery records of one data directory (thread-safe; one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        self._mutex = threading.Lock()
        self._writes = 0
        with self._mutex, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # records, not facts: no fsync each
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def record(
        self,
        webhook_id: str,
        event_id: str,
        event_type: str,
        memory_id: str | None,
        position: Position,
        *,
        status: str,
        attempts_added: int,
        last_error: str | None,
        response_status: int | None,
        at: int,
    ) -> None:
        """Insert or update the (webhook, event) row; attempts accumulate across restarts."""
        with self._mutex, self._db:
            self._db.execute(
                """
                INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                    (SELECT coalesce(max(seq), 0) + 1 FROM deliveries))
                ON CONFLICT (webhook_id, event_id) DO UPDATE SET
                    status = excluded.status,
                    attempts = deliveries.attempts + excluded.attempts,
                    last_error = excluded.last_error,
                    response_status = excluded.response_status,
                    updated_at = excluded.updated_at
                """,
                (webhook_id, event_id, event_type, memory_id, position.partition,
                 position.offset, status, attempts_added, last_error, response_status, at, at),
            )  # fmt: skip
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._db.execute(
                    "DELETE FROM deliveries WHERE webhook_id = ? AND seq <= "
                    "(SELECT seq FROM deliveries WHERE webhook_id = ? ORDER BY seq DESC "
                    "LIMIT 1 OFFSET ?)",
                    (webhook_id, webhook_id, KEEP_PER_WEBHOOK),
                )

    def list(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Delivery]:
        """The webhook's deliveries, newest first."""
        where, args = "webhook_id = ?", [webhook_id]
        if status is not None:
            where += " AND status = ?"
            args.append(status)
        with self._mutex:
            rows = self._db.execute(
                "SELECT webhook_id, event_id, event_type, memory_id, partition, offset, status, "
                "attempts, last_error, response_status, created_at, updated_at FROM deliveries "
                f"WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [Delivery(r[0], r[1], r[2], r[3], Position(r[4], r[5]), *r[6:]) for r in rows]

    def counts(self, webhook_id: str) -> dict[str, int]:
        with self._mutex:
            rows = self._db.execute(
                "SELECT status, count(*) FROM deliveries WHERE webhook_id = ? GROUP BY status",
                (webhook_id,),
            ).fetchall()
        found = dict(rows)
        return {s: int(found.get(s, 0)) for s in STATUSES}
