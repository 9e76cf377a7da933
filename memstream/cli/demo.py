"""`memstream demo`: the whole idea in one minute, on a temporary data directory.

Scoped writes for a user, two agents and two support tickets; searches that show implicit
null scoping, `*` and lists; deleting one ticket leaves the other; the log itself; a replay;
erasing a user for good (crypto-shredding).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memstream.events import Actor
from memstream.service import Memstream
from memstream.settings import Settings

WRITES: list[tuple[str, dict[str, Any]]] = [
    ("I'm vegetarian and allergic to nuts", {"user_id": "alice"}),
    ("I live in Lisbon and work as a nurse", {"user_id": "alice"}),
    ("Alice prefers window seats on long flights", {"user_id": "alice", "agent_id": "travel_agent"}),
    ("Alice wants a hotel near the beach in Porto", {"user_id": "alice", "agent_id": "travel_agent"}),
    ("Alice likes quick vegetarian dinners", {"user_id": "alice", "agent_id": "meal_planner"}),
    ("Order 1182 arrived damaged; customer wants a refund",
     {"user_id": "alice", "run_id": "ticket-1"}),
    ("Refund for order 1182 approved, label sent", {"user_id": "alice", "run_id": "ticket-1"}),
    ("Cannot log in after the password reset", {"user_id": "alice", "run_id": "ticket-2"}),
    ("Bob is training for a marathon", {"user_id": "bob"}),
]  # fmt: skip


def _show(
    console: Console, title: str, filters: dict[str, Any], rows: list[Any], note: str
) -> None:
    table = Table(title=f"{title}   filters={filters}", title_justify="left")
    for col in ("memory", "agent_id", "run_id", "score"):
        table.add_column(col)
    for m in rows:
        table.add_row(
            m.memory, m.agent_id or "-", m.run_id or "-", f"{m.score:.2f}" if m.score else ""
        )
    console.print(table)
    console.print(f"  [dim]{note}[/dim]\n")


async def _walk(settings: Settings, console: Console) -> None:
    async with Memstream(settings) as ms:
        console.rule("1. Scoped writes: every write is an Avro event in the log, then projected")
        for text, ids in WRITES:
            [res] = await ms.add(text, actor=Actor(source="demo"), **ids)
            console.print(f"  {res.event:<4} {ids}  {text}", highlight=False)
        [dup] = await ms.add(WRITES[0][0], user_id="alice")
        console.print(f"  {dup.event:<4} (the same text again in the same scope is one memory)\n")

        console.rule("2. Scoped reads")
        f1 = {"user_id": "alice"}
        _show(console, "alice", f1, (await ms.get_all(f1)).results,
              "implicit null scoping: no agent-, app- or run-scoped memories")  # fmt: skip
        f2 = {"user_id": "alice", "agent_id": "*"}
        _show(console, "alice with any agent", f2, (await ms.get_all(f2)).results,
              "'*' matches any non-null agent_id")  # fmt: skip
        f3 = {"user_id": "alice", "run_id": ["ticket-1", "ticket-2"]}
        _show(console, "alice's two tickets", f3, (await ms.get_all(f3)).results,
              "a list matches any of several values")  # fmt: skip
        f4 = {"user_id": "alice", "agent_id": "*"}
        _show(console, "search 'where should I sleep by the sea?'", f4,
              await ms.search("where should I sleep by the sea?", f4, top_k=3),
              "semantic search, scoped before ranking")  # fmt: skip

        console.rule("3. Delete one ticket; the other stays")
        n = await ms.delete_all(
            {"user_id": "alice", "run_id": "ticket-1"}, actor=Actor(source="demo")
        )
        console.print(f"  deleted {n} memories of ticket-1")
        f5 = {"user_id": "alice", "run_id": "*"}
        _show(console, "alice's tickets now", f5, (await ms.get_all(f5)).results,
              "ticket-2 is untouched")  # fmt: skip

        console.rule("4. The log is the audit trail")
        await _print_log(ms, console)

        console.rule("5. Replay: throw the projections away and rebuild them from the log")
        before = {m.id for m in (await ms.get_all(f2)).results}
        shutil.rmtree(settings.data_dir / "projections")
        events = await ms.replay()
        after = {m.id for m in (await ms.get_all(f2)).results}
        same = "identical" if before == after else "DIFFERENT"
        console.print(f"  replayed {events} events; alice's agent memories after replay: {same}\n")

        console.rule("6. Erase bob for good: his key is destroyed, the log keeps only ciphertext")
        done = await ms.erase(user_id="bob", reason="demo", actor=Actor(source="demo"))
        left = (await ms.get_all({"user_id": "bob"})).count
        found = [
            str(f.relative_to(settings.data_dir))
            for f in settings.data_dir.rglob("*")
            if f.is_file() and b"marathon" in f.read_bytes()
        ]
        console.print(
            f"  erased {done['memories_erased']} memory, destroyed {done['keys_destroyed']} key; "
            f"bob's memories now: {left}; files under the data directory (log, projections, "
            f"cache) holding 'marathon': {found or 'none'}\n"
        )


async def _print_log(ms: Memstream, console: Console) -> None:
    from memstream.events import decode_event

    reader = await ms.log.reader({})
    table = Table(title_justify="left")
    for col in ("offset", "event", "scope", "memory_id"):
        table.add_column(col)
    try:
        while batch := await reader.next_batch(1000, timeout_s=0.1):
            for rec in batch:
                ev = decode_event(rec.value, ms.subject_keys.lookup)
                ids = {k: v for k, v in ev.scope.entities().items() if v}
                table.add_row(f"{rec.position.partition}:{rec.position.offset}", ev.event_type, str(ids),
                              (ev.memory_id or "")[:8])  # fmt: skip
    finally:
        await reader.close()
    console.print(table)


def run_demo(settings: Settings, console: Console, *, keep: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="memstream-demo-"))
    demo_settings = replace(settings, data_dir=tmp, topic=f"memstream.demo.{tmp.name}")
    console.print(
        f"[bold]memstream demo[/bold] on {demo_settings.log_description}, data in {tmp}\n"
    )
    try:
        asyncio.run(_walk(demo_settings, console))
    finally:
        if keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
