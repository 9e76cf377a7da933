"""The log itself, event by event, as an operator inspects it (`memstream log`).

Nothing here reads a projection: each message is decoded from the log and opened with the
subject keys that still exist. An event whose key was destroyed (an erased subject) shows
its who/when/what-kind and `"erased": true`, never its content.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from memstream.events import Event, KeyLookup, decode_event, to_record
from memstream.log.base import QUARANTINE_HEADER, EventLog, LogRecord, Offsets
from memstream.service import Memstream


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def describe(event: Event, record: LogRecord) -> dict[str, Any]:
    body = to_record(event)
    if event.erased:
        for name in event.SEALED:
            body.pop(name, None)
    scope = body.pop("scope")
    return {
        "position": f"{record.position.partition}:{record.position.offset}",
        "event_type": event.event_type,
        "occurred_at": iso(event.occurred_at),
        **{k: v for k, v in scope.items() if v is not None},
        **{k: v for k, v in body.items() if k not in ("occurred_at",)},
        "erased": event.erased,
    }


async def read_log(log: EventLog, start: Offsets, limit: int | None) -> list[LogRecord]:
    """Records from `start` (per partition) to the end of the log, at most `limit`."""
    end = await log.end_offsets()
    remaining = sum(max(0, o - start.get(p, 0)) for p, o in end.items())
    want = remaining if limit is None else min(limit, remaining)
    reader = await log.reader(start)
    records: list[LogRecord] = []
    try:
        while len(records) < want:
            batch = await reader.next_batch(min(1000, want - len(records)), timeout_s=1.0)
            records.extend(r for r in batch if r.position.offset < end.get(r.position.partition, 0))
            if not batch:
                break
    finally:
        await reader.close()
    records.sort(key=lambda r: (r.timestamp_ms, r.position.partition, r.position.offset))
    return records[:want]


def describe_quarantined(record: LogRecord) -> dict[str, Any]:
    """A marker that `memstream log repair` left where it removed damaged bytes."""
    detail = json.loads(dict(record.headers)[QUARANTINE_HEADER])
    return {
        "position": f"{record.position.partition}:{record.position.offset}",
        "event_type": "Quarantined",
        "occurred_at": iso(record.timestamp_ms),
        "reason": f"{detail.get('bytes')} damaged bytes ({detail.get('reason')}) moved to "
        f"{detail.get('side_file')}",
        "erased": False,
    }


def describe_one(record: LogRecord, lookup: KeyLookup) -> dict[str, Any]:
    """One record as `memstream log` shows it; a record that does not decode (a poison
    record, which the projector dead-letters) is shown as such, not as an error."""
    if any(h == QUARANTINE_HEADER for h, _ in record.headers):
        return describe_quarantined(record)
    try:
        return describe(decode_event(record.value, lookup), record)
    except Exception as exc:  # SchemaError, a body fastavro rejects, a seal that fails
        return {
            "position": f"{record.position.partition}:{record.position.offset}",
            "event_type": "Undecodable",
            "occurred_at": iso(record.timestamp_ms),
            "reason": str(exc) or type(exc).__name__,
            "erased": False,
        }


async def dump(ms: Memstream, start: Offsets, limit: int | None) -> list[dict[str, Any]]:
    await ms.subject_keys.refresh()
    records = await read_log(ms.log, start, limit)
    return [describe_one(r, ms.subject_keys.lookup) for r in records]
