"""`update(id, timestamp=...)` backdates a memory through a `MemoryUpdated` event: live
reads, point-in-time reads and a replay from the log all agree (file log and real Kafka)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from memstream.models import iso_ms
from memstream.service import Memstream
from memstream.settings import Settings

BACKDATE_S = 1_700_000_000  # 2023-11-14T22:13:20Z
BACKDATE_MS = BACKDATE_S * 1000


def without_hash(memory: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in memory.items() if k != "hash"}


def test_backdating_is_an_event_that_replay_and_as_of_reproduce(settings: Settings) -> None:
    async def main() -> None:
        async with Memstream(settings) as ms:
            alice = {"user_id": "alice"}
            [tea] = await ms.add("likes green tea", user_id="alice")
            [oslo] = await ms.add("lives in Oslo", user_id="alice")
            await ms.update(tea.id, timestamp=BACKDATE_S)
            await asyncio.sleep(0.005)
            # a later text change moves updated_at, not the backdated created_at
            await ms.update(oslo.id, timestamp=dt.datetime.fromtimestamp(BACKDATE_S, dt.UTC)
                            .isoformat())  # fmt: skip
            await ms.update(oslo.id, text="lives in Bergen")
            live = {m.id: m.to_api() for m in (await ms.get_all(alice)).results}
            assert live[tea.id]["created_at"] == live[tea.id]["updated_at"] == iso_ms(BACKDATE_MS)
            assert live[oslo.id]["created_at"] == iso_ms(BACKDATE_MS)
            assert live[oslo.id]["updated_at"] > iso_ms(BACKDATE_MS)
            history = await ms.history(tea.id)
            assert [(h.event_type, h.extra.get("timestamp")) for h in history] == [
                ("MemoryAdded", None),
                ("MemoryUpdated", BACKDATE_MS),
            ]
            # the point-in-time fold over the events table gives the same timestamps
            folded = await ms.get_all(alice, as_of=dt.datetime.now(dt.UTC).isoformat())
            # (the fold has no keyed text hash: compare everything else)
            assert {m.id: without_hash(m.to_api()) for m in folded.results} == {
                k: without_hash(v) for k, v in live.items()
            }
            # and so does a projection rebuilt from the log alone
            await ms.replay()
            replayed = {m.id: m.to_api() for m in (await ms.get_all(alice)).results}
            assert replayed == live

    asyncio.run(main())
