"""What a `SubjectErased` does to derived data: remove it, and make sure the bytes are gone.

The log keeps the erased subject's events, sealed under keys that no longer exist. The
projections are another matter: they hold plaintext (rows, audit rows, vectors, stored
exports), so on an erasure the projector deletes the subject's memories, scrubs the content
of its audit rows (keeping who/when/what-kind, so the audit still shows that something
existed and was erased), forgets the texts' cached embeddings and deletes stored exports
that contain the subject. Lance deletes and updates only mark rows; `purge` rewrites every
fragment that has any marked row and drops the old versions at once, so no file under the
data directory still holds an erased text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.events import SubjectErased, text_hash
from memstream.keystore.base import Subject
from memstream.log.base import Offsets
from memstream.projector.apply import ERASED_PAYLOAD
from memstream.projector.store import EmbeddingCache, Generation
from memstream.scope import ENTITY_FIELDS
from memstream.sqlutil import sql_in, sql_str

log = logging.getLogger("memstream.projector")

SCRUBBED_COLUMNS = ("text", "old_text", "metadata", "old_metadata", "categories")


@dataclass(frozen=True, slots=True)
class ScrubStats:
    memories: int
    audit_rows: int
    cached_vectors: int
    exports: int


def subject_where(subject: Subject) -> str:
    """Rows owned by `subject`: its id in its field, and no more personal entity named
    (a memory with a user_id belongs to the user, not to its agent)."""
    parts = [f"org_id = {sql_str(subject.org_id)}", f"project_id = {sql_str(subject.project_id)}"]
    for name in ENTITY_FIELDS:
        if name == subject.field:
            parts.append(f"{name} = {sql_str(subject.value)}")
            break
        parts.append(f"{name} IS NULL")
    return " AND ".join(parts)


def _covered(event: SubjectErased, time_column: str) -> str:
    """Sealed under a destroyed key, or plaintext written before the erasure."""
    return (
        f"({sql_in('key_id', event.key_ids)} "
        f"OR (key_id IS NULL AND {time_column} <= {int(event.occurred_at)}))"
    )


def scrub(
    gen: Generation, cache: EmbeddingCache, data_dir: Path, event: SubjectErased
) -> ScrubStats:
    subject = event.subject()
    who = subject_where(subject)
    mem_where = f"{who} AND {_covered(event, 'created_at')}"
    ev_where = f"{who} AND event_type != 'SubjectErased' AND {_covered(event, 'occurred_at')}"
    texts: set[str] = set()
    memories = gen.memories()
    n_memories = 0
    if memories is not None:
        rows = gen.query_memories(mem_where, columns=["id", "text"])
        texts.update(r["text"] for r in rows if r["text"])
        n_memories = len(rows)
        if rows:
            memories.delete(mem_where)
    events = gen.events()
    n_audit = 0
    if events is not None:
        rows = (
            events.search()
            .where(
                f"{ev_where} AND (text IS NOT NULL OR old_text IS NOT NULL OR payload != {sql_str(ERASED_PAYLOAD)})"
            )
            .select(["event_id", "text", "old_text"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        n_audit = len(rows)
        texts.update(t for r in rows for t in (r["text"], r["old_text"]) if t)
        if rows:
            blank: dict[str, Any] = {c: None for c in SCRUBBED_COLUMNS}
            events.update(where=ev_where, values={**blank, "payload": ERASED_PAYLOAD})
            sealed = f"{who} AND {sql_in('key_id', event.key_ids)}"
            events.update(where=sealed, values={"outcome": "ERASED", "reason": "erased"})
    digests = [text_hash(t) for t in texts]
    n_cached = cache.forget(digests)
    for table in cache.other_models() if digests else ():
        for i in range(0, len(digests), 500):
            where = sql_in("key", digests[i : i + 500])
            if table.count_rows(where):
                table.delete(where)
                n_cached += 1
    n_exports = _drop_exports(data_dir / "exports", subject)
    stats = ScrubStats(n_memories, n_audit, n_cached, n_exports)
    log.info("erased %s: %s", subject.canonical(), stats)
    return stats


def purge_all(gen: Generation, cache: EmbeddingCache) -> None:
    """Make the scrubs physical: call after `scrub` (once for many), before the checkpoint."""
    for table in (gen.memories(), gen.events(), cache.table(), *cache.other_models()):
        if table is not None:
            purge(table)


def purge_generation(gen: Generation) -> None:
    """Make the scrubs of a generation other than the live one physical (a reinfer
    candidate); the shared embedding cache is purged with the live generation."""
    for table in (gen.memories(), gen.events()):
        if table is not None:
            purge(table)


def sealed_keys(
    gen: Generation, subject: Subject | None = None, *, since: Offsets | None = None
) -> dict[Subject, set[str]]:
    """The key ids the live generation's rows were sealed under, by owning subject (all of
    them, or one subject's). Whoever keeps those whose key the store no longer has (an erase
    killed between destroying the keys and logging its `SubjectErased`) must look them up in
    a key store refreshed AFTER this scan, so a key created meanwhile is not taken as dead.

    `since` (a checkpoint; all subjects): only the rows that events at or after it wrote.
    Each such event has an audit row carrying the key it was sealed under, and a memory row
    it changed carries that key or one an earlier event set, so the `events` table alone is
    read, filtered by position only (Lance reads every column a filter names for every row:
    the payload column would cost more than the rest); key and payload are checked on the
    rows found."""
    columns = ["key_id", "org_id", "project_id", *ENTITY_FIELDS]
    live: str | None = None
    if since is None:
        where = "key_id IS NOT NULL" + (f" AND {subject_where(subject)}" if subject else "")
        live_audit = f" AND payload != {sql_str(ERASED_PAYLOAD)}"  # scrubbed rows keep key_id
        scans = [(gen.memories(), where, columns), (gen.events(), where + live_audit, columns)]
    else:
        if subject is not None:
            raise ValueError("sealed_keys: since= scans every subject")
        parts = [f"(partition = {p} AND `offset` >= {o})" for p, o in sorted(since.items())]
        known = ", ".join(str(p) for p in sorted(since))
        parts.append(f"partition NOT IN ({known})" if since else "true")  # a new partition
        later = " OR ".join(parts)
        scans = [(gen.events(), later, [*columns, "payload"])]
        live = ERASED_PAYLOAD
    found: dict[Subject, set[str]] = {}
    for table, where, wanted in scans:
        if table is None:
            continue
        if hasattr(table, "to_lance"):  # a LanceDB table (not `lance`: ~100 MB more RSS)
            rows = table.search().where(where).select(wanted).limit(None).to_arrow()
        else:  # a lance dataset (projector/lance_snapshot.py)
            rows = table.to_table(columns=wanted, filter=where)
        if live is not None:
            import pyarrow.compute as pc

            keep = pc.and_(pc.is_valid(rows["key_id"]), pc.not_equal(rows["payload"], live))
            rows = rows.filter(keep).select(columns)
        if rows.num_rows == 0:
            continue
        for row in rows.group_by(columns).aggregate([]).to_pylist():
            owner = _owner(row)
            if owner is not None:
                found.setdefault(owner, set()).add(str(row["key_id"]))
    return found


SCAN_STAMP = "erasure-scan.json"


@dataclass(frozen=True, slots=True)
class ScanStamp:
    """A generation's last scan for keys destroyed under its rows that found none: the key
    store's `erasure_marker` before it and the generation's checkpoint before it. While the
    marker stays the same no key has been destroyed since, so the rows of events before the
    checkpoint need no second look; only later events' rows do (`sealed_keys(since=...)`)."""

    marker: str
    checkpoint: Offsets


