"""DuckDB over the projections: audit windows, counts, churn and a read-only SQL console.

Everything here reads the LanceDB tables of the live generation as Arrow and answers with
DuckDB; nothing writes. Tenancy comes first in every read: the rows of one (org, project)
are selected in the Lance scan, before any user-supplied filter or SQL sees them.

Filters reuse the filter language (`compile_filters(...).duckdb`). Over `events` rows the
memory columns it names mean: `id` = the event's memory_id, `created_at`/`updated_at` = the
event's occurred_at, `text`/`metadata` = the event's new value, or the old one when the event
carries none (a delete), `expiration_date` = the one the event set. Entity ids and tenancy
mean what they mean on memories, so `{"user_id": "alice"}` selects the events of alice's
memories that have no agent, app or run (implicit null scoping), exactly as a read would.
Without filters, every row of the project is counted.

The SQL console (`run_sql`) accepts exactly one SELECT (or WITH ... SELECT, FROM-first,
DESCRIBE, SUMMARIZE) statement, parsed by DuckDB before anything runs. It runs on a private
in-memory DuckDB holding only two tables, `memories` and `events`, copied from the
projection, with file system access, extension loading and Python object scans disabled and
the configuration locked, so `read_csv('/etc/passwd')`, COPY, ATTACH, INSTALL/LOAD and SET
are refused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from memstream.errors import ValidationError
from memstream.models import HistoryEntry, Tenant
from memstream.projector.store import Generation
from memstream.query.explain import explain
from memstream.query.filters import CompiledFilter, compile_filters
from memstream.query.retention import visible
from memstream.query.timetravel import (
    ADDING_OUTCOMES,
    EXPIRING_OUTCOMES,
    REMOVING_OUTCOMES,
    duck,
    entity_pushdown,
    fold_state,
    parse_instant,
    resolve_cut,
    tenant_where,
)

__all__ = [
    "GROUPINGS",
    "SqlResult",
    "audit",
    "churn",
    "load_events",
    "load_memories",
    "run_sql",
    "stats",
]

MS_PER_DAY = 86_400_000

MEMORY_COLUMNS = (
    "id", "org_id", "project_id", "user_id", "agent_id", "app_id", "run_id", "text", "hash",
    "metadata", "categories", "created_at", "updated_at", "expiration_date", "immutable",
    "expired_at", "partition", "created_offset", "last_offset",
)  # fmt: skip
"""Every column of the `memories` projection except the vector (the ones a table has)."""


# --------------------------------------------------------------------------------------
# Loading the projections as Arrow
# --------------------------------------------------------------------------------------


def _scan(table: Any, where: str | None, columns: list[str]) -> pa.Table:
    query = table.search()
    if where:
        query = query.where(where)
    result: pa.Table = query.select(columns).limit(None).to_arrow()
    return result


def load_memories(gen: Generation, tenant: Tenant | None, where: str | None = None) -> pa.Table:
    """The memories projection without vectors, for one tenant (None: every project)."""
    table = gen.memories()
    if table is None:
        return _empty_memories()
    names = set(table.schema.names)
    columns = [c for c in MEMORY_COLUMNS if c in names]
    clauses = [c for c in (tenant_where(tenant) if tenant else None, where) if c]
    return _scan(table, " AND ".join(clauses) or None, columns)


def load_events(gen: Generation, tenant: Tenant | None, where: str | None = None) -> pa.Table:
    """The events projection, for one tenant (None: every project)."""
    table = gen.events()
    clauses = [c for c in (tenant_where(tenant) if tenant else None, where) if c]
    if table is None:
        from memstream.projector.tables import EVENTS_SCHEMA

        return EVENTS_SCHEMA.empty_table()
    return _scan(table, " AND ".join(clauses) or None, list(table.schema.names))


def _empty_memories() -> pa.Table:
    from memstream.projector.tables import memories_schema

    schema = memories_schema(1)
    return pa.schema([schema.field(c) for c in MEMORY_COLUMNS if c in schema.names]).empty_table()


def _compile(tenant: Tenant, filters: Mapping[str, Any] | None) -> CompiledFilter | None:
    """None (no filters): every row of the project; else the filter, entity not required."""
    if filters is None:
        return None
    return compile_filters(
        filters, org_id=tenant.org_id, project_id=tenant.project_id, require_entity=False
    )


# the memory columns compile_filters names, computed from an events row
EVENT_AS_MEMORY = """
    SELECT "partition", "offset",
        memory_id AS id, org_id, project_id, user_id, agent_id, app_id, run_id,
        coalesce(text, old_text) AS text,
        coalesce(metadata, old_metadata) AS metadata,
        categories,
        occurred_at AS created_at, occurred_at AS updated_at,
        json_extract_string(payload, '$.expiration_date') AS expiration_date
    FROM raw_events
