"""Point-in-time reads: get, get_all and search answered from the state the log had then.

`as_of` names a cut of the log, either an instant or a log position:

- an instant: an ISO-8601 datetime (`"2026-11-24T10:00:00Z"`, a naive one is UTC, a bare date
  is that day's 00:00:00Z) or a `datetime`. The cut holds every event whose `occurred_at` is
  at or before it (millisecond precision, finer digits are truncated).
- a log position: `{"partition": p, "offset": o}` (a list of them for several partitions),
  a `Position`, the string `"p:o"` (`"0:12,1:40"` for several), or an int / a string of
  digits meaning an offset on partition 0 (the file log's only partition). The cut holds the
  event at that position and every earlier one on that partition, i.e. the state right
  after that event was applied. On a partition the position does not name (Kafka has
  several), the cut holds the events that occurred at or before the named event(s): one
  scope's events all live on one partition, so that scope's cut is exact, and every other
  scope is seen as it was when the named event was written. A position at or past the end
  of the projected log is refused.

The state is a fold of the `events` projection (one row per event, carrying the outcome the
projector decided in log order) in DuckDB: per memory, in log order, the memory exists from
its ADD, carries forward the last non-null text / metadata / categories, the last
expiration_date that an ADD or an UPDATE set, and is gone once its last decisive outcome is
one of `REMOVING_OUTCOMES`. Outcomes the fold does not know (NONE, NOOP, FEEDBACK,
DELETE_ALL, ... and anything added later) are ignored. The folded rows have the columns of
the `memories` projection, so `compile_filters(...).duckdb` applies unchanged (implicit null
scoping, metadata conditions). Retention is evaluated at the cut's instant with the rules of
`query/retention.py`: a memory is hidden from get_all and search (unless `show_expired`)
when its expiration_date had passed then, when the sweeper had recorded its expiry
(`EXPIRE`, the cut's `expired_at`), or when a retention policy in force then (the last
`POLICY_SET` / `POLICY_REMOVED` in the cut) had expired it; `get(id)` still returns it, as
on the live projection.

Erasure is retroactive: a memory whose text is no longer readable in the log (crypto-shredded)
is left out of every point-in-time answer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from memstream import cancellation
from memstream.errors import NotFoundError, ValidationError
from memstream.events import text_hash
from memstream.log.base import Position
from memstream.models import MemoryView, Page, Tenant
from memstream.projector.projector import Projector
from memstream.projector.store import Generation
from memstream.query.filters import (
    REFERENCE_COLUMNS,
    And,
    CompiledFilter,
    EntityMatch,
    IdMatch,
    Node,
    compile_filters,
)
from memstream.query.retention import row_visible, visible
from memstream.query.scoped import lead_predicate
from memstream.sqlutil import sql_in, sql_str

__all__ = [
    "ADDING_OUTCOMES",
    "EXPIRING_OUTCOMES",
    "FOLDED_OUTCOMES",
    "REMOVING_OUTCOMES",
    "AsOf",
    "Cut",
    "PointInTime",
    "entity_pushdown",
    "duck",
    "fold_state",
    "parse_as_of",
    "parse_instant",
    "policies_at",
    "resolve_cut",
    "tenant_where",
]

ADDING_OUTCOMES = ("ADD",)
"""Outcomes that bring a memory into existence."""
CHANGING_OUTCOMES = ("UPDATE",)
"""Outcomes that change a live memory (null columns on the row mean 'unchanged')."""
REMOVING_OUTCOMES = ("DELETE", "ERASE")
"""Outcomes after which a memory is gone: the one list every fold and count uses."""
EXPIRING_OUTCOMES = ("EXPIRE",)
"""Outcomes that mark a memory expired: hidden from get_all/search, still readable by id."""
FOLDED_OUTCOMES = (*ADDING_OUTCOMES, *CHANGING_OUTCOMES, *REMOVING_OUTCOMES, *EXPIRING_OUTCOMES)
POLICY_OUTCOMES = ("POLICY_SET", "POLICY_REMOVED")

EVENT_COLUMNS = [
    "partition", "offset", "occurred_at", "org_id", "project_id", "memory_id", "user_id",
    "agent_id", "app_id", "run_id", "text", "metadata", "categories", "outcome", "payload",
]  # fmt: skip

STATE_COLUMNS = (
    "id", "org_id", "project_id", "user_id", "agent_id", "app_id", "run_id", "text",
    "metadata", "categories", "created_at", "updated_at", "expiration_date", "immutable",
    "expired_at",
)  # fmt: skip


# --------------------------------------------------------------------------------------
# as_of values
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsOf:
    """A cut of the log: an instant (ms UTC, inclusive) or positions (inclusive offsets)."""

    time_ms: int | None = None
    offsets: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if (self.time_ms is None) == (not self.offsets):
            raise ValueError("an AsOf is either an instant or log positions")

    def describe(self) -> str:
        if self.time_ms is not None:
            return (
                dt.datetime.fromtimestamp(self.time_ms / 1000, tz=dt.UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
        return ",".join(f"{p}:{o}" for p, o in self.offsets)


_DIGITS = re.compile(r"\d+")
_POSITIONS = re.compile(r"\d+:\d+(,\d+:\d+)*")


def parse_instant(value: Any, what: str = "as_of") -> int:
    """An ISO-8601 datetime (or date = its 00:00 UTC) / datetime / date, as ms UTC (floor)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{what}: {value!r} is not an ISO-8601 datetime (e.g. 2026-11-24T10:00:00Z)"
            ) from None
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    else:
        raise ValidationError(f"{what}: must be an ISO-8601 datetime, got {type(value).__name__}")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return delta // dt.timedelta(milliseconds=1)