def read_scan_stamp(gen: Generation) -> ScanStamp | None:
    try:
        data = json.loads((gen.path / SCAN_STAMP).read_text())
        return ScanStamp(
            str(data["marker"]), {int(p): int(o) for p, o in data["checkpoint"].items()}
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_scan_stamp(gen: Generation, stamp: ScanStamp) -> None:
    """Record a clean scan (best effort: a read-only data directory just scans again)."""
    body = {"marker": stamp.marker,
            "checkpoint": {str(p): o for p, o in sorted(stamp.checkpoint.items())}}  # fmt: skip
    tmp = gen.path / f".{SCAN_STAMP}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(body))
        os.replace(tmp, gen.path / SCAN_STAMP)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _owner(row: dict[str, Any]) -> Subject | None:
    for name in ENTITY_FIELDS:
        if row.get(name) is not None:
            return Subject(row["org_id"], row["project_id"], name, row[name])
    return None


def purge(table: Any) -> None:
    """Rewrite every fragment with deleted rows and drop all older versions and files."""
    import lance  # pylance: LanceDB's optimize() has no materialize-deletions threshold

    dataset = lance.dataset(table.uri)
    dataset.optimize.compact_files(materialize_deletions=True, materialize_deletions_threshold=0.0)
    dataset = lance.dataset(table.uri)
    dataset.cleanup_old_versions(older_than=dt.timedelta(0), delete_unverified=True)


def _drop_exports(folder: Path, subject: Subject) -> int:
    """Delete stored REST exports that hold any memory of the subject."""
    if not folder.is_dir():
        return 0
    dropped = 0
    for path in folder.glob("*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (doc.get("org_id"), doc.get("project_id")) != (subject.org_id, subject.project_id):
            continue
        if any(_owned(m, subject) for m in doc.get("memories", [])):
            path.unlink(missing_ok=True)
            dropped += 1
    return dropped


def _owned(memory: dict[str, Any], subject: Subject) -> bool:
    for name in ENTITY_FIELDS:
        if name == subject.field:
            return bool(memory.get(name) == subject.value)
        if memory.get(name) is not None:
            return False
    return False
