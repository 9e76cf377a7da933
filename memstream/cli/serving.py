"""The REST server (`memstream serve`) and the API keys it accepts (`memstream keys ...`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.table import Table

from memstream.cli.common import app, emit, err, fail, out, state
from memstream.errors import MemstreamError, ValidationError
from memstream.events import Actor

T = TypeVar("T")

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
    webhooks: bool = typer.Option(
        None,
        "--webhooks/--no-webhooks",
        help="run the webhook dispatcher in this server (default: on; MEMSTREAM_WEBHOOKS=0 "
        "turns it off); with Kafka and several servers, let one of them dispatch",
    ),
) -> None:
    """Run the Mem0-compatible REST server with its projector (file log, or Kafka with --kafka),
    the webhook dispatcher, and Prometheus metrics at /metrics."""
    from dataclasses import replace

    from memstream.server import serve as run_server

    settings = state.settings if webhooks is None else replace(state.settings, webhooks=webhooks)
    err.print(f"memstream: serving on http://{host}:{port} ({settings.log_description})")
    err.print(f"memstream: {settings.llm_description}", highlight=False)
    run_server(settings, host=host, port=port, log_level=log_level)


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


@keys_app.command("rotate-master")
def keys_rotate_master() -> None:
    """Rewrap every subject key on Kafka under the current master key (MEMSTREAM_MASTER_KEY
    or MEMSTREAM_MASTER_KEY_FILE; the old one in MEMSTREAM_MASTER_KEY_PREVIOUS meanwhile).
    Also wraps keys an older memstream stored in clear. See docs/erasure.md, "Keys"."""
    from memstream.service import rotate_master_key

    try:
        result = asyncio.run(rotate_master_key(state.settings))
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)
    emit(
        result,
        lambda: out.print(
            f"rewrapped {result['rewrapped']} subject key(s)"
            + (f" under master key {result['master_key_id']}" if "master_key_id" in result else "")
            + (f": {result['detail']}" if "detail" in result else "")
        ),
    )