def _offsets(pairs: Sequence[tuple[Any, Any]]) -> tuple[tuple[int, int], ...]:
    out: dict[int, int] = {}
    for p, o in pairs:
        if isinstance(p, bool) or isinstance(o, bool) or not isinstance(p, int):
            raise ValidationError("as_of: partition and offset must be integers")
        if not isinstance(o, int):
            raise ValidationError("as_of: partition and offset must be integers")
        if p < 0 or o < 0:
            raise ValidationError("as_of: partition and offset must be >= 0")
        if p in out:
            raise ValidationError(f"as_of: partition {p} is named twice")
        out[p] = o
    return tuple(sorted(out.items()))


def parse_as_of(value: Any) -> AsOf:
    """Normalise every accepted spelling of `as_of` (see the module docstring)."""
    if isinstance(value, AsOf):
        return value
    if isinstance(value, Position):
        return AsOf(offsets=_offsets([(value.partition, value.offset)]))
    if isinstance(value, bool):
        raise ValidationError("as_of: must be an ISO-8601 datetime or a log position")
    if isinstance(value, int):
        return AsOf(offsets=_offsets([(0, value)]))
    if isinstance(value, dt.date):
        return AsOf(time_ms=parse_instant(value))
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise ValidationError("as_of: an empty list of positions")
        pairs = []
        for item in value:
            if not isinstance(item, Mapping) or set(item) - {"partition", "offset"}:
                raise ValidationError(
                    'as_of: a position is {"partition": p, "offset": o} (partition defaults to 0)'
                )
            if "offset" not in item:
                raise ValidationError("as_of: a position needs an offset")
            pairs.append((item.get("partition", 0), item["offset"]))
        return AsOf(offsets=_offsets(pairs))
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            return AsOf(offsets=_offsets([(0, int(text))]))
        if _POSITIONS.fullmatch(text):
            named = [part.split(":") for part in text.split(",")]
            return AsOf(offsets=_offsets([(int(p), int(o)) for p, o in named]))
        return AsOf(time_ms=parse_instant(text))
    raise ValidationError(
        f"as_of: must be an ISO-8601 datetime or a log position, got {type(value).__name__}"
    )


# --------------------------------------------------------------------------------------
# Resolving a cut against the events projection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    """A resolved cut: a Lance predicate over `events` rows and the instant it stands for."""

    where: str
    instant_ms: int | None  # None: the cut holds no event at all


def _scan(gen: Generation, where: str, columns: list[str]) -> pa.Table:
    table = gen.events()
    if table is None:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    result: pa.Table = table.search().where(where).select(columns).limit(None).to_arrow()
    return result


