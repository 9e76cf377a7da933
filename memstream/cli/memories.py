"""The memory commands: add, search, get-all, get, update, delete, delete-all, history.

Each is a thin call of the `Memstream` service; its answer prints as a table, or with --json
as the Mem0 REST document the same call answers over HTTP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from memstream.cli.common import (
    AgentId,
    AppId,
    AsOfOption,
    CandidateOption,
    Filters,
    RunId,
    UserId,
    app,
    emit,
    entity_filters,
    err,
    memory_table,
    out,
    parse_json,
    run,
    run_light,
    run_light_add,
    write_table,
)
from memstream.events import Actor
from memstream.models import UNSET, MemoryView, Page, WriteResult, iso_ms

if TYPE_CHECKING:
    from memstream.service import Memstream


@app.command()
def add(
    text: str = typer.Argument(
        ..., help="The memory text (or a JSON list of {role, content} messages)."
    ),
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    metadata: str = typer.Option(None, "--metadata", help="JSON object"),
    categories: str = typer.Option(None, "--categories", help="comma-separated"),
    expiration_date: str = typer.Option(None, "--expiration-date", help="YYYY-MM-DD"),
    immutable: bool = typer.Option(False, "--immutable"),
    request_id: str = typer.Option(
        None, "--request-id", help="idempotency key: a retry is a no-op"
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once durable, before projection"),
    infer: bool = typer.Option(
        False, "--infer", help="let the configured LLM decide what to remember (--llm-model)"
    ),
) -> None:
    """Add a memory (each non-system message becomes one memory; with --infer the LLM
    extracts facts and decides ADD/UPDATE/DELETE/NONE, see docs/inference.md)."""
    messages: Any = text
    if text.lstrip().startswith("["):
        messages = parse_json("messages", text)
    meta = parse_json("--metadata", metadata)
    inferred = "not_requested"

    async def go(ms: Memstream) -> list[WriteResult]:
        nonlocal inferred
        if infer:
            inferred = "on" if ms.inference_on else "off"
            if not ms.inference_on:
                err.print("memstream: no LLM configured (--llm-base-url/--llm-model): "
                          "storing the messages verbatim")  # fmt: skip
        return await ms.add(
            messages, infer=infer, user_id=user_id, agent_id=agent_id, app_id=app_id,
            run_id=run_id, metadata=meta, categories=categories,
            expiration_date=expiration_date, immutable=immutable, request_id=request_id,
            actor=Actor(source="cli"), wait=not no_wait,
        )  # fmt: skip

    from memstream.cli.forward import NOT_FORWARDED, forward

    results: list[WriteResult] | None = None
    if not infer:  # an inferred add asks this command's LLM settings, not the server's
        sent = forward("add", {
            "messages": messages, "user_id": user_id, "agent_id": agent_id, "app_id": app_id,
            "run_id": run_id, "metadata": meta, "categories": categories,
            "expiration_date": expiration_date, "immutable": immutable,
            "request_id": request_id, "wait": not no_wait,
        }, write=True)  # fmt: skip
        if sent is not NOT_FORWARDED:
            results = [WriteResult(**r) for r in sent]
        else:  # no server: through `lance` alone when the projection is current
            results = run_light_add(
                messages, user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
                metadata=meta, categories=categories, expiration_date=expiration_date,
                immutable=immutable, request_id=request_id, wait=not no_wait,
            )  # fmt: skip
    done = results if results is not None else run(go)
    emit(
        {"results": [r.to_api() for r in done], "inference": inferred},
        lambda: write_table(done),
    )


@app.command()
def search(
    query: str = typer.Argument(...),
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    top_k: int = typer.Option(10, "--top-k"),
    threshold: float = typer.Option(None, "--threshold", help="minimum score 0..1"),
    show_expired: bool = typer.Option(False, "--show-expired"),
    as_of: str = AsOfOption,
    candidate: str = CandidateOption,
) -> None:
    """Semantic search within a scope."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    from memstream.cli.forward import NOT_FORWARDED, forward

    found = None
    sent: Any = NOT_FORWARDED
    if candidate is None:  # a reinfer candidate is read here (the server reads the live one)
        sent = forward("search", {"query": query, "filters": f, "top_k": top_k,
                                  "threshold": threshold, "show_expired": show_expired,
                                  "as_of": as_of})  # fmt: skip
    if sent is not NOT_FORWARDED:
        found = [MemoryView(**m) for m in sent]
    elif as_of is None and candidate is None:  # the light path reads the live generation now
        found = run_light(
            lambda lr: lr.search(
                query, f, top_k=top_k, threshold=threshold, show_expired=show_expired
            )
        )
    if found is None:
        found = run(
            lambda ms: ms.search(
                query,
                f,
                top_k=top_k,
                threshold=threshold,
                show_expired=show_expired,
                as_of=as_of,
                candidate=candidate,
            )
        )
    emit({"results": [m.to_api() for m in found]}, lambda: memory_table(found, f"search: {query}"))


