"""Scope order in the memories table (projector/cluster.py): a replayed generation holds each
scope's rows side by side, with its indexes, and answers every read as before."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pyarrow as pa
import pytest

from memstream.events import MemoryAdded, MemoryDeleted, MemoryUpdated, message_of, new_id
from memstream.events import text_hash as th
from memstream.projector.cluster import SORT_KEY, rewrite_sorted
from memstream.projector.store import LANCE_FILE_VERSION, connect_lancedb
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings


def _key_tuples(table: pa.Table) -> list[tuple[tuple[bool, str], ...]]:
    cols = [table[c].to_pylist() for c in SORT_KEY]
    return [tuple((v is None, v or "") for v in row) for row in zip(*cols, strict=True)]


def _in_scope_order(table: pa.Table) -> bool:
    keys = _key_tuples(table)
    return keys == sorted(keys)


def test_rewrite_sorted_keeps_every_row_and_orders_them(tmp_path: Path) -> None:
    rnd = random.Random(5)
    users = [f"u{i}" for i in range(30)] + [None]
    rows = [
        {
            "id": f"m{i:05d}",
            "org_id": "o",
            "project_id": rnd.choice(["p", "q"]),
            "user_id": rnd.choice(users),
            "agent_id": rnd.choice([None, "a1", "a2"]),
            "run_id": None,
            "app_id": rnd.choice([None, "x"]),
            "n": i,
        }  # fmt: skip
        for i in range(3000)
    ]
    rnd.shuffle(rows)
    table = connect_lancedb(tmp_path).create_table("t", pa.Table.from_pylist(rows))
    assert not _in_scope_order(table.to_arrow())
    assert rewrite_sorted(table, chunk_rows=700)  # several chunks
    after = table.to_arrow()
    assert _in_scope_order(after)
    assert sorted(after.to_pylist(), key=lambda r: r["id"]) == sorted(rows, key=lambda r: r["id"])
    assert not rewrite_sorted(table)  # already in order: nothing rewritten
    empty = connect_lancedb(tmp_path).create_table("e", schema=table.schema)
    assert not rewrite_sorted(empty)


@pytest.mark.parametrize("clustered", [True, False])
def test_a_replay_writes_scopes_side_by_side_and_reads_the_same(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, clustered: bool
) -> None:
    monkeypatch.setenv("MEMSTREAM_CLUSTER", "1" if clustered else "0")
    rnd = random.Random(11)
    scopes = [Scope("local", "default", user_id=f"user-{u}") for u in range(8)]
    scopes += [Scope("local", "default", user_id="user-1", agent_id="bot")]
    events = []
    alive: dict[str, Scope] = {}
    for i in range(300):  # arrival order interleaves the scopes
        k = rnd.random()
        if k < 0.8 or not alive:
            scope, mid = rnd.choice(scopes), new_id()
            text = f"fact {i} about {rnd.choice(['tea', 'chess', 'rain', 'jazz'])}"
            events.append(MemoryAdded(scope=scope, memory_id=mid, text=text, hash=th(text)))
            alive[mid] = scope
        elif k < 0.9:
            mid = rnd.choice(list(alive))
            text = f"changed {i}"
            events.append(MemoryUpdated(scope=alive[mid], memory_id=mid, text=text, hash=th(text)))
        else:
            mid = rnd.choice(list(alive))
            events.append(MemoryDeleted(scope=alive.pop(mid), memory_id=mid))

    async def reads(ms: Memstream) -> list[object]:
        out: list[object] = []
        for f in ({"user_id": "user-1"}, {"user_id": "user-1", "agent_id": "*"},
                  {"user_id": {"in": ["user-2", "user-5"]}}):  # fmt: skip
            page = await ms.get_all(f, page_size=1000)
            out.append(sorted((m.id, m.memory) for m in page.results))
            found = await ms.search("chess in the rain", f, top_k=5)
            out.append([(m.id, m.memory) for m in found])
        return out

    async def body() -> None:
        async with Memstream(settings) as ms:
            await ms.log.append([message_of(e) for e in events])
            await ms.catch_up()
            await ms.projector.flush_tier()
            before = await reads(ms)
            await ms.replay()
            gen = ms.projector.generation()
            table = gen.memories()
            assert _in_scope_order(table.to_arrow()) == clustered
            # the format chosen for point reads (store.py LANCE_FILE_VERSION), not LanceDB's
            # default, in every table the replay made and after the scope-order rewrite
            for made in (table, gen.events(), ms.projector.cache.table()):
                assert made.to_lance().data_storage_version == LANCE_FILE_VERSION
            indexed = {tuple(ix.columns) for ix in table.list_indices()}
            assert {("id",), ("user_id",), ("agent_id",)} <= indexed
            assert await reads(ms) == before

    asyncio.run(body())


def test_a_replay_moves_a_projection_made_in_another_lance_format(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projection made before memstream chose its format (LanceDB's default, 2.2) keeps
    working; `status` says which format its tables are in and which new ones get, and a
    replay remakes them in the chosen one with every memory."""

    async def body() -> None:
        monkeypatch.setenv("MEMSTREAM_LANCE_FORMAT", "2.2")
        async with Memstream(settings) as ms:
            for i in range(5):
                await ms.add(f"fact {i}", user_id="old-format")
            await ms.projector.flush_tier()
            assert ms.status()["lance_format"] == {"memories": "2.2", "new_tables": "2.2"}
        monkeypatch.delenv("MEMSTREAM_LANCE_FORMAT")
        async with Memstream(settings) as ms:
            assert ms.status()["lance_format"] == {
                "memories": "2.2", "new_tables": LANCE_FILE_VERSION,
            }  # fmt: skip
            before = sorted(m.memory for m in (await ms.get_all({"user_id": "old-format"})).results)
            await ms.replay()
            assert ms.status()["lance_format"]["memories"] == LANCE_FILE_VERSION
            after = sorted(m.memory for m in (await ms.get_all({"user_id": "old-format"})).results)
            assert after == before == [f"fact {i}" for i in range(5)]

    asyncio.run(body())