def resolve_cut(gen: Generation, as_of: Any) -> Cut:
    cut = parse_as_of(as_of)
    if cut.time_ms is not None:
        return Cut(f"occurred_at <= {int(cut.time_ms)}", cut.time_ms)
    checkpoint = gen.checkpoint()
    instants: list[int] = []
    parts: list[str] = []
    for p, o in cut.offsets:
        end = checkpoint.get(p, 0)
        if o >= end:
            raise ValidationError(
                f"as_of: position {p}:{o} is past the end of the log "
                f"(partition {p} holds offsets below {end})"
            )
        parts.append(f"(partition = {p} AND `offset` <= {o})")
        rows = _scan(gen, f"partition = {p} AND `offset` = {o}", ["occurred_at"])
        if rows.num_rows == 0:  # an offset with no event (a Kafka control record): the last before
            rows = _scan(gen, f"partition = {p} AND `offset` <= {o}", ["offset", "occurred_at"])
            if rows.num_rows:
                rows = rows.sort_by([("offset", "descending")]).slice(0, 1)
        if rows.num_rows:
            instants.append(int(rows["occurred_at"][0].as_py()))
    instant = max(instants) if instants else None
    if instant is not None:
        named = ", ".join(str(p) for p, _ in cut.offsets)
        parts.append(f"(partition NOT IN ({named}) AND occurred_at <= {instant})")
    return Cut("(" + " OR ".join(parts) + ")", instant)


# --------------------------------------------------------------------------------------
# The fold
# --------------------------------------------------------------------------------------


_DB: duckdb.DuckDBPyConnection | None = None
_DB_LOCK = threading.Lock()


@contextlib.contextmanager
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """A private cursor on one shared in-memory DuckDB: a new database costs ~40 ms, a cursor
    ~3 ms. Registered Arrow tables are visible to that cursor only. A request whose client
    disconnects interrupts the cursor's query (memstream.cancellation)."""
    global _DB
    with _DB_LOCK:
        if _DB is None:
            _DB = duckdb.connect(":memory:")
        cursor = _DB.cursor()
    try:
        with cancellation.interrupting(cursor.interrupt):
            yield cursor
    except duckdb.InterruptException:
        cancellation.check()  # RequestCancelled when it was ours
        raise
    finally:
        cursor.close()


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(sql_str(v) for v in values)


FOLD_SQL = f"""
WITH ev AS (
    SELECT *,
        outcome IN ({_sql_list((*ADDING_OUTCOMES, *CHANGING_OUTCOMES))}) AS is_state,
        CASE
            WHEN outcome IN ({_sql_list(ADDING_OUTCOMES)}) THEN TRUE
            WHEN outcome IN ({_sql_list(CHANGING_OUTCOMES)}) THEN coalesce(
                TRY_CAST(json_extract(payload, '$.set_expiration_date') AS BOOLEAN), FALSE)
            ELSE FALSE
        END AS sets_expiration,
        -- an update with a timestamp backdates created_at and updated_at (MemoryUpdated.timestamp)
        CASE WHEN outcome IN ({_sql_list(CHANGING_OUTCOMES)})
            THEN TRY_CAST(json_extract(payload, '$.timestamp') AS BIGINT) END AS backdated
    FROM cut_events
    WHERE memory_id IS NOT NULL AND outcome IN ({_sql_list(FOLDED_OUTCOMES)})
),
w AS (
    SELECT
        memory_id,
        outcome,
        row_number() OVER (
            PARTITION BY memory_id ORDER BY "partition" DESC, "offset" DESC) AS newest,
        last_value(CASE WHEN outcome IN ({_sql_list(ADDING_OUTCOMES)}) THEN {{
            'org_id': org_id, 'project_id': project_id, 'user_id': user_id,
            'agent_id': agent_id, 'app_id': app_id, 'run_id': run_id,
            'created_at': occurred_at,
            'immutable': coalesce(TRY_CAST(json_extract(payload, '$.immutable') AS BOOLEAN), FALSE)
        }} END IGNORE NULLS) OVER whole AS origin,
        last_value(CASE WHEN is_state THEN text END IGNORE NULLS) OVER whole AS text,
        last_value(CASE WHEN is_state THEN metadata END IGNORE NULLS) OVER whole AS metadata,
        last_value(CASE WHEN is_state THEN categories END IGNORE NULLS) OVER whole AS categories,
        last_value(CASE WHEN sets_expiration THEN {{
            'v': json_extract_string(payload, '$.expiration_date')
        }} END IGNORE NULLS) OVER whole AS expiration,
        last_value(backdated IGNORE NULLS) OVER whole AS backdated,
        last_value(CASE WHEN is_state THEN coalesce(backdated, occurred_at) END IGNORE NULLS)
            OVER whole AS updated_at,
        first_value(CASE WHEN outcome IN ({_sql_list(EXPIRING_OUTCOMES)}) THEN occurred_at END
            IGNORE NULLS) OVER whole AS expired_at
    FROM ev
    WINDOW whole AS (
        PARTITION BY memory_id ORDER BY "partition", "offset"
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
state AS (
    SELECT
        memory_id AS id,
        origin.org_id AS org_id, origin.project_id AS project_id,
        origin.user_id AS user_id, origin.agent_id AS agent_id,
        origin.app_id AS app_id, origin.run_id AS run_id,
        text,
        coalesce(metadata, '{{}}') AS metadata,
        coalesce(categories, []::VARCHAR[]) AS categories,
        coalesce(backdated, origin.created_at) AS created_at,
        updated_at,
        expiration.v AS expiration_date,
        origin.immutable AS immutable,
        expired_at
    FROM w
    WHERE newest = 1
      AND origin IS NOT NULL
      AND outcome NOT IN ({_sql_list(REMOVING_OUTCOMES)})
      AND text IS NOT NULL  -- erased: the text is unreadable, so the memory is not shown
)
"""


