"""`memstream` command line: the ledger on the embedded defaults, or on Kafka with --kafka.

With --json every command prints exactly one JSON document on stdout, shaped like the Mem0
REST response; errors then print `{"detail": ...}` and exit non-zero. Without it, tables.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from memstream.errors import MemstreamError, ValidationError
from memstream.events import Actor
from memstream.models import UNSET, MemoryView, WriteResult, iso_ms
from memstream.settings import Settings

if TYPE_CHECKING:  # the ledger stack (LanceDB alone takes ~3 s to import) loads on first use,
    from memstream.service import Memstream  # so --help and bad input answer at once

app = typer.Typer(
    help="memstream: an event-sourced memory ledger for AI agents (Mem0-compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


class State:
    settings: Settings
    json: bool = False


state = State()


@app.callback()
def main_options(
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        envvar="MEMSTREAM_DATA_DIR",
        help="Where the log and projections live.",
        show_default="./memstream-data",
    ),
    kafka: str = typer.Option(
        None,
        "--kafka",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers; absent -> the embedded file log.",
    ),
    topic: str = typer.Option(
        None, "--topic", envvar="MEMSTREAM_TOPIC", show_default="memstream.events"
    ),
    embedder: str = typer.Option(
        None,
        "--embedder",
        envvar="MEMSTREAM_EMBEDDER",
        show_default="the projection's own, else minilm",
        help="minilm | hashing | openai:<model> | sentence-transformers",
    ),
    org_id: str = typer.Option(None, "--org-id", envvar="MEMSTREAM_ORG_ID", show_default="local"),
    project_id: str = typer.Option(
        None, "--project-id", envvar="MEMSTREAM_PROJECT_ID", show_default="default"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON document (Mem0 REST shape)."
    ),
) -> None:
    state.settings = Settings.from_env(
        data_dir=data_dir, kafka_bootstrap=kafka, topic=topic, embedder=embedder,
        org_id=org_id, project_id=project_id,
    )  # fmt: skip
    state.json = as_json


# -- plumbing ----------------------------------------------------------------------------
def run(
    body: Callable[[Memstream], Awaitable[T]],
    *,
    settings: Settings | None = None,
    for_replay: bool = False,
) -> T:
    from memstream.service import Memstream

    async def go() -> T:
        ms = Memstream(settings or state.settings)
        await ms.start(for_replay=for_replay)
        try:
            return await body(ms)
        finally:
            await ms.close()

    try:
        return asyncio.run(go())
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def fail(message: str, code: int = 2) -> NoReturn:
    if state.json:
        print(json.dumps({"detail": message}))
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def parse_json(option: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option}: not valid JSON ({exc.msg} at position {exc.pos})")


def emit(document: Any, human: Callable[[], None]) -> None:
    if state.json:
        print(json.dumps(document, ensure_ascii=False))
    else:
        human()


def entity_filters(filters: str | None, ids: dict[str, str | None]) -> dict[str, Any]:
    """--filters JSON, or the --user-id/... options as a simple entity filter."""
    parsed = parse_json("--filters", filters)
    given = {k: v for k, v in ids.items() if v is not None}
    if parsed is not None and given:
        fail("give either --filters or --user-id/--agent-id/--app-id/--run-id, not both")
    if parsed is not None:
        if not isinstance(parsed, dict):
            fail("--filters: must be a JSON object")
        return dict(parsed)
    return given


def memory_table(memories: list[MemoryView], title: str) -> None:
    table = Table(title=title, show_lines=False)
    for col in ("id", "memory", "user", "agent", "app", "run", "created"):
        table.add_column(col, overflow="fold")
    if memories and memories[0].score is not None:
        table.add_column("score")
    for m in memories:
        row = [m.id[:8], m.memory, m.user_id or "", m.agent_id or "", m.app_id or "", m.run_id or "",
               iso_ms(m.created_at) or ""]  # fmt: skip
        if m.score is not None:
            row.append(f"{m.score:.3f}")
        table.add_row(*row)
    out.print(table)


def write_table(results: list[WriteResult]) -> None:
    for r in results:
        out.print(f"{r.event:<6} {r.id}  {r.memory or ''}", highlight=False)


UserId = typer.Option(None, "--user-id")
AgentId = typer.Option(None, "--agent-id")
AppId = typer.Option(None, "--app-id")
RunId = typer.Option(None, "--run-id")
Filters = typer.Option(None, "--filters", help='JSON, e.g. \'{"user_id": "alice", "run_id": "*"}\'')
AsOfOption = typer.Option(
    None, "--as-of", help="read the log as it was: ISO-8601 time, or log position 0:1234"
)


# -- commands ----------------------------------------------------------------------------
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
) -> None:
    """Add a memory (each non-system message becomes one memory)."""
    messages: Any = text
    if text.lstrip().startswith("["):
        messages = parse_json("messages", text)
    meta = parse_json("--metadata", metadata)
    results = run(lambda ms: ms.add(
        messages, user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
        metadata=meta, categories=categories, expiration_date=expiration_date,
        immutable=immutable, request_id=request_id, actor=Actor(source="cli"), wait=not no_wait,
    ))  # fmt: skip
    emit({"results": [r.to_api() for r in results]}, lambda: write_table(results))


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
) -> None:
    """Semantic search within a scope."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    found = run(
        lambda ms: ms.search(
            query, f, top_k=top_k, threshold=threshold, show_expired=show_expired, as_of=as_of
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
) -> None:
    """List the memories of a scope, newest first."""
    f = entity_filters(
        filters, {"user_id": user_id, "agent_id": agent_id, "app_id": app_id, "run_id": run_id}
    )
    result = run(
        lambda ms: ms.get_all(
            f, page=page, page_size=page_size, show_expired=show_expired, as_of=as_of
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
        for col in ("when", "event", "type", "old", "new", "reason", "actor"):
            table.add_column(col, overflow="fold")
        for h in entries:
            table.add_row(iso_ms(h.created_at) or "", h.event, h.event_type, h.old_memory or "",
                          h.new_memory or "", h.reason or "", h.actor_source or "")  # fmt: skip
        out.print(table)

    emit({"results": [h.to_api() for h in entries]}, human)


@app.command()
def replay(
    to_position: str = typer.Option(
        None,
        "--to-position",
        help="rebuild only up to and including this log position (0:1234, or 0:12,1:40 on "
        "Kafka) and pin the projection there: writes are refused until `memstream replay` "
        "without it rebuilds to the end and unpins",
    ),
    embedder: str = typer.Option(
        None,
        "--embedder",
        help="re-embed every memory with this model (minilm | hashing | openai:<model> | "
        "sentence-transformers); the rebuilt projection then uses it",
    ),
) -> None:
    """Rebuild every projection from the start of the log into fresh tables, then swap them in."""

    async def body(ms: Memstream) -> dict[str, Any]:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, disable=state.json,
        ) as bar:  # fmt: skip
            task = bar.add_task("replaying", total=None)
            n = await ms.replay(
                lambda done, total: bar.update(task, completed=done, total=total),
                to_position=to_position,
            )
        return {"message": "Replay complete", "events": n, "pinned": ms.status()["pinned"]}

    settings = replace(state.settings, embedder=embedder) if embedder else None
    result = run(body, settings=settings, for_replay=True)

    def human() -> None:
        out.print(f"replayed {result['events']} events")
        if result["pinned"] is not None:
            out.print(
                f"pinned at log position {result['pinned']}: writes are refused until "
                "`memstream replay` (without --to-position) rebuilds to the end and unpins"
            )

    emit(result, human)


@app.command()
def status() -> None:
    """The live projection: its generation, how far it has projected, and its pin if any."""

    async def body(ms: Memstream) -> dict[str, Any]:
        return ms.status()

    result = run(body)

    def human() -> None:
        out.print(f"log         {result['log']}", highlight=False)
        out.print(f"generation  {result['generation']}", highlight=False)
        position = ",".join(f"{p}:{o}" for p, o in result["checkpoint"].items()) or "(empty)"
        out.print(f"projected   next offsets {position}", highlight=False)
        if result["pinned"] is not None:
            out.print(
                f"pinned      at log position {result['pinned']} (replay --to-position): "
                "writes are refused; `memstream replay` rebuilds to the end and unpins",
                highlight=False,
            )
        else:
            out.print("pinned      no", highlight=False)

    emit(result, human)


@app.command()
def project(
    once: bool = typer.Option(False, "--once", help="catch up and exit"),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="events per LanceDB write"),
) -> None:
    """Run the projector standalone: consume the log into LanceDB until stopped."""

    async def body(ms: Memstream) -> int:
        ms.projector.batch_size = batch_size
        if once:
            await ms.catch_up()
            return sum(ms.projector.checkpoint.values())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"projecting {ms.settings.log_description} into {ms.data_dir} (Ctrl-C to stop)")
        await ms.projector.run_forever(stop)
        return sum(ms.projector.checkpoint.values())

    n = run(body)
    emit(
        {"message": "Projector stopped", "position": n},
        lambda: out.print(f"projected up to {n} events"),
    )


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="keep the temporary data dir"),
) -> None:
    """Walk through the whole idea on a temporary data dir."""
    from memstream.demo import run_demo

    run_demo(state.settings, out, keep=keep)


