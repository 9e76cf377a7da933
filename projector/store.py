"""The LanceDB projections of the log, in swappable generations.

A generation is a directory holding the LanceDB tables (`memories`, `events`) and the
checkpoint (next log offset per partition) they reflect. `CURRENT` names the live one;
`replay` builds a new generation from offset 0 and swaps `CURRENT` atomically, so readers
never see a half-built projection. A generation marked `CANDIDATE` is a fold of the log with
a `reinfer` proposal substituted (projector/candidate.py): never live, read on request, kept
until discarded or swapped in, and scrubbed by every erasure like the live one. Wiping `projections/` is safe: the next catch-up rebuilds
from the log. The embedding cache lives outside generations so replay does not pay for the
model twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from memstream.errors import ValidationError
from memstream.log.base import Offsets
from memstream.projector.index import DigestSet
from memstream.projector.tables import (
    ENTITY_COLUMNS,
    EVENTS_SCHEMA,
    POLICIES_SCHEMA,
    PROJECTION_VERSION,
    memories_schema,
)
from memstream.projector.vector_index import ensure_vector_index
from memstream.sqlutil import sql_in, sql_str

INDEXED_COLUMNS = ("org_id", "project_id", *ENTITY_COLUMNS)
EVENT_LEADS = ("user_id", "agent_id", "run_id")
RETIRED = "RETIRED"  # marker file in a generation a promote replaced: time.time() of that
RETIRED_GRACE_S = 300.0  # how long a replaced generation stays for readers still on it
BUILDING = "BUILDING"  # lock file a replay holds (flock) while it builds a generation
YOUNG_S = 60.0  # a generation (or temp file) this new may still be getting its lock file
CANDIDATE = "CANDIDATE"  # marker (JSON) of a finished reinfer candidate generation

if TYPE_CHECKING:
    from types import ModuleType


def _lancedb() -> ModuleType:
    """LanceDB, imported on first use (~1 s even without its REST client, see
    memstream/lancedb_import.py): a process that only reads a generation through `lance`
    (memstream/light_reads.py) or never opens one never pays for it."""
    from memstream.lancedb_import import lancedb

    return lancedb


Connect = Callable[[Path], Any]
"""Opens a directory of tables: LanceDB's connection (`connect_lancedb`, the default), or
`projector.lance_tables.LanceConnection` (the same tables through `lance` alone)."""


LANCE_FILE_VERSIONS = ("2.0", "2.1", "2.2")
LANCE_FILE_VERSION = "2.1"
"""The Lance file format of the tables a generation creates (appends keep a table's own).

Why not LanceDB 0.40's default (2.2): 2.2 stores a page whose values are all equal in a
"constant" layout, and a read of a few rows from such a page costs as much as reading the
whole page. In a projection many columns are constant over a page (`org_id` and `project_id`
in a one-project deployment, `partition` on the file log, `immutable`, `metadata` = "{}"),
and a scoped search reads its user's ~200 rows from each of them. At 1M memories, reading
one user's rows with every column a search needs took 8.2 ms on 2.2, 2.7 ms on 2.1 and
2.1 ms on 2.0 (the same rows, one file; bench/README.md, round 8). 2.1 keeps 2.2's
compression otherwise (the table is 12% smaller than on 2.0). `MEMSTREAM_LANCE_FORMAT`
picks another of LANCE_FILE_VERSIONS (for comparisons; a replay moves a projection to it)."""


def lance_file_version() -> str:
    """LANCE_FILE_VERSION, or the one `MEMSTREAM_LANCE_FORMAT` names."""
    chosen = os.environ.get("MEMSTREAM_LANCE_FORMAT", LANCE_FILE_VERSION)
    if chosen not in LANCE_FILE_VERSIONS:
        raise ValidationError(
            f"MEMSTREAM_LANCE_FORMAT: {chosen!r} is not a Lance file version memstream "
            f"writes; use one of {', '.join(LANCE_FILE_VERSIONS)}"
        )
    return chosen


def connect_lancedb(path: Path) -> Any:
    """LanceDB's connection to the tables in `path`, each read at its latest version; the
    tables it creates are in `lance_file_version()`'s format."""
    return _lancedb().connect(
        path,
        read_consistency_interval=dt.timedelta(0),
        storage_options={"new_table_data_storage_version": lance_file_version()},
    )


def create_btree(table: Any, column: str) -> None:
    """A BTree index on `column`, through the table's own API (LanceDB's or the facade's)."""
    if hasattr(table, "create_btree"):  # projector.lance_tables.LanceTable
        table.create_btree(column)
        return
    from memstream.lancedb_import import BTree

    table.create_index(column, config=BTree())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class GenerationMeta:
    embedder: str
    dim: int
    version: int
    log: str | None  # the EventLog.identity it projects (None: written before it was recorded)
    # `memstream replay --to-position`: the checkpoint (next offset per partition) this
    # generation is pinned at; the projector does not advance it and writers are refused
    pinned: dict[int, int] | None = None


class Generation:
    """One LanceDB database + its checkpoint. Only the projector writes to it."""

    def __init__(self, path: Path, dim: int, connect: Connect = connect_lancedb) -> None:
        self.path = path
        self.dim = dim
        self.connect = connect
        self.db = connect(path / "lance")
        self._memories: Any = None
        self._events: Any = None
        self._policies: Any = None

    def _exists(self, name: str) -> bool:
        """Whether table `name` was created: one stat, where LanceDB's open_table would
        raise (and be asked again on every read of a table nobody created, e.g. `policies`
        in a project without retention policies)."""
        return (self.path / "lance" / f"{name}.lance").is_dir()

    # tables are created lazily, so a read of an empty generation needs no writer
    def _open(self, name: str, schema: pa.Schema, create: bool) -> Any:
        if not create and not self._exists(name):
            return None
        try:
            return self.db.open_table(name)
        except (FileNotFoundError, ValueError):
            if not create:
                return None
            try:
                return self.db.create_table(name, schema=schema)
            except (OSError, ValueError):  # created concurrently
                return self.db.open_table(name)

    def memories(self, create: bool = False) -> Any:
        if self._memories is None:
            self._memories = self._open("memories", memories_schema(self.dim), create)
        return self._memories

    def events(self, create: bool = False) -> Any:
        if self._events is None:
            self._events = self._open("events", EVENTS_SCHEMA, create)
        return self._events

    def policies(self, create: bool = False) -> Any:
        if self._policies is None:
            self._policies = self._open("policies", POLICIES_SCHEMA, create)
        return self._policies

    def query_policies(self, where: str = "true") -> list[dict[str, Any]]:
        table = self.policies()
        if table is None:
            return []
        rows: list[dict[str, Any]] = table.search().where(where).limit(None).to_arrow().to_pylist()
        return rows

    # -- checkpoint ----------------------------------------------------------------------
    def checkpoint(self) -> Offsets:
        path = self.path / "checkpoint.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        return {int(p): int(o) for p, o in data["offsets"].items()}

    def write_checkpoint(self, offsets: Offsets) -> None:
        _atomic_write(
            self.path / "checkpoint.json",
            json.dumps({"offsets": {str(p): o for p, o in sorted(offsets.items())}}),
        )

    # -- reads used by the projector and the query layer ---------------------------------
    def query_memories(self, where: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        table = self.memories()
        if table is None:
            return []
        q = table.search().where(where).limit(None)
        if columns is not None:
            q = q.select(columns)
        rows: list[dict[str, Any]] = q.to_arrow().to_pylist()
        return rows

    def query_events(self, where: str) -> list[dict[str, Any]]:
        table = self.events()
        if table is None:
            return []
        rows: list[dict[str, Any]] = table.search().where(where).limit(None).to_arrow().to_pylist()
        return rows

    def ensure_indexes(self, *, vectors: bool = False) -> None:
        """Scalar indexes on every filterable id and, with `vectors` (a replay's generation,
        which no writer waits on), the vector index of a large memories table; Lance keeps
        them updated on optimize()."""
        table = self.memories()
        if table is None or table.count_rows() == 0:
            return
        existing = {tuple(ix.columns) for ix in table.list_indices()}
        for column in ("id", *INDEXED_COLUMNS, "hash"):
            if (column,) not in existing:
                create_btree(table, column)
        events = self.events()
        if events is not None and events.count_rows() > 0:
            existing = {tuple(ix.columns) for ix in events.list_indices()}
            # user_id, agent_id, run_id: the leads of as-of reads (query/scoped.py)
            for column in ("event_id", "memory_id", "project_id", "request_id", *EVENT_LEADS):
                if (column,) not in existing:
                    create_btree(events, column)
        if vectors:  # a large table's searches with no indexed lead (projector/vector_index.py)
            ensure_vector_index(table, self.dim)


def vector_matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size-list<float32>[dim] column without nulls as an (n, dim) float32 matrix."""
    flat = column.combine_chunks().flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def live_embedder(data_dir: Path) -> str | None:
    """The embedder the live projection in `data_dir` was built with, if there is one."""
    root = data_dir / "projections"
    try:
        name = (root / "CURRENT").read_text().strip()
        return str(json.loads((root / name / "meta.json").read_text())["embedder"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


class ProjectionStore:
    """Finds the live generation and creates new ones (for replay)."""

    def __init__(
        self,
        data_dir: Path,
        dim: int,
        embedder: str,
        log_identity: str,
        connect: Connect = connect_lancedb,
    ) -> None:
        self.root = data_dir / "projections"
        self.connect = connect  # how its generations open their tables
        self.dim = dim
        self.embedder = embedder
        self.log_identity = log_identity
        self.root.mkdir(parents=True, exist_ok=True)
        self._current = self.root / "CURRENT"
        self._current_stamp: tuple[int, int, int] | None = None
        self._current_name: str | None = None
        self._building: dict[str, int] = {}  # generation name -> fd holding its BUILDING flock

    def current_name(self) -> str | None:
        """The live generation's name. Asked on every write and wait, so the file is read
        again only when a stat says it was replaced (promote writes a new inode)."""
        try:
            st = os.stat(self._current)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._current_stamp:
            self._current_name = self._current.read_text().strip()
            self._current_stamp = stamp
        return self._current_name

    def current(self) -> Generation:
        name = self.current_name()
        if name is None or not (self.root / name).exists():
            name = self._create(promote=True)
        meta = self.meta(name)
        return Generation(self.root / name, meta.dim, self.connect)

    def meta(self, name: str) -> GenerationMeta:
        data = json.loads((self.root / name / "meta.json").read_text())
        return GenerationMeta(
            embedder=data["embedder"],
            dim=int(data["dim"]),
            version=int(data.get("version", 1)),
            log=data.get("log"),
            pinned={int(p): int(o) for p, o in data["pinned"].items()}
            if data.get("pinned")
            else None,
        )

    def _create(self, promote: bool, pinned: dict[int, int] | None = None) -> str:
        name = (
            "gen-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        )
        path = self.root / name
        path.mkdir(parents=True)
        _atomic_write(
            path / "meta.json",
            json.dumps(
                {
                    "embedder": self.embedder,
                    "dim": self.dim,
                    "version": PROJECTION_VERSION,
                    "log": self.log_identity,
                    **(
                        {"pinned": {str(p): o for p, o in sorted(pinned.items())}}
                        if pinned is not None
                        else {}
                    ),  # fmt: skip
                }
            ),
        )
        if promote:
            self.promote(name)
        return name

    def new_generation(self, pinned: dict[int, int] | None = None) -> Generation:
        """A generation for a replay to build. It holds a BUILDING lock (flock) while this
        process lives and has not promoted or abandoned it: a generation whose lock nobody
        holds was left by a killed replay and is deleted (`drop_abandoned`)."""
        name = self._create(promote=False, pinned=pinned)
        fd = os.open(self.root / name / BUILDING, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._building[name] = fd
        return Generation(self.root / name, self.dim, self.connect)

    def _release(self, name: str) -> None:
        fd = self._building.pop(name, None)
        if fd is not None:
            (self.root / name / BUILDING).unlink(missing_ok=True)
            os.close(fd)

    def abandon(self, name: str) -> None:
        """Delete a generation this process was building and gave up (a failed replay)."""
        if name == self.current_name():
            return
        self._release(name)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def drop_abandoned(self) -> list[str]:
        """Delete what killed replays left: generations that are not live, not retired (see
        `drop_retired`), not a finished candidate (see `mark_candidate`) and not being built
        by a live process, and stale temp files. They hold plaintext that no erasure would
        otherwise reach."""
        now, current, dropped = time.time(), self.current_name(), []
        for path in self.root.iterdir():
            if path.is_file() and path.name.endswith(".tmp") and now - _mtime(path) > YOUNG_S:
                path.unlink(missing_ok=True)
                continue
            if not path.is_dir() or path.name == current or path.name in self._building:
                continue
            if (path / RETIRED).exists() or (path / CANDIDATE).exists():
                continue
            lock = path / BUILDING
            if not lock.exists():
                if now - _mtime(path) < YOUNG_S:  # just created: its lock may follow
                    continue
            else:
                try:
                    fd = os.open(lock, os.O_RDWR)
                except FileNotFoundError:
                    continue  # promoted or abandoned meanwhile
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live replay is building it
                os.close(fd)
            if path.name == self.current_name():  # promoted while we looked
                continue
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(path.name)
        return dropped

    def mark_candidate(self, name: str, info: dict[str, Any]) -> None:
        """Keep a generation this process built as a candidate (never live): the marker is
        written before the BUILDING lock goes, so `drop_abandoned` never sees it unclaimed."""
        _atomic_write(self.root / name / CANDIDATE, json.dumps(info, sort_keys=True))
        self._release(name)

    def candidates(self) -> dict[str, dict[str, Any]]:
        """Finished candidate generations: name -> their marker."""
        found: dict[str, dict[str, Any]] = {}
        for marker in sorted(self.root.glob(f"*/{CANDIDATE}")):
            with contextlib.suppress(OSError, ValueError):
                found[marker.parent.name] = json.loads(marker.read_text())
        return found

    def open(self, name: str) -> Generation:
        """An existing generation by name (for reading a candidate)."""
        return Generation(self.root / name, self.meta(name).dim, self.connect)

    def drop(self, name: str) -> None:
        """Delete a generation that is not live (a discarded or swapped-in candidate)."""
        if name != self.current_name():
            shutil.rmtree(self.root / name, ignore_errors=True)

    def promote(self, name: str) -> None:
        """Make `name` the live generation. The one it replaces is kept for
        `RETIRED_GRACE_S`: a query another process began on it a moment ago can finish."""
        self._release(name)
        old = self.current_name()
        _atomic_write(self._current, name)
        if old and old != name and (self.root / old).exists():
            _atomic_write(self.root / old / RETIRED, repr(time.time()))
        self.drop_retired(older_than_s=RETIRED_GRACE_S)

    def drop_retired(self, older_than_s: float = 0.0) -> list[str]:
        """Delete the generations a promote replaced at least `older_than_s` ago (an erasure
        passes 0: a retired generation still holds the plaintext it projected)."""
        now, current, dropped = time.time(), self.current_name(), []
        for marker in self.root.glob(f"*/{RETIRED}"):
            if marker.parent.name == current:
                continue
            try:
                since = float(marker.read_text())
            except (OSError, ValueError):
                since = 0.0
            if now - since >= older_than_s:
                shutil.rmtree(marker.parent, ignore_errors=True)
                dropped.append(marker.parent.name)
        return dropped


def _mtime(path: Path) -> float:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return time.time()


FLUSH_ITEMS = 1024  # deferred cache vectors are written once this many are pending
# keys per `key IN (...)` lookup: each query has a fixed cost (measured on 300k cached
# vectors, 10k keys: 470 ms in queries of 500 keys, 175 ms in one query of 10,000)
LOOKUP_CHUNK = 10_000


class EmbeddingCache:
    """(model, sha256(text)) -> vector, in LanceDB beside the generations, plus an in-memory map."""

    def __init__(
        self,
        data_dir: Path,
        model: str,
        dim: int,
        memory_items: int = 100_000,
        connect: Connect = connect_lancedb,
    ) -> None:
        self.model = model
        self.dim = dim
        self.db = connect(data_dir / "cache")
        self.table_name = "embeddings_" + "".join(c if c.isalnum() else "_" for c in model)
        self._mem: dict[str, np.ndarray] = {}
        self._memory_items = memory_items
        self._pending: dict[str, np.ndarray] = {}  # put with defer=True, not written yet
        # the apply thread puts while the background flush of the fresh tier takes the
        # pending vectors: without it a put landing in the dict being written was lost
        self._pending_lock = threading.Lock()
        self._table: Any = None

    def _tbl(self, create: bool) -> Any:
        if self._table is None:
            schema = pa.schema(
                [
                    pa.field("key", pa.string(), nullable=False),
                    pa.field("vector", pa.list_(pa.float32(), self.dim)),
                ]
            )
            try:
                self._table = self.db.open_table(self.table_name)
            except (FileNotFoundError, ValueError):
                if not create:
                    return None
                try:
                    self._table = self.db.create_table(self.table_name, schema=schema)
                except (OSError, ValueError):
                    self._table = self.db.open_table(self.table_name)
        return self._table

    def table(self) -> Any:
        """The cache's LanceDB table, or None before the first vector is stored."""
        return self._tbl(create=False)

    def ensure_index(self) -> None:
        """A scalar index on `key`: a lookup of new texts then reads the index and the rows
        written since the last compaction, not every key (called by Projector.maintain)."""
        table = self._tbl(create=False)
        if table is None or table.count_rows() == 0:
            return
        if ("key",) not in {tuple(ix.columns) for ix in table.list_indices()}:
            create_btree(table, "key")

    def get_many(self, keys: list[str], known: DigestSet | None = None) -> dict[str, np.ndarray]:
        """The stored vectors of `keys`. `known`, if given, holds every key the table holds
        (and maybe more): keys it does not know are not looked up."""
        found = {k: v for k in keys if (v := self._mem.get(k, self._pending.get(k))) is not None}
        missing = [k for k in keys if k not in found]
        if known is not None:
            missing = known.known(missing)
        # opening a table that does not exist yet costs ~0.5 ms: only when a key is asked
        table = self._tbl(create=False) if missing else None
        if missing and table is not None:
            for i in range(0, len(missing), LOOKUP_CHUNK):
                chunk = missing[i : i + LOOKUP_CHUNK]
                rows = table.search().where(sql_in("key", chunk)).limit(None).to_arrow()
                # one float32 matrix from the fixed-size-list column, not a Python list of
                # 384 floats per vector (~15 us each: most of a large replay's lookups)
                matrix = vector_matrix(rows["vector"], self.dim)
                found.update(zip(rows["key"].to_pylist(), matrix, strict=True))
        return found

    def put_many(self, items: dict[str, np.ndarray], *, defer: bool = False) -> None:
        """Store vectors. With `defer` they are held in memory (and answered from there)
        until `flush`, which writes them once `FLUSH_ITEMS` are pending: a live batch of one
        memory then pays no LanceDB write of its own for the cache. A crash loses only
        pending vectors, i.e. the model runs again for those texts in a later replay."""
        if not items:
            return
        if len(self._mem) + len(items) > self._memory_items:
            self._mem.clear()
        self._mem.update(items)
        with self._pending_lock:
            self._pending.update(items)
            due = not defer or len(self._pending) >= FLUSH_ITEMS
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the pending vectors (appended: the projector looked these keys up under its
        flock and found them missing; a key written twice holds the same vector twice)."""
        with self._pending_lock:
            if not self._pending:
                return
            items, self._pending = self._pending, {}
        table = self._tbl(create=True)
        data = pa.table(
            {
                "key": pa.array(list(items), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.concatenate([v.astype(np.float32) for v in items.values()])),
                    self.dim,
                ),
            }
        )
        table.add(data)

    def forget(self, keys: list[str]) -> int:
        """Remove these texts' vectors (an erasure); returns how many were stored."""
        with self._pending_lock:
            for key in keys:
                self._mem.pop(key, None)
                self._pending.pop(key, None)
        table = self._tbl(create=False)
        if table is None or not keys:
            return 0
        removed = 0
        for i in range(0, len(keys), 500):
            where = sql_in("key", keys[i : i + 500])
            removed += table.count_rows(where)
            table.delete(where)
        return removed

    def other_models(self) -> list[Any]:
        """The cache tables of other embedding models (vectors of the same texts, keyed the
        same way): an erasure forgets its texts there too."""
        out = []
        names: list[str] = []
        token: str | None = None
        for _ in range(10_000):  # pages of table names (bounded)
            listed = self.db.list_tables(page_token=token)
            names += list(listed.tables)
            token = listed.page_token
            if not token:
                break
        for name in names:
            if name.startswith("embeddings_") and name != self.table_name:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    out.append(self.db.open_table(name))
        return out


def where_ids(ids: list[str]) -> str:
    return sql_in("id", ids)


__all__ = ["EmbeddingCache", "Generation", "ProjectionStore", "sql_str", "where_ids"]