def entity_pushdown(
    ast: Node, id_column: str = "memory_id", *, unindexed: bool = False
) -> list[str]:
    """Lance predicates implied by the filter: its top-level entity and id conjuncts, for
    `events` rows (`id_column` memory_id) or `memories` rows (id). A memory's scope never
    changes, so every event of a matching memory passes them: this only narrows the scan,
    the exact filter runs afterwards in DuckDB. `unindexed` writes each column as
    `(col || '')` (the same values, NULL stays NULL) so that Lance checks the condition on
    the rows a lead selected instead of answering it from an index (query/scoped.py)."""

    def col(name: str) -> str:
        return f"({name} || '')" if unindexed else name

    out: list[str] = []
    stack = [ast]
    while stack:
        node = stack.pop()
        match node:
            case And(children):
                stack.extend(children)
            case EntityMatch(field, ids, wildcard, null):
                alts = []
                if ids:
                    alts.append(sql_in(col(field), ids))
                if wildcard:
                    alts.append(f"{col(field)} IS NOT NULL")
                if null:
                    alts.append(f"{col(field)} IS NULL")
                out.append("(" + (" OR ".join(alts) or "false") + ")")
            case IdMatch(ids):
                out.append(sql_in(col(id_column), ids))
    return out


def tenant_where(tenant: Tenant) -> str:
    return f"org_id = {sql_str(tenant.org_id)} AND project_id = {sql_str(tenant.project_id)}"


