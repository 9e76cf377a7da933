"""`memstream log`: print the events in the log, as stored (no projection involved)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from memstream.cli.common import app, emit, fail, out, run
from memstream.errors import ValidationError

log_app = typer.Typer(
    help="The raw event log: `memstream log` prints it; `memstream log repair` mends damage.",
    invoke_without_command=True,
)
app.add_typer(log_app, name="log")


@log_app.callback()
def log_command(
    ctx: typer.Context,
    start: str = typer.Option(
        None, "--from", help="first position to show: an offset, 0:120, or 0:12,1:40 on Kafka"
    ),
    limit: int = typer.Option(100, "--limit", help="at most this many events; 0 = all"),
) -> None:
    """The raw event log, decoded: who did what, when, under which key. Events of an erased
    subject show that they exist and that they were erased, never their content."""
    if ctx.invoked_subcommand is not None:
        return
    from memstream.cli.logdump import dump
    from memstream.query.timetravel import parse_as_of

    if limit < 0:
        fail("--limit: must be >= 0")
    offsets: dict[int, int] = {}
    if start is not None:
        try:
            cut = parse_as_of(start)
        except ValidationError:
            cut = None
        if cut is None or not cut.offsets:
            fail(f"--from: {start!r} is not a log position (an offset such as 120, or p:o "
                 "such as 0:120; several partitions as 0:12,1:40)")  # fmt: skip
        offsets = dict(cut.offsets)
    events: list[dict[str, Any]] = run(lambda ms: dump(ms, offsets, limit or None), for_replay=True)

    def human() -> None:
        table = Table(title=f"{len(events)} events", title_justify="left")
        for col in ("position", "time", "event", "scope", "memory", "content"):
            table.add_column(col, overflow="fold")
        for e in events:
            scope = " ".join(
                f"{k}={e[k]}" for k in ("user_id", "agent_id", "app_id", "run_id") if k in e
            )
            content = "(erased)" if e["erased"] else str(e.get("text") or e.get("reason") or "")
            table.add_row(e["position"], e["occurred_at"][:19].replace("T", " "), e["event_type"],
                          scope, (e.get("memory_id") or "")[:8], escape(content))  # fmt: skip
        out.print(table)

    emit({"count": len(events), "events": events}, human)


@log_app.command("repair")
def log_repair() -> None:
    """Quarantine damaged bytes of the file log into <log>/quarantine/ and make it writable
    again; every valid record after the damage is kept (docs/guarantees.md)."""

    async def body(ms: Any) -> dict[str, Any]:
        return dict(ms.repair_log())

    result: dict[str, Any] = run(body, for_replay=True)

    def human() -> None:
        regions = result["quarantined"]
        if not regions and not result["torn_tail_cut"]:
            out.print("the log is sound: nothing to repair", highlight=False)
        for r in regions:
            out.print(
                f"quarantined {r['bytes']} bytes at {r['segment']} byte {r['byte_offset']} "
                f"({r['reason']}) into {r['side_file']}; a marker holds offset {r['offset']}",
                highlight=False,
            )
        if result["torn_tail_cut"]:
            t = result["torn_tail_cut"]
            out.print(f"cut a torn tail of {t['bytes']} bytes at {t['segment']} byte "
                      f"{t['byte_offset']}", highlight=False)  # fmt: skip
        if result["offsets_may_have_shifted"]:
            out.print(
                "a quarantined region was not exactly one record: offsets after it may have "
                "moved; rebuild the projection with `memstream replay`",
                highlight=False,
            )

    emit(result, human)


@app.command("verify")
def verify_command(
    checkpoint: bool = typer.Option(
        False, "--checkpoint", help="after a clean walk, sign a checkpoint of the heads"
    ),
) -> None:
    """Walk the whole log and check its hash chain and signed checkpoints: names every
    altered, reordered, inserted, missing or quarantined event and any truncation (exit 1)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from memstream.cli.common import err, state

    async def body(ms: Any) -> dict[str, Any]:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, disable=state.json,
        ) as bar:  # fmt: skip
            task = bar.add_task("verifying", total=None)
            report = await ms.verify(
                write_checkpoint=checkpoint,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        return dict(report.to_dict())

    result: dict[str, Any] = run(body, for_replay=True)

    def human() -> None:
        out.print(
            f"{result['events']} events: {result['chained']} chained, {result['unchained']} "
            f"unchained, {result['quarantined']} quarantined; "
            f"{result['checkpoints_checked']} checkpoint(s) checked",
            highlight=False,
        )
        for f in result["findings"]:
            out.print(f"[red]{f['kind']:<11}[/red] {f['position']:<10} {escape(f['detail'])}")
        for note in result["notes"]:
            out.print(f"note: {note}", highlight=False)
        heads = ", ".join(f"{p}:{h['offset']} {h['hash'][:16]}" for p, h in result["heads"].items())
        out.print(f"heads       {heads or '(empty log)'}", highlight=False)
        out.print(f"public key  {result['public_key']}", highlight=False)
        if result["checkpoint"]:
            out.print(f"signed a checkpoint at {result['checkpoint']['created_at']}")
        out.print("verified: no findings" if result["ok"] else "[red]NOT VERIFIED[/red]")

    emit(result, human)
    if not result["ok"]:
        raise typer.Exit(1)
