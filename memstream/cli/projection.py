"""The projection commands: replay, status, project, and the demo that walks through them."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from memstream.cli.common import app, emit, err, out, run, state

if TYPE_CHECKING:
    from memstream.service import Memstream


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
        fmt = result["lance_format"]
        if fmt["memories"] is not None and fmt["memories"] != fmt["new_tables"]:
            out.print(
                f"format      Lance {fmt['memories']}; new tables are made in "
                f"{fmt['new_tables']}: `memstream replay` rewrites them (faster scoped reads)",
                highlight=False,
            )
        else:
            out.print(f"format      Lance {fmt['memories'] or fmt['new_tables']}", highlight=False)
        vectors = {
            "built": "indexed (IVF_PQ): searches with no user, agent, app or run lead use it",
            "due": "flat, and large enough for a vector index: `memstream replay` builds one "
            "(searches with no user, agent, app or run lead get faster)",
            "none": "flat: every search ranks its rows exactly",
        }[result["vector_index"]]
        out.print(f"vectors     {vectors}", highlight=False)
        if result["pinned"] is not None:
            out.print(
                f"pinned      at log position {result['pinned']} (replay --to-position): "
                "writes are refused; `memstream replay` rebuilds to the end and unpins",
                highlight=False,
            )
        else:
            out.print("pinned      no", highlight=False)
        health = result.get("log_health") or {}
        line = health.get("state", "ok")
        if health.get("corruption"):
            line += f": {health['corruption'].get('message', '')}"
        elif health.get("torn_tail"):
            t = health["torn_tail"]
            line += (f": {t['bytes']} bytes of an interrupted append at {t['segment']} byte "
                     f"{t['byte_offset']} (cut by the next append)")  # fmt: skip
        out.print(f"log health  {line}", highlight=False)
        for t in health.get("torn_tails_cut") or []:
            out.print(f"            torn tail of {t['bytes']} bytes cut at {t['segment']} byte "
                      f"{t['byte_offset']} on {t.get('cut_at', '?')}", highlight=False)  # fmt: skip
        for q in health.get("quarantined") or []:
            out.print(f"            quarantined bytes kept in {q}", highlight=False)

    emit(result, human)


@app.command()
def project(
    once: bool = typer.Option(False, "--once", help="catch up and exit"),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="events per LanceDB write"),
) -> None:
    """Run the projector standalone: consume the log into LanceDB until stopped."""

    async def body(ms: Memstream) -> tuple[int, dict[str, Any]]:
        if once:
            n = await ms.run_projector(None, batch_size=batch_size)
            return n, ms.status()["poison"]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"projecting {ms.settings.log_description} into {ms.data_dir} (Ctrl-C to stop)")
        n = await ms.run_projector(stop, batch_size=batch_size)
        return n, ms.status()["poison"]

    n, poison = run(body)

    def human() -> None:
        out.print(f"projected up to {n} events")
        if poison["dead_lettered"]:
            out.print(f"set aside {poison['dead_lettered']} poison record(s) to the dead-letter "
                      f"sink: {poison['by_kind']}", highlight=False)  # fmt: skip

    emit({"message": "Projector stopped", "position": n, "poison": poison}, human)


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="keep the temporary data dir"),
) -> None:
    """Walk through the whole idea on a temporary data dir."""
    from memstream.cli.demo import run_demo

    run_demo(state.settings, out, keep=keep)