def fold_state(
    gen: Generation,
    tenant: Tenant,
    cut: Cut,
    compiled: CompiledFilter | None = None,
    *,
    show_expired: bool = True,
    memory_id: str | None = None,
) -> pa.Table:
    """The memories live at `cut` (STATE_COLUMNS plus `hash`), optionally filtered.

    `compiled` (from compile_filters for the same tenant) is applied with its DuckDB
    compilation, or by the reference evaluator when Lance cannot decide it exactly; without
    it every live memory of the tenant is returned.
    """
    lead = lead_predicate(compiled.ast, "memory_id") if compiled and memory_id is None else None
    if lead is not None:
        # the scoped plan (query/scoped.py): only the lead is answered from an index; the
        # tenancy and the other id columns are written so that Lance checks them on the
        # lead's rows instead of intersecting index answers that select most of the table
        where = [
            lead,
            f"org_id = {sql_str(tenant.org_id)}",
            f"(project_id || '') = {sql_str(tenant.project_id)}",
            cut.where,
            "(memory_id || '') IS NOT NULL",
        ]
    else:
        where = [tenant_where(tenant), cut.where, "memory_id IS NOT NULL"]
    where.append(sql_in("outcome", FOLDED_OUTCOMES))
    if memory_id is not None:
        where.append(f"memory_id = {sql_str(memory_id)}")
    if compiled is not None:
        where.extend(entity_pushdown(compiled.ast, unindexed=lead is not None))
    events = _scan(gen, " AND ".join(where), EVENT_COLUMNS)
    if events.num_rows == 0:
        return _empty_state()
    # A filter Lance cannot decide (metadata conditions, long id lists) can be thousands of
    # nodes: DuckDB spends about a second binding such a statement, and a bind cannot be
    # interrupted (memstream.cancellation). The reference evaluator decides those per row
    # instead, as the live reads do, so a client that leaves stops the work at once.
    by_row = compiled is not None and not compiled.lance_exact
    if events.num_rows <= PYTHON_FOLD_ROWS:
        folded = python_fold(events)
        if folded is not None:
            return _filtered(gen, tenant, cut, folded, compiled, show_expired)
    with duck() as con:
        con.register("cut_events", events)
        sql = FOLD_SQL + "SELECT * FROM state WHERE TRUE"
        params: list[Any] = []
        if compiled is not None and not by_row:
            fsql, fparams = compiled.duckdb
            sql += f" AND ({fsql})"
            params.extend(fparams)
        if not show_expired:
            # the retention rules as they stood at the cut: expiration dates, the sweeper's
            # marks and the project's TTL policies, all evaluated at the cut's instant
            instant = cut.instant_ms if cut.instant_ms is not None else 0
            sql += f" AND ({visible(policies_at(gen, tenant, cut), instant)})"
        sql += " ORDER BY created_at DESC, id"
        relation = con.sql(sql, params=params)
        cancellation.check()  # an interrupt that came before the query ran is lost
        state = relation.to_arrow_table()
    if by_row:
        assert compiled is not None
        rows = state.select(list(REFERENCE_COLUMNS)).to_pylist()
        state = state.filter(pa.array([compiled.matches(row) for row in rows], pa.bool_()))
    hashes = pa.array([text_hash(t) for t in state["text"].to_pylist()], pa.string())
    return state.append_column("hash", hashes)


PYTHON_FOLD_ROWS = 5_000
"""Up to this many events (a scope's history), `python_fold` folds them instead of DuckDB:
FOLD_SQL costs ~30 ms to bind and plan whatever its input (178 events: 31 ms against
0.03 ms a row in Python; issue 16, section 1), most of an as-of read of one user."""

# DuckDB's Arrow types for the fold's columns (its list item is named "l")
STATE_SCHEMA = pa.schema(
    [
        *[(c, pa.string()) for c in STATE_COLUMNS[:9]],  # id .. metadata
        ("categories", pa.list_(pa.field("l", pa.string()))),
        ("created_at", pa.int64()),
        ("updated_at", pa.int64()),
        ("expiration_date", pa.string()),
        ("immutable", pa.bool_()),
        ("expired_at", pa.int64()),
    ]
)


class _Undecided(Exception):
    """A payload value FOLD_SQL's casts would read in a way `python_fold` does not claim to
    reproduce (not a JSON boolean / integer / string where one is expected)."""


def _json_field(payload: dict[str, Any], name: str, kind: type) -> Any:
    """`payload[name]` as FOLD_SQL's TRY_CAST / json_extract_string reads it: None when
    absent or JSON null, the value when of `kind`; anything else is _Undecided."""
    value = payload.get(name)
    if value is None or (type(value) is kind):
        return value
    raise _Undecided(name)


def python_fold(events: pa.Table) -> list[dict[str, Any]] | None:
    """FOLD_SQL's `state` in plain Python (same rows and columns, unordered), or None when
    a payload holds a value it does not claim to read as DuckDB does (then FOLD_SQL runs).
    Held equal to FOLD_SQL by tests/unit/test_asof_fold.py."""
    try:
        return _python_fold(events)
    except (_Undecided, ValueError, TypeError):
        return None


