"""Inference commands: `reinfer` re-decides the recorded conversations of a scope (or of every
scope a filter selects) with another model into a proposal and its candidate generation,
prints what would appear, change or go, and swaps it in on request (docs/inference.md).

    memstream reinfer --user-id alice --model M      propose: candidate + difference
    memstream reinfer show|swap|discard PROPOSAL     judge, make live, or drop the candidate
    memstream reinfer list                           the project's proposals
    memstream search/get-all --candidate PROPOSAL    read the candidate like the live memories
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
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
from memstream.models import iso_ms

if TYPE_CHECKING:
    from memstream.service import Memstream

DEFAULT_LIMIT = 100  # memstream.producers.reinfer.MAX_CONVERSATIONS (not imported: CLI speed)

reinfer_app = typer.Typer(
    help="Re-decide recorded conversations with another model into a candidate generation; "
    "judge it, then swap it in (docs/inference.md).",
    no_args_is_help=False,
)
app.add_typer(reinfer_app, name="reinfer")

ProposalArg = typer.Argument(..., help="the proposal id `memstream reinfer` printed")


@contextmanager
def _bars() -> Iterator[tuple[Callable[[int, int], None], Callable[[int, int], None]]]:
    """Two progress bars on stderr (none with --json): conversations re-decided, and
    events folded into the candidate generation."""
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, disable=state.json,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def updater(name: str) -> Callable[[int, int], None]:
            def update(done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)

            return update

        yield updater("re-deciding conversations"), updater("building the candidate generation")


@reinfer_app.callback(invoke_without_command=True)
def reinfer(
    ctx: typer.Context,
    filters: str = Filters,
    user_id: str = UserId,
    agent_id: str = AgentId,
    app_id: str = AppId,
    run_id: str = RunId,
    model: str = typer.Option(
        None, "--model", help="the model to re-decide with (default: --llm-model)"
    ),
    base_url: str = typer.Option(
        None, "--base-url", help="its OpenAI-compatible endpoint (default: --llm-base-url)"
    ),
    limit: int = typer.Option(
        DEFAULT_LIMIT, "--limit", help="refuse when the selection holds more conversations"
    ),
    swap: bool = typer.Option(
        False, "--swap", help="swap the candidate in at once (as events, in one batch)"
    ),
) -> None:
    """Re-decide the recorded conversations of one scope (--user-id ...) or of every scope
    --filters selects with another model: the proposal goes into the log, its candidate
    generation is built, and the difference against the live memories is printed. Nothing
    live changes until `memstream reinfer swap PROPOSAL` (or --swap)."""
    if ctx.invoked_subcommand is not None:
        return
    ids: dict[str, str | None] = {
        "user_id": user_id,
        "agent_id": agent_id,
        "app_id": app_id,
        "run_id": run_id,
    }
    selection = entity_filters(filters, ids)
    if not selection:
        fail("reinfer: name a scope (--user-id, --agent-id, --app-id, --run-id) or --filters")

    async def body(ms: Memstream) -> dict[str, Any]:
        with _bars() as (deciding, building):
            plan, applied = await ms.reinfer(
                model=model, base_url=base_url, filters=selection, limit=limit, swap=swap,
                progress=deciding, build_progress=building,
            )  # fmt: skip
        doc = plan.to_api()
        doc["swapped"] = applied is not None
        if applied is not None:
            doc["results"] = [r.to_api() for r in applied]
        return doc

    _print_plan(run(body))


@reinfer_app.command("show")
def show(proposal: str = ProposalArg) -> None:
    """A proposal's candidate against the live memories now (the candidate is rebuilt from
    the log, without the LLM, when it is not on disk)."""

    async def body(ms: Memstream) -> dict[str, Any]:
        with _bars() as (_, building):
            plan = await ms.reinfer_show(proposal, progress=building)
        return {**plan.to_api(), "swapped": False}

    _print_plan(run(body))


@reinfer_app.command("swap")
def swap_command(proposal: str = ProposalArg) -> None:
    """Make a proposal live: its difference from the live memories, appended in one batch
    (refused when a memory of its scopes changed after it was made)."""

    async def body(ms: Memstream) -> dict[str, Any]:
        with _bars() as (_, building):
            plan, applied = await ms.reinfer_swap(proposal, progress=building)
        return {**plan.to_api(), "swapped": True, "results": [r.to_api() for r in applied]}

    _print_plan(run(body))


@reinfer_app.command("discard")
def discard(proposal: str = ProposalArg) -> None:
    """Delete a proposal's candidate generation (the proposal itself stays in the log)."""
    dropped = run(lambda ms: ms.reinfer_discard(proposal))
    emit(
        {"proposal_id": proposal, "discarded": dropped},
        lambda: out.print(
            f"discarded {len(dropped)} candidate generation(s) of {proposal}", highlight=False
        ),
    )


@reinfer_app.command("list")
def list_proposals() -> None:
    """The project's reinfer proposals, newest first."""
    found = run(lambda ms: ms.reinfer_proposals())
    results = [{**p, "made_at": iso_ms(p["made_at"])} for p in found]

    def human() -> None:
        table = Table(title=f"{len(results)} reinfer proposal(s)")
        for col in ("proposal", "model", "made", "scopes", "swapped", "candidate on disk"):
            table.add_column(col, overflow="fold")
        for p in results:
            table.add_row(p["proposal_id"], p["model"] or "", p["made_at"] or "",
                          str(p["scopes"]), f"{p['swapped_scopes']}/{p['scopes']}",
                          p["generation"] or "")  # fmt: skip
        out.print(table)

    emit({"results": results}, human)


def _scope_label(item: dict[str, Any]) -> str:
    return " ".join(
        f"{k.removesuffix('_id')}={item[k]}"
        for k in ("user_id", "agent_id", "app_id", "run_id")
        if item.get(k)
    )


def _print_plan(result: dict[str, Any]) -> None:
    def human() -> None:
        table = Table(
            title=f"reinfer with {result['model']}: {result['conversations']} conversations "
            f"in {len(result['scopes'])} scope(s)"
        )
        for col in ("", "scope", "memory id", "live", "with the new model"):
            table.add_column(col, overflow="fold")
        for a in result["appear"]:
            table.add_row("[green]+ appear[/green]", _scope_label(a), a["id"], "", a["text"])
        for c in result["change"]:
            table.add_row("[yellow]~ change[/yellow]", _scope_label(c), c["id"], c["from"], c["to"])
        for g in result["go"]:
            table.add_row("[red]- go[/red]", _scope_label(g), g["id"], g["text"], "")
        out.print(table)
        out.print(f"{result['unchanged']} unchanged", highlight=False)
        proposal = result["proposal_id"]
        if result["swapped"]:
            out.print(f"swapped in {proposal}: {len(result['results'])} memory events appended")
            for r in result["results"]:
                out.print(f"{r['event']:<8} {r['id']}  {r.get('memory') or ''}", highlight=False)
        else:
            out.print(
                f"nothing live changed. proposal: {proposal}\n"
                f"candidate generation: {result['generation']}\n"
                f"  read it:  memstream search QUERY --candidate {proposal} ...\n"
                f"  swap in:  memstream reinfer swap {proposal}\n"
                f"  drop it:  memstream reinfer discard {proposal}",
                highlight=False,
                soft_wrap=True,
            )

    emit(result, human)
