"""Subject erasure by crypto-shredding, on the file log and on real Kafka (issue 6).

The proof the issue asks for: after `erase`, grep the raw log (file segments / every Kafka
partition read raw), every file under the data directory (projection tables, embedding
cache, key store) and every export for the erased texts, and find nothing; while the audit
still shows that the events existed and were erased, and everyone else's data is untouched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from memstream.crypto import cached_secrets, keyed_hash
from memstream.errors import NotFoundError, ValidationError
from memstream.events import (
    MemoryAdded,
    SubjectErased,
    decode_event,
    message_of,
    new_id,
    now_ms,
)
from memstream.keystore.base import Subject
from memstream.log.base import EventLog
from memstream.producers.writer import subject_filters
from memstream.query import analytics
from memstream.query.export import export_memories
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

T = TypeVar("T")

# every string here is unique to alice's data, so finding one anywhere is a leak
SECRETS = {
    "plain": "alice-secret-diagnosis-zebra-quartz",
    "agent": "alice-secret-travel-plan-walrus",
    "run": "alice-secret-ticket-body-marmot",
    "old": "alice-secret-before-update-narwhal",
    "new": "alice-secret-after-update-ocelot",
    "deleted": "alice-secret-deleted-early-pangolin",
    "meta": "alice-secret-metadata-value-axolotl",
    "category": "alice-secret-category-quokka",
    "feedback": "alice-secret-feedback-reason-tapir",
    "filters": "alice-secret-filter-run-okapi",
}
BOB = "bob keeps his memory about sailing"
# Entity ids are not sealed: they are the log's routing keys and the audit's "who" (see
# docs/erasure.md), so no secret is ever used as an id here.


def go(settings: Settings, body: Callable[[Memstream], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Memstream(settings) as ms:
            return await body(ms)

    return asyncio.run(main())


async def raw_log(log: EventLog) -> list[bytes]:
    """Every message value in the log, read raw from offset 0 of every partition."""
    reader = await log.reader({})
    values: list[bytes] = []
    try:
        end = sum((await log.end_offsets()).values())
        while len(values) < end:
            values.extend(r.value for r in await reader.next_batch(1000, timeout_s=1.0))
    finally:
        await reader.close()
    return values


def leaks(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    return [
        (where, name)
        for where, blob in blobs.items()
        for name, secret in SECRETS.items()
        if secret.encode() in blob
    ]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def write_alice_and_bob(ms: Memstream) -> dict[str, str]:
    ids: dict[str, str] = {}
    [r] = await ms.add(
        SECRETS["plain"], user_id="alice",
        metadata={"note": SECRETS["meta"]}, categories=[SECRETS["category"]],
    )  # fmt: skip
    ids["plain"] = r.id
    [r] = await ms.add(SECRETS["agent"], user_id="alice", agent_id="travel")
    ids["agent"] = r.id
    [r] = await ms.add(
        SECRETS["run"], user_id="alice", run_id="ticket-1", metadata={"case": SECRETS["filters"]}
    )
    ids["run"] = r.id
    [r] = await ms.add(SECRETS["old"], user_id="alice")
    ids["updated"] = r.id
    await ms.update(r.id, text=SECRETS["new"])
    [r] = await ms.add(SECRETS["deleted"], user_id="alice")
    await ms.delete(r.id)
    await ms.feedback(ids["plain"], feedback="NEGATIVE", feedback_reason=SECRETS["feedback"])
    await ms.delete_all(  # the filters are the caller's text too: sealed in DeleteAllRequested
        {"user_id": "alice", "run_id": "ticket-1", "metadata": {"case": SECRETS["filters"]}}
    )
    [r] = await ms.add(BOB, user_id="bob")
    ids["bob"] = r.id
    return ids


def test_erase_leaves_no_text_anywhere_and_keeps_the_audit(
    settings: Settings, tmp_path: Path
) -> None:
    async def body(ms: Memstream) -> None:
        ids = await write_alice_and_bob(ms)
        before_erase = now_ms()
        await asyncio.sleep(0.005)
        alice_all = subject_filters(Subject("local", "default", "user_id", "alice"))
        assert (await ms.get_all(alice_all)).count == 3  # plain, agent, updated
        await export_memories(ms, tmp_path / "before.json", None, alice_all)
        # sealed from the start: the raw log never holds a text, even before erasure
        assert leaks({f"log[{i}]": v for i, v in enumerate(await raw_log(ms.log))}) == []

        done = await ms.erase(user_id="alice", reason="GDPR ticket 7")
        assert done["subject"] == {"user_id": "alice"}
        assert done["memories_erased"] == 3
        assert done["keys_destroyed"] >= 1

        # reads: nothing of alice, live or as of before the erasure; bob untouched
        assert (await ms.get_all(alice_all)).count == 0
        as_of = dt.datetime.fromtimestamp(before_erase / 1000, tz=dt.UTC).isoformat()
        assert (await ms.get_all(alice_all, as_of=as_of)).count == 0
        assert await ms.search(SECRETS["plain"], alice_all) == []
        for mid in (ids["plain"], ids["agent"], ids["updated"]):
            with pytest.raises(NotFoundError):
                await ms.get(mid)
        assert [m.memory for m in (await ms.get_all({"user_id": "bob"})).results] == [BOB]

        # history and the audit show that alice's events existed and were erased, no content
        history = await ms.history(ids["updated"])
        assert [h.event for h in history] == ["ERASED", "ERASED"]  # the add and the update
        assert all(h.new_memory is None and h.old_memory is None for h in history)
        gen = ms.projector.generation()
        rows = analytics.audit(gen, ms.tenant, alice_all)
        kinds = {r["event"] for r in rows}
        assert "ERASED" in kinds and "ERASE_SUBJECT" in kinds
        erased_row = next(r for r in rows if r["event"] == "ERASE_SUBJECT")
        assert erased_row["details"]["subject_field"] == "user_id"
        assert leaks({"audit": json.dumps(rows).encode()}) == []

        # exports made now hold nothing of alice
        n, _ = await export_memories(ms, tmp_path / "after.parquet", None, alice_all)
        assert n == 0

        # the raw log: alice's events are still there, but no longer open
        values = await raw_log(ms.log)
        assert leaks({f"log[{i}]": v for i, v in enumerate(values)}) == []
        events = [decode_event(v, ms.projector.keys.lookup) for v in values]
        alice_adds = [
            e for e in events if isinstance(e, MemoryAdded) and e.scope.user_id == "alice"
        ]
        assert len(alice_adds) == 5 and all(e.erased and e.text == "" for e in alice_adds)
        assert sum(isinstance(e, SubjectErased) for e in events) == 1
        bob = [e for e in events if isinstance(e, MemoryAdded) and e.scope.user_id == "bob"]
        assert [e.text for e in bob] == [BOB] and not bob[0].erased

        # every file under the data directory: tables, cache, key store, stored exports
        assert leaks(files_under(ms.data_dir)) == []

        # a replay rebuilds the same memories from the log alone (sealed events read as
        # erased), and an audit row per event with the same ids and kinds
        def tables() -> tuple[list[str], set[tuple[str, str]]]:
            gen = ms.projector.generation()
            memories = sorted(
                repr(sorted(r.items())) for r in gen.memories().to_arrow().to_pylist()
            )
            events = {(r["event_id"], r["event_type"]) for r in gen.events().to_arrow().to_pylist()}
            return memories, events

        live = tables()
        await ms.replay()
        assert tables() == live
        assert (await ms.get_all(alice_all)).count == 0
        assert [m.memory for m in (await ms.get_all({"user_id": "bob"})).results] == [BOB]
        assert leaks(files_under(ms.data_dir)) == []

        # alice can come back: new data gets a new key and is readable
        [r] = await ms.add("alice returns with a new memory", user_id="alice")
        assert r.event == "ADD"
        assert [m.memory for m in (await ms.get_all(alice_all)).results] == [
            "alice returns with a new memory"
        ]

    go(settings, body)
    # the export written before the erasure is the caller's file: the one thing we cannot reach
    assert leaks({"before.json": (tmp_path / "before.json").read_bytes()}) != []
    assert leaks({"after": (tmp_path / "after.parquet").read_bytes()}) == []


def test_erase_one_subject_spares_every_other(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        await ms.add("alice plain", user_id="alice")
        await ms.add("alice with agent", user_id="alice", agent_id="bot")
        await ms.add("bot's own memory", agent_id="bot")
        await ms.add("run r1 memory", run_id="r1")
        await ms.add("app memory", app_id="shop")
        assert cached_secrets() > 0  # the adds sealed and hashed under subject keys
        done = await ms.erase(agent_id="bot")
        assert cached_secrets() == 0  # the destroyed key's secret is in no cache here
        # the agent subject owns only memories without a user: alice's stay hers
        assert done["memories_erased"] == 1
        left = await ms.get_all({"OR": [
            {"user_id": "alice", "agent_id": ["*", None]}, {"agent_id": "*"}, {"run_id": "r1"},
            {"app_id": "shop"},
        ]})  # fmt: skip
        assert sorted(m.memory for m in left.results) == [
            "alice plain", "alice with agent", "app memory", "run r1 memory",
        ]  # fmt: skip

    go(settings, body)


def test_erase_refuses_unclear_subjects(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        await ms.add("something", user_id="alice")
        end = await ms.log.end_offsets()
        with pytest.raises(ValidationError, match="exactly one"):
            await ms.erase()
        with pytest.raises(ValidationError, match="exactly one"):
            await ms.erase(user_id="alice", agent_id="bot")
        with pytest.raises(ValidationError, match="user_id"):
            await ms.erase(user_id="")
        assert await ms.log.end_offsets() == end  # nothing appended, nothing destroyed
        assert (await ms.get_all({"user_id": "alice"})).count == 1

    go(settings, body)


def test_a_writer_in_another_process_never_seals_under_a_destroyed_key(
    settings: Settings,
) -> None:
    """Two Memstream instances on one log (as a CLI and a server would be): after one erases
    alice, the other's next write for alice must use a new key and stay readable."""

    async def body() -> None:
        async with Memstream(settings) as server, Memstream(settings) as cli:
            await server.add("alice before erasure", user_id="alice")
            await cli.erase(user_id="alice")
            await asyncio.sleep(1.1)  # past any cache staleness bound of the key store
            [r] = await server.add("alice after erasure", user_id="alice")
            assert r.event == "ADD"
            for ms in (server, cli):
                page = await ms.get_all({"user_id": "alice"})
                assert [m.memory for m in page.results] == ["alice after erasure"]

    asyncio.run(body())


