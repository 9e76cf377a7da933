"""A one-shot `add` without LanceDB: the CLI's `memstream add` when no server is running.

Why (issue 16, section 7): an add must be durable in the log and, as the CLI promises (it
waits unless `--no-wait`), applied by the projector before it answers, with the projector's
decision (ADD, or NONE for an exact duplicate). `Memstream` gets there by importing
LanceDB (~1 s of CPU) and opening everything a server needs. This module runs the same
writer (`MemoryWriter.add`: validation, sealing, the append, the wait) and the same
projector (`Projector`: the decision in log order, the rows, the checkpoint, maintenance)
on the tables through `lance` alone (projector/lance_tables.py), so the log, the tables and
the answer are those of the full path.

It goes only where it can finish alone, else it answers None before anything is appended
and the caller opens `Memstream`:

- the live generation is current (memstream/light_reads.py, `open_current`: the file log,
  the current format and embedder, the log's end applied, no erasure to complete), not
  pinned, and its `memories` and `events` tables and the embedding cache exist (the
  facade does not create tables);
- the projector applies only this process's own events, and only while they are next in
  the log (`OwnAdds`): events another process appended first are applied by whoever
  opens the full path (an erasure, a retention policy, anything).

If anything goes wrong after the append (another process's events got in first, an error
while applying), the events are durable and must not be added again: `AddHandedOff`
carries their positions, and `Memstream.add_results` waits for them and reads the
decisions the full path's projector made (crash-safe: a half-applied batch is re-applied as
a no-op, projector/projector.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memstream.embedders.base import Embedder
from memstream.events import Actor
from memstream.log.base import EventLog, LogRecord, Offsets, Position
from memstream.models import Tenant, WriteResult
from memstream.producers.writer import MemoryWriter
from memstream.projector.lance_tables import LanceConnection
from memstream.projector.projector import Projector
from memstream.query.reader import MemoryReader
from memstream.settings import Settings

__all__ = ["AddHandedOff", "NotOwn", "OwnAdds", "light_add"]


class AddHandedOff(Exception):
    """The add's events are in the log but this process could not apply them: the full path
    finishes (`Memstream.add_results(positions)`)."""

    def __init__(self, positions: list[Position]) -> None:
        super().__init__(f"{len(positions)} appended event(s) handed to the full path")
        self.positions = positions


class NotOwn(Exception):
    """The next unapplied event in the log is not one this process appended."""


class OwnAdds(Projector):
    """A projector on `lance` alone that applies only what this process appended, while it
    is next in the log: one batch of the process's own adds (the next step, here or in any
    process, applies what follows)."""

    def __init__(
        self, data_dir: Path, log: EventLog, embedder: Embedder, settings: Settings
    ) -> None:
        super().__init__(
            data_dir, log, embedder, connect=LanceConnection,
            keep_versions=dt.timedelta(seconds=settings.keep_versions_s),  # as Memstream's
            tier_rows=0,  # one batch, then the process exits: no fresh tier (projector/tier.py)
        )  # fmt: skip
        self.own: set[tuple[int, int]] = set()

    def note_appended(self, positions: Sequence[Position]) -> None:
        super().note_appended(positions)
        self.own.update((p.partition, p.offset) for p in positions)

    def _admit(self, records: list[LogRecord], checkpoint: Offsets) -> list[LogRecord]:
        if not records:  # another process applied everything meanwhile (a server's projector)
            return records
        n = 0
        for record in records:
            if (record.position.partition, record.position.offset) not in self.own:
                break
            n += 1
        if n == 0:
            raise NotOwn(f"the log's next unapplied event is at {records[0].position}")
        return records[:n]


def _tables_exist(data_dir: Path, generation: Path, embedder_name: str) -> bool:
    cache = "embeddings_" + "".join(c if c.isalnum() else "_" for c in embedder_name)
    return all(
        path.is_dir()
        for path in (
            generation / "lance" / "memories.lance",
            generation / "lance" / "events.lance",
            data_dir / "cache" / f"{cache}.lance",
        )
    )


async def light_add(settings: Settings, messages: Any, **kwargs: Any) -> list[WriteResult] | None:
    """`Memstream.add(messages, **kwargs)` (no inference) through `lance` alone, or None when
    it did not start (nothing appended: ask `Memstream`). Raises AddHandedOff once its
    events are appended but not applied here. kwargs: MemoryWriter.add's."""
    from memstream.light_reads import open_current

    projector: OwnAdds | None = None
    try:
        current = await open_current(settings)
        if current is None or current.meta.pinned is not None:
            return None
        data_dir = Path(settings.data_dir)
        if not _tables_exist(data_dir, current.snapshot.path, current.embedder.name):
            return None
        projector = OwnAdds(data_dir, current.log, current.embedder, settings)
        writer = MemoryWriter(current.log, projector, MemoryReader(projector), settings.limits)
        await current.log.start()
        await projector.keys.start()
        tenant = Tenant(settings.org_id, settings.project_id)
        return await writer.add(tenant, messages, actor=Actor(source="cli"), **kwargs)
    except Exception as exc:
        if projector is not None and projector.own:  # durable: never append them again
            raise AddHandedOff([Position(p, o) for p, o in sorted(projector.own)]) from exc
        return None
    finally:
        if projector is not None:
            await projector.close()
            await projector.keys.close()
            await projector.log.close()
