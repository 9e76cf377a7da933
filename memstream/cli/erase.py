"""`memstream erase`: crypto-shred one subject (irreversible, so it asks first)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from memstream.cli.common import app, emit, fail, out, run
from memstream.events import Actor


@app.command()
def erase(
    user_id: str = typer.Option(None, "--user-id"),
    agent_id: str = typer.Option(None, "--agent-id", help="an agent's own memories (no user)"),
    app_id: str = typer.Option(None, "--app-id", help="an app's own memories (no user/agent)"),
    run_id: str = typer.Option(None, "--run-id", help="a run's own memories (no user/agent/app)"),
    reason: str = typer.Option(None, "--reason", help="recorded in the audit, e.g. a ticket id"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Erase a subject for good: destroy its keys so no read, replay, export or raw log dump
    can show its texts again, and remove what the projections derived from them. The audit
    keeps that the events existed and were erased. Cannot be undone."""
    given = {k: v for k, v in {"user_id": user_id, "agent_id": agent_id, "app_id": app_id,
                               "run_id": run_id}.items() if v is not None}  # fmt: skip
    if len(given) != 1:
        fail("give exactly one of --user-id, --agent-id, --app-id, --run-id (the subject)")
    [(field, value)] = given.items()
    if not yes:
        if not sys.stdin.isatty():
            fail("erase cannot be undone: pass --yes to confirm when not running interactively")
        if not typer.confirm(f"Erase every memory of {field}={value} for good?"):
            fail("not erased", code=1)
    done: dict[str, Any] = run(
        lambda ms: ms.erase(
            user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id,
            reason=reason, actor=Actor(source="cli"),
        )
    )  # fmt: skip
    emit(done, lambda: out.print(
        f"erased {field}={value}: {done['memories_erased']} memories, "
        f"{done['keys_destroyed']} key(s) destroyed (event {done['event_id']})"
    ))  # fmt: skip