def test_a_projector_that_did_not_apply_the_erasure_still_sees_the_key_gone(
    settings: Settings,
) -> None:
    """The projector refreshes its key store only when it must (a broker round trip per
    batch otherwise). `late` is an event a writer sealed under alice's key just before
    another process destroyed it, appended after the erasure (the race the key stores
    allow). The process that applies it did not apply the erasure and had opened alice's
    events with that key before: it must still treat the event as erased."""

    async def body() -> None:
        async with Memstream(settings) as server, Memstream(settings) as cli:
            await server.add(SECRETS["plain"], user_id="alice")  # server holds alice's key
            subject = Subject(server.tenant.org_id, server.tenant.project_id, "user_id", "alice")
            old_key = await server.projector.keys.key_for(subject)
            await cli.erase(user_id="alice")  # cli destroys the key and applies the erasure
            await cli.catch_up()
            late = MemoryAdded(
                scope=Scope.of(server.tenant.org_id, server.tenant.project_id, user_id="alice"),
                memory_id=new_id(), text=SECRETS["new"], hash=keyed_hash(old_key, SECRETS["new"]),
            )  # fmt: skip
            await server.log.append([message_of(late, old_key)])
            await server.catch_up()  # the server applies `late`
            assert (await server.get_all({"user_id": "alice"})).results == []
            found = leaks({"files": b"".join(files_under(server.data_dir).values())})
            assert found == []

    asyncio.run(body())