@app.command("get-all")
def get_all(
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    page: int = typer.Option(1, "--page"),
    page_size: int = typer.Option(100, "--page-size"),
    show_expired: bool = typer.Option(False, "--show-expired"),
    as_of: str = AsOfOption,
    candidate: str = CandidateOption,
) -> None:
    """List the memories of a scope, newest first."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    from memstream.cli.forward import NOT_FORWARDED, forward

    result = None
    sent: Any = NOT_FORWARDED
    if candidate is None:  # a reinfer candidate is read here (the server reads the live one)
        sent = forward("get_all", {"filters": f, "page": page, "page_size": page_size,
                                   "show_expired": show_expired, "as_of": as_of})  # fmt: skip
    if sent is not NOT_FORWARDED:
        result = Page(sent["count"], sent["page"], sent["page_size"],
                      [MemoryView(**m) for m in sent["results"]])  # fmt: skip
    elif as_of is None and candidate is None:  # the light path reads the live generation now
        result = run_light(
            lambda lr: lr.get_all(f, page=page, page_size=page_size, show_expired=show_expired)
        )
    if result is None:
        result = run(
            lambda ms: ms.get_all(
                f,
                page=page,
                page_size=page_size,
                show_expired=show_expired,
                as_of=as_of,
                candidate=candidate,
            )
        )
    emit(
        {"count": result.count, "page": result.page, "page_size": result.page_size,
         "results": [m.to_api() for m in result.results]},
        lambda: memory_table(result.results, f"{result.count} memories"),
    )  # fmt: skip


@app.command()
def get(memory_id: str, as_of: str = AsOfOption) -> None:
    """Show one memory."""
    m = run(lambda ms: ms.get(memory_id, as_of=as_of))
    emit(m.to_api(), lambda: out.print_json(json.dumps(m.to_api(), ensure_ascii=False)))


@app.command()
def update(
    memory_id: str,
    text: str = typer.Option(None, "--text"),
    metadata: str = typer.Option(
        None, "--metadata", help="JSON object (replaces the old metadata)"
    ),
    categories: str = typer.Option(None, "--categories"),
    expiration_date: str = typer.Option(
        None, "--expiration-date", help="YYYY-MM-DD, or 'none' to clear"
    ),
    request_id: str = typer.Option(None, "--request-id"),
) -> None:
    """Change a memory's text and/or metadata."""
    meta = parse_json("--metadata", metadata)
    exp: Any = (
        UNSET
        if expiration_date is None
        else (None if expiration_date == "none" else expiration_date)
    )

    async def body(ms: Memstream) -> MemoryView:
        await ms.update(memory_id, text=text, metadata=meta, categories=categories,
                        expiration_date=exp, request_id=request_id, actor=Actor(source="cli"))  # fmt: skip
        return await ms.get(memory_id, consistent=False)

    m = run(body)
    emit(m.to_api(), lambda: out.print(f"UPDATE {m.id}  {m.memory}", highlight=False))


@app.command()
def delete(memory_id: str, request_id: str = typer.Option(None, "--request-id")) -> None:
    """Delete one memory (its events stay in the log)."""
    run(lambda ms: ms.delete(memory_id, request_id=request_id, actor=Actor(source="cli")))
    emit({"message": "Memory deleted successfully!"}, lambda: out.print(f"DELETE {memory_id}"))


@app.command("delete-all")
def delete_all(
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    request_id: str = typer.Option(None, "--request-id"),
) -> None:
    """Delete every memory matching a scope (one MemoryDeleted per memory + an audit event)."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    count = run(lambda ms: ms.delete_all(f, request_id=request_id, actor=Actor(source="cli")))
    emit({"message": "Memories deleted successfully!", "count": count},
         lambda: out.print(f"deleted {count} memories"))  # fmt: skip


@app.command()
def history(memory_id: str) -> None:
    """Every event of a memory, from the log."""
    entries = run(lambda ms: ms.history(memory_id))

    def human() -> None:
        table = Table(title=f"history of {memory_id}")
        for col in ("when", "event", "type", "old", "new", "reason / why", "actor"):
            table.add_column(col, overflow="fold")
        for h in entries:
            why = (h.inference or {}).get("explanation") or h.reason or ""
            table.add_row(iso_ms(h.created_at) or "", h.event, h.event_type, h.old_memory or "",
                          h.new_memory or "", why, h.actor_source or "")  # fmt: skip
        out.print(table)

    emit({"results": [h.to_api() for h in entries]}, human)
