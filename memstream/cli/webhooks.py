"""`memstream webhooks ...`: register webhooks, read their delivery records, run the dispatcher.

Webhooks belong to the project of --org-id/--project-id (like every CLI command). These
commands open only the logs and the key store, never the projection or the model, so they
answer at once and `webhooks run` can dispatch on a host that projects nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.table import Table

from memstream.cli.common import app, emit, err, fail, out, state
from memstream.errors import MemstreamError, ValidationError
from memstream.events import Actor
from memstream.models import Tenant

T = TypeVar("T")
CLI = Actor(source="cli")

webhooks_app = typer.Typer(
    help="Webhooks: memory events POSTed to a URL, signed, from the log (docs/webhooks.md).",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")


def _tenant() -> Tenant:
    return Tenant(state.settings.org_id, state.settings.project_id)


def run_webhooks(body: Callable[[Any], Awaitable[T]]) -> T:
    from memstream.service import open_webhooks

    async def go() -> T:
        async with open_webhooks(state.settings) as hooks:
            return await body(hooks)

    try:
        return asyncio.run(go())
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def _types(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text is not None else None


@webhooks_app.command("create")
def create(
    url: str = typer.Option(..., "--url", help="where events are POSTed"),
    name: str = typer.Option(..., "--name"),
    event_types: str = typer.Option(
        "memory_add,memory_update,memory_delete",
        "--event-types",
        help="comma-separated: memory_add, memory_update, memory_delete, memory_expire, "
        "subject_erase",
    ),
    start: str = typer.Option(
        "now", "--start", help="now | earliest | a log position such as 0:120 (replays history)"
    ),
) -> None:
    """Register a webhook. Its signing secret is shown once, alone on the last line."""
    hook = run_webhooks(lambda h: h.create(
        _tenant(), name=name, url=url, event_types=_types(event_types), start=start, actor=CLI,
    ))  # fmt: skip
    if state.json:
        print(json.dumps(hook))
        return
    err.print(
        f"created webhook {hook['webhook_id']} -> {hook['url']} for "
        f"{', '.join(hook['event_types'])}, from position {hook['start_position'] or 'start'} "
        "(signing secret shown once):"
    )
    print(hook["secret"])


@webhooks_app.command("list")
def list_webhooks() -> None:
    """The project's webhooks and how their deliveries went."""
    hooks: list[dict[str, Any]] = run_webhooks(lambda h: h.all(_tenant()))

    def human() -> None:
        table = Table(title=f"webhooks of {state.settings.org_id}/{state.settings.project_id}")
        for col in ("id", "name", "url", "event types", "active", "ok", "pending", "failed"):
            table.add_column(col, overflow="fold")
        for h in hooks:
            d = h["deliveries"]
            table.add_row(h["webhook_id"], h["name"], h["url"], ", ".join(h["event_types"]),
                          "yes" if h["is_active"] else "paused", str(d["succeeded"]),
                          str(d["pending"]), str(d["failed"]))  # fmt: skip
        out.print(table)

    emit(hooks, human)


@webhooks_app.command("update")
def update(
    webhook_id: str,
    name: str = typer.Option(None, "--name"),
    url: str = typer.Option(None, "--url"),
    event_types: str = typer.Option(None, "--event-types", help="comma-separated"),
    active: bool = typer.Option(
        None, "--active/--paused", help="pause delivery (the cursor waits) or resume it"
    ),
) -> None:
    """Change a webhook's name, URL, event types, or pause/resume it."""
    hook = run_webhooks(lambda h: h.update(
        _tenant(), webhook_id, actor=CLI, name=name, url=url, event_types=_types(event_types),
        is_active=active,
    ))  # fmt: skip
    emit(hook, lambda: out.print(f"updated {hook['webhook_id']}"))


@webhooks_app.command("delete")
def delete(webhook_id: str) -> None:
    """Delete a webhook: nothing more is delivered to it."""
    run_webhooks(lambda h: h.delete(_tenant(), webhook_id, actor=CLI))
    emit({"message": "Webhook deleted successfully"}, lambda: out.print(f"deleted {webhook_id}"))


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: str,
    status: str = typer.Option(None, "--status", help="pending | succeeded | failed"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
) -> None:
    """A webhook's delivery records, newest first (status, attempts, last error, position)."""
    found = run_webhooks(
        lambda h: h.delivery_log(_tenant(), webhook_id, status=status, limit=limit)
    )
    records = [d.to_api() for d in found]

    def human() -> None:
        table = Table(title=f"deliveries of {webhook_id}")
        for col in ("position", "event", "memory", "status", "tries", "last error", "at"):
            table.add_column(col, overflow="fold")
        for d in records:
            table.add_row(d["position"], d["event_type"], (d["memory_id"] or "")[:8],
                          d["status"], str(d["attempts"]), d["last_error"] or "",
                          d["updated_at"])  # fmt: skip
        out.print(table)

    emit(records, human)


@webhooks_app.command("run")
def run_dispatcher() -> None:
    """Run the webhook dispatcher alone until Ctrl-C or SIGTERM (`serve` runs one too; with
    one data directory only one of them dispatches at a time, the other stands by)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def dispatch(hooks: Any) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        err.print(
            f"memstream: dispatching webhooks from {state.settings.log_description} "
            "(Ctrl-C to stop)"
        )
        await hooks.dispatch(stop)
        err.print("memstream: webhook dispatcher stopped; positions committed")

    run_webhooks(dispatch)