"""


def _filter_events(events: pa.Table, compiled: CompiledFilter | None) -> pa.Table:
    """The event rows the filter selects (see the module docstring for the column meanings)."""
    if compiled is None or events.num_rows == 0:
        return events
    sql, params = compiled.duckdb
    with duck() as con:
        con.register("raw_events", events)
        keep = con.sql(
            f"""SELECT r.* FROM raw_events r SEMI JOIN (
                    SELECT "partition", "offset" FROM ({EVENT_AS_MEMORY}) WHERE {sql}
                ) k ON r."partition" = k."partition" AND r."offset" = k."offset" """,
            params=params,
        ).to_arrow_table()
    return keep.cast(events.schema)


# --------------------------------------------------------------------------------------
# Audit window
# --------------------------------------------------------------------------------------


def audit(
    gen: Generation,
    tenant: Tenant,
    filters: Mapping[str, Any] | None,
    *,
    start: Any = None,
    end: Any = None,
) -> list[dict[str, Any]]:
    """Every event of the tenant in [start, end) that the filters select, in time order:
    who (actor key / source, request id), when, what (old and new text and metadata), why
    (the delete reason, the projector's outcome, the event's own details)."""
    compiled = _compile(tenant, filters)
    where = []
    lo = parse_instant(start, "from") if start is not None else None
    hi = parse_instant(end, "to") if end is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise ValidationError("to: must not be before from")
    if lo is not None:
        where.append(f"occurred_at >= {lo}")
    if hi is not None:
        where.append(f"occurred_at < {hi}")
    if compiled is not None:
        where.extend(entity_pushdown(compiled.ast, "memory_id"))
    events = _filter_events(load_events(gen, tenant, " AND ".join(where) or None), compiled)
    rows = sorted(events.to_pylist(), key=lambda r: (r["occurred_at"], r["partition"], r["offset"]))
    why = explain(gen, rows)
    return [audit_entry(r, why.get(r["event_id"])) for r in rows]


def audit_entry(row: dict[str, Any], inference: dict[str, Any] | None = None) -> dict[str, Any]:
    entry = HistoryEntry.from_row(row, inference=inference).to_api()
    entry["resolved_memory_id"] = row.get("resolved_memory_id")
    entry["details"] = json.loads(row["payload"] or "{}")
    return entry


# --------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------

GROUPINGS: dict[str, str] = {
    "user": "user_id",
    "agent": "agent_id",
    "app": "app_id",
    "run": "run_id",
    "category": "category",
    "day": "day",
}


def live_memories(
    gen: Generation,
    tenant: Tenant,
    filters: Mapping[str, Any] | None,
    *,
    policies: list[dict[str, Any]],
    now_ms: int,
    as_of: Any = None,
    show_expired: bool = False,
) -> pa.Table:
    """The memories a read would see (now, or at `as_of`), for counting and exporting."""
    compiled = _compile(tenant, filters)
    if as_of is not None:
        return fold_state(gen, tenant, resolve_cut(gen, as_of), compiled, show_expired=show_expired)
    pushed = entity_pushdown(compiled.ast, "id") if compiled else []
    rows = load_memories(gen, tenant, " AND ".join(pushed) or None)
    clauses: list[str] = []
    params: list[Any] = []
    if compiled is not None:
        sql, params = compiled.duckdb
        clauses.append(f"({sql})")
    if not show_expired:
        if "expired_at" not in rows.schema.names:
            rows = rows.append_column("expired_at", pa.nulls(rows.num_rows, pa.int64()))
        clauses.append(f"({visible(policies, now_ms)})")
    if not clauses or rows.num_rows == 0:
        return rows
    with duck() as con:
        con.register("m", rows)
        result: pa.Table = con.sql(
            f"SELECT * FROM m WHERE {' AND '.join(clauses)}", params=params
        ).to_arrow_table()
    return result


def stats(memories: pa.Table, by: str | None) -> dict[str, Any]:
    """{"total": n, "by": by, "results": [{"key": k, "count": n}, ...]} over memory rows.

    `category` counts a memory once per category (a memory without one counts under null);
    `day` is the UTC day of created_at. Largest counts first, then by key.
    """
    total = memories.num_rows
    if by is None:
        return {"total": total, "by": None, "results": []}
    if by not in GROUPINGS:
        raise ValidationError(f"by: must be one of {', '.join(GROUPINGS)}")
    key = {
        "category": "unnest(CASE WHEN len(categories) = 0 THEN [NULL] ELSE categories END)",
        "day": "strftime(epoch_ms(created_at), '%Y-%m-%d')",
    }.get(by, GROUPINGS[by])
    with duck() as con:
        con.register("m", memories)
        counted = con.sql(
            f"""SELECT key, count(*) AS count FROM (SELECT {key} AS key FROM m)
                GROUP BY key ORDER BY count DESC, key NULLS LAST"""
        ).fetchall()
    return {
        "total": total,
        "by": by,
        "results": [{"key": k, "count": int(n)} for k, n in counted],
    }


def churn(
    gen: Generation,
    tenant: Tenant,
    filters: Mapping[str, Any] | None,
    *,
    days: int,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Per UTC day of the last `days` (today included, oldest first): memories added,
    deleted (DELETE and ERASE outcomes), expired, and net = added - deleted."""
    if not 1 <= days <= 3660:
        raise ValidationError("days: must be between 1 and 3660")
    today = now_ms // MS_PER_DAY
    first = (today - days + 1) * MS_PER_DAY
    compiled = _compile(tenant, filters)
    where = [f"occurred_at >= {first}", f"occurred_at < {(today + 1) * MS_PER_DAY}"]
    if compiled is not None:
        where.extend(entity_pushdown(compiled.ast, "memory_id"))
    events = _filter_events(load_events(gen, tenant, " AND ".join(where)), compiled)
    counts: dict[int, dict[str, int]] = {
        d: {"added": 0, "deleted": 0, "expired": 0} for d in range(today - days + 1, today + 1)
    }
    for occurred_at, outcome in zip(
        events["occurred_at"].to_pylist(), events["outcome"].to_pylist(), strict=True
    ):
        day = counts[occurred_at // MS_PER_DAY]
        if outcome in ADDING_OUTCOMES:
            day["added"] += 1
        elif outcome in REMOVING_OUTCOMES:
            day["deleted"] += 1
        elif outcome in EXPIRING_OUTCOMES:
            day["expired"] += 1
    return [
        {
            "day": dt.date.fromordinal(dt.date(1970, 1, 1).toordinal() + d).isoformat(),
            **c,
            "net": c["added"] - c["deleted"],
        }
        for d, c in sorted(counts.items())
    ]


# --------------------------------------------------------------------------------------
# The SQL console
# --------------------------------------------------------------------------------------

ALLOWED_STATEMENTS = ("SELECT",)

CONSOLE_MEMORIES = """
    SELECT id, org_id, project_id, user_id, agent_id, app_id, run_id, text, hash,
        metadata::JSON AS metadata, categories,
        epoch_ms(created_at)::TIMESTAMPTZ AS created_at,
        epoch_ms(updated_at)::TIMESTAMPTZ AS updated_at,
        TRY_CAST(expiration_date AS DATE) AS expiration_date,
        immutable,
        epoch_ms(expired_at)::TIMESTAMPTZ AS expired_at,
        "partition", created_offset, last_offset
    FROM src
"""

CONSOLE_EVENTS = """
    SELECT "partition", "offset", event_id, event_type, outcome,
        epoch_ms(occurred_at)::TIMESTAMPTZ AS occurred_at,
        org_id, project_id, memory_id, resolved_memory_id, user_id, agent_id, app_id, run_id,
        actor_key_id, actor_source, request_id, text, old_text,
        metadata::JSON AS metadata, old_metadata::JSON AS old_metadata, categories, reason,
        payload::JSON AS payload
    FROM src
"""

_LOCKDOWN = (
    "SET enable_external_access = false",
    "SET python_enable_replacements = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET lock_configuration = true",
)


@dataclass(frozen=True)
class SqlResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_api(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": [[jsonable(v) for v in row] for row in self.rows],
            "count": len(self.rows),
        }


def jsonable(value: Any) -> Any:
    """A DuckDB result value as JSON: times as ISO-8601 (UTC 'Z'), decimals as numbers."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        return float(value)  # Decimal, numpy scalars
    except (TypeError, ValueError):
        return str(value)


def check_query(query: str) -> str:
    """The one SELECT statement in `query`, or ValidationError saying why it is refused."""
    if not isinstance(query, str) or not query.strip():
        raise ValidationError("sql: give one SELECT query")
    parser = duckdb.connect(":memory:")
    try:
        statements = parser.extract_statements(query)
    except duckdb.Error as exc:
        raise ValidationError(f"sql: {_first_line(exc)}") from None
    finally:
        parser.close()
    if len(statements) != 1:
        raise ValidationError(
            f"sql: give exactly one query, got {len(statements)} statements "
            "(the console is read-only: one SELECT or WITH ... SELECT)"
        )
    [statement] = statements
    kind = statement.type.name
    if kind not in ALLOWED_STATEMENTS:
        raise ValidationError(
            f"sql: refused: {kind} statements are not allowed; the console is read-only and runs only "
            "SELECT / WITH queries over the memories and events views"
        )
    return str(statement.query)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def console(memories: pa.Table, events: pa.Table) -> duckdb.DuckDBPyConnection:
    """A private DuckDB with only `memories` and `events`, locked down (module docstring)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if "expired_at" not in memories.schema.names:
        memories = memories.append_column("expired_at", pa.nulls(memories.num_rows, pa.int64()))
    for name, table, select in (
        ("memories", memories, CONSOLE_MEMORIES),
        ("events", events, CONSOLE_EVENTS),
    ):
        con.register("src", table)
        con.execute(f"CREATE TABLE {name} AS {select}")
        con.unregister("src")
    for statement in _LOCKDOWN:
        con.execute(statement)
    return con


def run_sql(gen: Generation, tenant: Tenant | None, query: str) -> SqlResult:
    """Run one read-only query over `memories` and `events` of `tenant` (None: every project)."""
    sql = check_query(query)
    con = console(load_memories(gen, tenant), load_events(gen, tenant))
    try:
        result = con.execute(sql)
        columns = [d[0] for d in result.description or []]
        rows = result.fetchall()
    except duckdb.PermissionException as exc:
        raise ValidationError(
            "sql: refused: the console reads only the memories and events views; files, "
            f"databases and extensions are out of reach ({_first_line(exc)})"
        ) from None
    except duckdb.Error as exc:
        raise ValidationError(f"sql: {_first_line(exc)}") from None
    finally:
        con.close()
    return SqlResult(columns, rows)