def _python_fold(events: pa.Table) -> list[dict[str, Any]]:
    rows = [
        r
        for r in events.select(EVENT_COLUMNS).to_pylist()
        if r["memory_id"] is not None and r["outcome"] in FOLDED_OUTCOMES
    ]
    rows.sort(key=lambda r: (r["memory_id"], r["partition"], r["offset"]))
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j]["memory_id"] == rows[i]["memory_id"]:
            j += 1
        if (state := _fold_one(rows[i:j])) is not None:
            out.append(state)
        i = j
    return out


def _fold_one(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One memory's events in log order -> its state row, or None (gone, never added,
    erased), as the window functions of FOLD_SQL decide it."""
    origin: dict[str, Any] | None = None
    text = metadata = categories = expiration = backdated = updated_at = expired_at = None
    has_expiration = False
    for ev in history:
        outcome = ev["outcome"]
        payload = json.loads(ev["payload"])
        if not isinstance(payload, dict):
            raise _Undecided("payload")
        adding = outcome in ADDING_OUTCOMES
        changing = outcome in CHANGING_OUTCOMES
        if adding:
            immutable = _json_field(payload, "immutable", bool)
            origin = {k: ev[k] for k in ENTITY_AND_TENANT} | {
                "created_at": ev["occurred_at"], "immutable": bool(immutable),
            }  # fmt: skip
        stamp = _json_field(payload, "timestamp", int) if changing else None
        if adding or changing:
            text = ev["text"] if ev["text"] is not None else text
            metadata = ev["metadata"] if ev["metadata"] is not None else metadata
            categories = ev["categories"] if ev["categories"] is not None else categories
            updated_at = stamp if stamp is not None else ev["occurred_at"]
        sets = adding or (changing and bool(_json_field(payload, "set_expiration_date", bool)))
        if sets:
            expiration, has_expiration = _json_field(payload, "expiration_date", str), True
        if stamp is not None:
            backdated = stamp
        if outcome in EXPIRING_OUTCOMES and expired_at is None:
            expired_at = ev["occurred_at"]
    last = history[-1]["outcome"]
    if origin is None or last in REMOVING_OUTCOMES or text is None:
        return None
    return {
        "id": history[0]["memory_id"],
        **{k: origin[k] for k in ENTITY_AND_TENANT},
        "text": text,
        "metadata": metadata if metadata is not None else "{}",
        "categories": categories if categories is not None else [],
        "created_at": backdated if backdated is not None else origin["created_at"],
        "updated_at": updated_at,
        "expiration_date": expiration if has_expiration else None,
        "immutable": origin["immutable"],
        "expired_at": expired_at,
    }


ENTITY_AND_TENANT = ("org_id", "project_id", "user_id", "agent_id", "app_id", "run_id")


def _filtered(
    gen: Generation,
    tenant: Tenant,
    cut: Cut,
    rows: list[dict[str, Any]],
    compiled: CompiledFilter | None,
    show_expired: bool,
) -> pa.Table:
    """`python_fold`'s rows through what fold_state's SQL applies after the fold: the
    filter (its reference evaluator, which DuckDB's compilation is held equal to), the
    retention rules at the cut's instant (`row_visible`, the twin of `visible`), the order
    (newest first, then id); as an Arrow table of DuckDB's types, with `hash`. The
    evaluator stops at its next row once the request is cancelled (memstream.cancellation);
    the fold before it (at most PYTHON_FOLD_ROWS events) runs to its end."""
    cancellation.check()
    if compiled is not None:
        rows = [r for r in rows if compiled.matches({k: r.get(k) for k in REFERENCE_COLUMNS})]
    if not show_expired and rows:
        instant = cut.instant_ms if cut.instant_ms is not None else 0
        policies = policies_at(gen, tenant, cut)
        rows = [r for r in rows if row_visible(r, policies, instant)]
    rows.sort(key=lambda r: (-r["created_at"], r["id"]))
    state = pa.Table.from_pylist(rows, schema=STATE_SCHEMA)
    hashes = pa.array([text_hash(r["text"]) for r in rows], pa.string())
    return state.append_column("hash", hashes)


def policies_at(gen: Generation, tenant: Tenant, cut: Cut) -> list[dict[str, Any]]:
    """The tenant's retention policies in force at the cut (the last set/removed wins).

    A generation without a policies table has no policy event at all (write_rows creates
    the table before it writes a batch's POLICY_* audit rows): nothing to scan. The scan
    reads every event of the tenant up to the cut (no index selects the outcome), ~30 ms
    at 100k events and linear in the log, most of an as-of read of a large store."""
    if gen.policies() is None:
        return []
    where = f"{tenant_where(tenant)} AND {cut.where} AND {sql_in('outcome', POLICY_OUTCOMES)}"
    rows = _scan(gen, where, ["partition", "offset", "outcome", "payload"]).to_pylist()
    rows.sort(key=lambda r: (r["partition"], r["offset"]))
    policies: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        payload = json.loads(row["payload"] or "{}")
        policy_id = payload.get("policy_id")
        if policy_id is None:
            continue
        policies[policy_id] = payload if row["outcome"] == "POLICY_SET" else None
    return [p for _, p in sorted(policies.items()) if p is not None]


def _empty_state() -> pa.Table:
    return pa.table(
        {
            **{c: pa.array([], pa.string()) for c in STATE_COLUMNS},
            "categories": pa.array([], pa.list_(pa.string())),
            "created_at": pa.array([], pa.int64()),
            "updated_at": pa.array([], pa.int64()),
            "immutable": pa.array([], pa.bool_()),
            "expired_at": pa.array([], pa.int64()),
            "hash": pa.array([], pa.string()),
        }
    )


# --------------------------------------------------------------------------------------
# The reads
# --------------------------------------------------------------------------------------


class PointInTime:
    """get / get_all / search at a cut. Arguments are validated by MemoryReader first."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    def _state(
        self,
        tenant: Tenant,
        filters: Mapping[str, Any] | None,
        as_of: Any,
        show_expired: bool,
    ) -> list[dict[str, Any]]:
        compiled = compile_filters(filters, org_id=tenant.org_id, project_id=tenant.project_id)
        gen = self.projector.generation()
        cut = resolve_cut(gen, as_of)
        rows: list[dict[str, Any]] = fold_state(
            gen, tenant, cut, compiled, show_expired=show_expired
        ).to_pylist()
        return rows

    def get(self, tenant: Tenant, memory_id: str, as_of: Any) -> MemoryView:
        gen = self.projector.generation()
        cut = resolve_cut(gen, as_of)
        rows = fold_state(gen, tenant, cut, memory_id=memory_id).to_pylist()
        if not rows:
            raise NotFoundError(
                f"Memory not found as of {parse_as_of(as_of).describe()}: {memory_id}"
            )
        return MemoryView.from_row(rows[0])

    def get_all(
        self,
        tenant: Tenant,
        filters: Mapping[str, Any] | None,
        as_of: Any,
        *,
        page: int,
        page_size: int,
        show_expired: bool,
    ) -> Page:
        rows = self._state(tenant, filters, as_of, show_expired)  # newest first, then id
        return Page.of(rows, page, page_size)

    def search(
        self,
        tenant: Tenant,
        query: str,
        filters: Mapping[str, Any] | None,
        as_of: Any,
        *,
        top_k: int,
        threshold: float | None,
        show_expired: bool,
    ) -> list[MemoryView]:
        rows = self._state(tenant, filters, as_of, show_expired)
        if not rows:
            return []
        vectors = self._vectors([r["text"] for r in rows])
        q = np.asarray(self.projector.embedder.embed_one(query.strip()), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1) * (float(np.linalg.norm(q)) or 1.0)
        cosine = (vectors @ q) / np.where(norms == 0, 1.0, norms)
        scores = np.clip(cosine, 0.0, 1.0)
        order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), rows[i]["id"]))
        out = []
        for i in order[:top_k]:
            score = round(float(scores[i]), 6)
            if threshold is None or score >= threshold:
                out.append(MemoryView.from_row(rows[i], score=score))
        return out

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors from the embedding cache (every text once live was embedded there); a miss
        is embedded here but not written back: the projector is the cache's one writer."""
        cache = self.projector.cache
        keys = [text_hash(t) for t in texts]
        found = cache.get_many(sorted(set(keys)))
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if missing:
            vecs = self.projector.embedder.embed([t for _, t in missing])
            found.update(
                {k: np.asarray(v, np.float32) for (k, _), v in zip(missing, vecs, strict=True)}
            )
        return np.stack([found[k] for k in keys]).astype(np.float32)