# == REST server and API keys (issue 5) ===================================================
keys_app = typer.Typer(help="API keys for the REST server (stored as events on the keys log).",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", envvar="MEMSTREAM_HOST"),
    port: int = typer.Option(8000, "--port", envvar="MEMSTREAM_PORT", min=0, max=65535),
    log_level: str = typer.Option(
        "info", "--log-level", help="critical | error | warning | info | debug"
    ),
) -> None:
    """Run the Mem0-compatible REST server with its projector (file log, or Kafka with --kafka)."""
    from memstream.server import serve as run_server

    err.print(f"memstream: serving on http://{host}:{port} ({state.settings.log_description})")
    run_server(state.settings, host=host, port=port, log_level=log_level)


def run_keys(body: Callable[[Any], Awaitable[T]]) -> T:
    from memstream.keys import KeyRegistry

    async def go() -> T:
        async with KeyRegistry.from_settings(state.settings) as registry:
            return await body(registry)

    try:
        return asyncio.run(go())
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)


@keys_app.command("create")
def keys_create(
    org_id: str = typer.Option(..., "--org-id", help="the organisation the key speaks for"),
    project_id: str = typer.Option(..., "--project-id", help="the project the key speaks for"),
    name: str = typer.Option(None, "--name", help="a label for `keys list`"),
) -> None:
    """Issue a key. The key is shown once, alone on the last line of output."""
    key, token = run_keys(lambda r: r.create(org_id, project_id, name, actor=Actor(source="cli")))
    if state.json:
        print(json.dumps({**key.to_public(), "key": token}))
    else:
        err.print(f"created key {key.key_id} for org {key.org_id}, project {key.project_id} "
                  "(shown once; only its hash is stored):")  # fmt: skip
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """Every key issued (never the keys themselves)."""

    async def listed(registry: Any) -> list[Any]:
        return list(registry.list())

    keys = run_keys(listed)

    def human() -> None:
        table = Table(title=f"{len(keys)} API keys")
        for col in ("key_id", "org_id", "project_id", "name", "created", "revoked"):
            table.add_column(col, overflow="fold")
        for k in keys:
            p = k.to_public()
            table.add_row(k.key_id, k.org_id, k.project_id, k.name or "", p["created_at"] or "",
                          p["revoked_at"] or "")  # fmt: skip
        out.print(table)

    emit({"results": [k.to_public() for k in keys]}, human)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key_id shown by `keys list`")) -> None:
    """Revoke a key: every server refuses it (401) within a second."""
    key = run_keys(lambda r: r.revoke(key_id, actor=Actor(source="cli")))
    emit(key.to_public(), lambda: out.print(f"revoked {key.key_id}"))


# == end of REST server and API keys =======================================================


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" in args[1:]:  # accept the global flag after the command too, as users write it
        cut = args.index("--") if "--" in args else len(args)
        args = ["--json", *[a for a in args[:cut] if a != "--json"], *args[cut:]]
    try:
        app(args=args)
    except BrokenPipeError:
        sys.exit(1)


# commands kept in their own modules register themselves on `app`
import memstream.cli_audit  # noqa: E402, F401  (audit, export, stats, churn, sql)
from memstream import cli_erase, cli_log, cli_retention  # noqa: E402, F401

if __name__ == "__main__":
    # `python -m memstream.cli` runs this file as __main__; the commands of the modules above
    # registered themselves on the app of the imported `memstream.cli`, so run that one
    from memstream.cli import main as registered_main

    registered_main()