def test_events_sealed_under_a_key_another_process_made_are_opened(settings: Settings) -> None:
    """A key this process has never loaded (another process made it) is looked for again
    before the event is taken for erased."""

    async def body() -> None:
        async with Memstream(settings) as server, Memstream(settings) as cli:
            await server.add(BOB, user_id="bob")  # the server has applied a batch already
            await cli.add("carol's first memory", user_id="carol", wait=False)
            await server.catch_up()  # the server opens carol's event: her key is new to it
            page = await server.get_all({"user_id": "carol"})
            assert [m.memory for m in page.results] == ["carol's first memory"]

    asyncio.run(body())


def test_stored_rest_exports_of_the_subject_are_deleted(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        await ms.add(SECRETS["plain"], user_id="alice")
        await ms.add(BOB, user_id="bob")
        folder = ms.data_dir / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        for name, user, text in (("a", "alice", SECRETS["plain"]), ("b", "bob", BOB)):
            doc: dict[str, Any] = {
                "id": name, "org_id": ms.tenant.org_id, "project_id": ms.tenant.project_id,
                "memories": [{"user_id": user, "memory": text}],
            }  # fmt: skip
            (folder / f"{name}.json").write_text(json.dumps(doc))
        await ms.erase(user_id="alice")
        assert sorted(p.name for p in folder.iterdir()) == ["b.json"]

    go(settings, body)
