"""The live projector's in-memory TableIndex: trusted only while nobody else writes.

A long-running projector skips table reads for keys its index says the tables cannot hold.
If another process projects in between (CLI commands and servers share a data directory),
the index is stale: trusting it would miss that process's rows, and an exact duplicate
would be added twice. These tests make that interleaving happen.
"""

from __future__ import annotations

import asyncio

from memstream.service import Memstream
from memstream.settings import Settings


def test_a_duplicate_projected_by_another_process_is_still_found(settings: Settings) -> None:
    asyncio.run(_duplicate_projected_elsewhere(settings))


async def _duplicate_projected_elsewhere(settings: Settings) -> None:
    async with Memstream(settings) as server, Memstream(settings) as cli:
        for i in range(3):  # the server projects a few batches: it now has an index
            await server.add(f"warm-up fact {i}", user_id="alice")
        assert server.projector._index is not None
        [first] = await cli.add("likes green tea", user_id="alice")  # projected by `cli`
        assert first.event == "ADD"
        [again] = await server.add("likes green tea", user_id="alice")
        assert again.event == "NONE"  # the other process's row was found
        [other] = await server.add("likes black tea", user_id="alice")
        assert other.event == "ADD"
        page = await server.get_all({"user_id": "alice"}, page_size=100)
        assert sorted(m.memory for m in page.results if "tea" in m.memory) == [
            "likes black tea",
            "likes green tea",
        ]


def test_updates_and_deletes_by_another_process_are_seen(settings: Settings) -> None:
    asyncio.run(_changes_made_elsewhere(settings))


async def _changes_made_elsewhere(settings: Settings) -> None:
    async with Memstream(settings) as server, Memstream(settings) as cli:
        ids = [(await server.add(f"fact {i}", user_id="bob"))[0].id for i in range(3)]
        await cli.update(ids[0], text="fact zero, revised")
        await cli.delete(ids[1])
        [dup] = await server.add("fact zero, revised", user_id="bob")
        assert dup.event == "NONE"
        [back] = await server.add("fact 1", user_id="bob")  # its holder was deleted
        assert back.event == "ADD"
        page = await server.get_all({"user_id": "bob"}, page_size=100)
        assert sorted(m.memory for m in page.results) == ["fact 1", "fact 2", "fact zero, revised"]
