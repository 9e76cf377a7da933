"""`memstream retention ...` and `memstream expire`: retention rules and the expiry sweeper."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from memstream.cli.common import app, emit, out, run
from memstream.events import Actor

retention = typer.Typer(help="Retention policies: memories expire a TTL after their last write.")
app.add_typer(retention, name="retention")


@retention.command("set")
def set_policy(
    ttl: str = typer.Option(..., "--ttl", help="7d, 12h, 30m, 3600 (seconds)"),
    run_id: str = typer.Option(None, "--run-id", help="exact id, prefix ending in *, or *"),
    app_id: str = typer.Option(None, "--app-id"),
    agent_id: str = typer.Option(None, "--agent-id"),
    user_id: str = typer.Option(None, "--user-id"),
    policy_id: str = typer.Option(None, "--id", help="default: FIELD:PATTERN"),
) -> None:
    """Add or replace a policy, e.g. `retention set --run-id '*' --ttl 7d`."""
    given = {k: v for k, v in {"run_id": run_id, "app_id": app_id, "agent_id": agent_id,
                               "user_id": user_id}.items() if v is not None}  # fmt: skip
    if len(given) != 1:
        from memstream.cli.common import fail

        fail("give exactly one of --run-id, --app-id, --agent-id, --user-id (the pattern)")
    [(field, pattern)] = given.items()
    policy = run(lambda ms: ms.set_retention_policy(
        field=field, pattern=pattern, ttl=ttl, policy_id=policy_id, actor=Actor(source="cli")
    ))  # fmt: skip
    emit(policy, lambda: out.print(f"policy {policy['policy_id']}: {field} {pattern} "
                                   f"expires {policy['ttl_seconds']}s after the last write"))  # fmt: skip


@retention.command("list")
def list_policies() -> None:
    """The project's retention policies."""
    policies: list[dict[str, Any]] = run(lambda ms: ms.retention_policies())
    results = [
        {k: p[k] for k in ("policy_id", "field", "pattern", "ttl_seconds")} for p in policies
    ]

    def human() -> None:
        table = Table(title="retention policies")
        for col in ("id", "field", "pattern", "ttl (s)"):
            table.add_column(col)
        for p in results:
            table.add_row(p["policy_id"], p["field"], p["pattern"], str(p["ttl_seconds"]))
        out.print(table)

    emit({"results": results}, human)


@retention.command("remove")
def remove_policy(policy_id: str) -> None:
    """Withdraw a policy (memories it already expired stay expired)."""
    run(lambda ms: ms.remove_retention_policy(policy_id))
    emit({"message": f"policy {policy_id} removed"}, lambda: out.print(f"removed {policy_id}"))


@app.command()
def expire() -> None:
    """Record MemoryExpired for every memory that has expired (the server does this every minute)."""
    n = run(lambda ms: ms.expire())
    emit(
        {"message": "Expiry sweep complete", "expired": n},
        lambda: out.print(f"expired {n} memories"),
    )
