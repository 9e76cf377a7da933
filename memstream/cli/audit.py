"""CLI commands over the log's history: audit, export, stats, churn and the SQL console.

Registered on the shared `app` of `memstream.cli.common` when `memstream.cli` imports this
module. Like every command, they act for the configured org/project (--org-id/--project-id) and print one JSON document
with --json. `--as-of` takes what every point-in-time read takes (docs/audit.md): an ISO-8601
datetime (naive = UTC) or a log position `p:o` / an offset on partition 0.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from memstream.cli.common import (
    AgentId,
    AppId,
    Filters,
    RunId,
    UserId,
    app,
    emit,
    entity_filters,
    err,
    fail,
    out,
    run,
    state,
)
from memstream.errors import ValidationError

if TYPE_CHECKING:
    from memstream.service import Memstream

AsOf = typer.Option(
    None,
    "--as-of",
    help="Answer from the log as it was: ISO-8601 time (2026-11-24T10:00:00Z) or position 0:1234",
)


def _filters(
    filters: str | None, user_id: str | None, agent_id: str | None, app_id: str | None,
    run_id: str | None,
) -> dict[str, Any] | None:  # fmt: skip
    """--filters / --user-id...; None when neither is given (= the whole project)."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    return f if (f or filters is not None) else None


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


@app.command()
def audit(
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    start: str = typer.Option(None, "--from", help="ISO-8601 time, inclusive"),
    end: str = typer.Option(None, "--to", help="ISO-8601 time, exclusive"),
) -> None:
    """Every event in a time window [--from, --to): who, when, what changed and why."""
    from memstream.query.analytics import audit as audit_window

    f = _filters(filters, user_id, agent_id, app_id, run_id)

    async def body(ms: Memstream) -> list[dict[str, Any]]:
        await ms.catch_up()
        gen = ms.generation()
        return await asyncio.to_thread(audit_window, gen, ms.tenant, f, start=start, end=end)

    entries = run(body)

    def human() -> None:
        _table(
            f"{len(entries)} events",
            ["when", "event", "type", "memory", "old", "new", "reason", "actor", "request"],
            [
                [e["created_at"], e["event"], e["event_type"], (e["memory_id"] or "")[:8],
                 e["old_memory"], e["new_memory"],
                 (e.get("inference") or {}).get("explanation") or e["reason"],
                 e["actor"]["source"] or e["actor"]["key_id"], e["request_id"]]
                for e in entries
            ],
        )  # fmt: skip

    emit({"count": len(entries), "results": entries}, human)


@app.command()
def export(
    output: Path = typer.Option(..., "--output", "-o", help="the file to write"),
    fmt: str = typer.Option(
        None, "--format", help="json | jsonl | csv | parquet (default: from the file extension)"
    ),
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    as_of: str = AsOf,
    show_expired: bool = typer.Option(False, "--show-expired"),
) -> None:
    """Export the memories get-all returns (incl. metadata, categories, times; no vectors)."""
    from memstream.query.export import export_memories, format_of

    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    try:
        chosen = format_of(output, fmt)
    except ValidationError as exc:  # answer before loading the ledger stack
        fail(str(exc))

    async def body(ms: Memstream) -> tuple[int, str]:
        n, used = await export_memories(
            ms, output, chosen, f, as_of=as_of, show_expired=show_expired
        )
        await ms.attest_export(output, n)  # the chain heads, signed (docs/guarantees.md)
        return n, used

    count, chosen = run(body)
    emit(
        {"message": "Export written", "count": count, "format": chosen, "path": str(output)},
        lambda: out.print(f"exported {count} memories to {output} ({chosen})", highlight=False),
    )


@app.command()
def stats(
    by: str = typer.Option(None, "--by", help="user | agent | app | run | category | day"),
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    as_of: str = AsOf,
    show_expired: bool = typer.Option(False, "--show-expired"),
) -> None:
    """Count the memories a read would see (all of the project without filters), grouped."""
    from memstream.events import now_ms
    from memstream.query.analytics import GROUPINGS, live_memories
    from memstream.query.analytics import stats as count

    if by is not None and by not in GROUPINGS:
        fail(f"--by: must be one of {', '.join(GROUPINGS)}")
    f = _filters(filters, user_id, agent_id, app_id, run_id)

    async def body(ms: Memstream) -> dict[str, Any]:
        await ms.catch_up()
        gen = ms.generation()
        policies = ms.reader.policies(ms.tenant)

        def go() -> dict[str, Any]:
            rows = live_memories(
                gen, ms.tenant, f, policies=policies, now_ms=now_ms(), as_of=as_of,
                show_expired=show_expired,
            )  # fmt: skip
            return count(rows, by)

        result = await asyncio.to_thread(go)
        if (pinned := ms.status()["pinned"]) is not None:
            result["pinned"] = pinned
        return result

    result = run(body)

    def human() -> None:
        if "pinned" in result:
            out.print(f"(projection pinned at log position {result['pinned']})")
        if by is None:
            out.print(f"{result['total']} memories")
            return
        _table(
            f"{result['total']} memories by {by}",
            [by, "count"],
            [[r["key"], r["count"]] for r in result["results"]],
        )

    emit(result, human)


@app.command()
def churn(
    days: int = typer.Option(30, "--days", help="how many days back, today included"),
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
) -> None:
    """Memories added vs deleted (and expired) per UTC day, from the log."""
    from memstream.events import now_ms
    from memstream.query.analytics import churn as daily

    f = _filters(filters, user_id, agent_id, app_id, run_id)

    async def body(ms: Memstream) -> list[dict[str, Any]]:
        await ms.catch_up()
        gen = ms.generation()
        return await asyncio.to_thread(daily, gen, ms.tenant, f, days=days, now_ms=now_ms())

    rows = run(body)
    emit(
        {"days": days, "results": rows},
        lambda: _table(
            f"churn over {days} days",
            ["day", "added", "deleted", "expired", "net"],
            [[r["day"], r["added"], r["deleted"], r["expired"], r["net"]] for r in rows],
        ),
    )


@app.command()
def sql(
    query: str = typer.Argument(..., help='one SELECT, e.g. "SELECT user_id, count(*) ..."'),
    all_projects: bool = typer.Option(
        False, "--all-projects", help="every project in the data dir, not just --project-id"
    ),
) -> None:
    """Read-only SQL (DuckDB) over the `memories` and `events` views of the project."""
    from memstream.query.analytics import check_query, run_sql

    try:
        check_query(query)  # refuse before loading anything
    except Exception as exc:
        fail(str(exc))

    async def body(ms: Memstream) -> Any:
        await ms.catch_up()
        gen = ms.generation()
        tenant = None if all_projects else ms.tenant
        return await asyncio.to_thread(run_sql, gen, tenant, query)

    result = run(body)
    document = result.to_api()
    emit(
        document,
        lambda: _table(
            f"{document['count']} rows",
            document["columns"],
            [
                [json.dumps(v) if isinstance(v, dict | list) else v for v in row]
                for row in document["rows"]
            ],
        ),  # fmt: skip
    )
    if not state.json and not document["rows"]:
        err.print("(no rows)")
