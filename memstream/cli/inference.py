"""Inference commands: `reinfer` re-decides a scope's recorded conversations with another
model, prints what would appear, change or go, and swaps it in on request (docs/inference.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from memstream.cli.common import AgentId, AppId, RunId, UserId, app, emit, err, out, run, state

if TYPE_CHECKING:
    from memstream.service import Memstream


@app.command()
def reinfer(
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
    swap: bool = typer.Option(
        False, "--swap", help="append the difference as events (one batch), making it live"
    ),
) -> None:
    """Re-decide the recorded conversations of one scope with another model and print the
    difference against the live memories; --swap makes it live (as events in the ledger)."""

    async def body(ms: Memstream) -> dict[str, Any]:
        if not state.json:
            err.print("re-deciding the scope's recorded conversations ...")
        plan, applied = await ms.reinfer(
            model=model, base_url=base_url, swap=swap,
            user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
        )  # fmt: skip
        doc = plan.to_api()
        doc["swapped"] = applied is not None
        if applied is not None:
            doc["results"] = [r.to_api() for r in applied]
        return doc

    result = run(body)

    def human() -> None:
        table = Table(
            title=f"reinfer with {result['model']}: {result['conversations']} conversations"
        )
        for col in ("", "memory id", "live", "with the new model"):
            table.add_column(col, overflow="fold")
        for a in result["appear"]:
            table.add_row("[green]+ appear[/green]", "", "", a["text"])
        for c in result["change"]:
            table.add_row("[yellow]~ change[/yellow]", c["id"], c["from"], c["to"])
        for g in result["go"]:
            table.add_row("[red]- go[/red]", g["id"], g["text"], "")
        out.print(table)
        out.print(f"{result['unchanged']} unchanged", highlight=False)
        if result["swapped"]:
            out.print(f"swapped in: {len(result['results'])} events appended")
        else:
            out.print("not swapped (nothing written): run again with --swap to make it live")

    emit(result, human)
