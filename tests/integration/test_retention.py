"""Retention on both logs: expired memories leave reads at once (before any sweep), get(id)
still returns them, the sweeper records why they left, and policies never touch memories
they do not match (including ones without the policy's field)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

from memstream.events import (
    MemoryAdded,
    MemoryExpired,
    decode_event,
    message_of,
    new_id,
    now_ms,
    text_hash,
)
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings

DAY_MS = 86_400_000


async def add_written_at(ms: Memstream, text: str, at_ms: int, **ids: str) -> str:
    """A memory as the log holds one written at `at_ms` (the past cannot be asked for via
    the API, whose events are stamped now)."""
    event = MemoryAdded(scope=Scope("local", "default", **ids), memory_id=new_id(), text=text,
                        hash=text_hash(text), occurred_at=at_ms)  # fmt: skip
    await ms.projector.wait_for(await ms.log.append([message_of(event)]))
    assert event.memory_id is not None
    return event.memory_id


async def ids(ms: Memstream, filters: dict[str, object], **kw: object) -> set[str]:
    return {m.id for m in (await ms.get_all(filters, **kw)).results}


async def expired_events(ms: Memstream) -> list[MemoryExpired]:
    reader = await ms.log.reader({})
    found = []
    try:
        while batch := await reader.next_batch(1000, timeout_s=0.3):
            found += [e for r in batch if isinstance(e := decode_event(r.value), MemoryExpired)]
    finally:
        await reader.close()
    return found


def test_expiration_date_hides_at_once_and_the_sweeper_records_it(settings: Settings) -> None:
    async def go() -> None:
        async with Memstream(settings) as ms:
            yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
            today = dt.datetime.now(dt.UTC).date().isoformat()
            [old] = await ms.add("coupon SPRING10", user_id="gus", expiration_date=yesterday)
            [live] = await ms.add("coupon WINTER20", user_id="gus", expiration_date=today)
            [plain] = await ms.add("likes soup", user_id="gus")
            assert await ids(ms, {"user_id": "gus"}) == {live.id, plain.id}
            assert {m.id for m in await ms.search("coupon", {"user_id": "gus"})} == {
                live.id,
                plain.id,
            }
            assert await ids(ms, {"user_id": "gus"}, show_expired=True) == {
                old.id,
                live.id,
                plain.id,
            }
            assert (await ms.get(old.id)).memory == "coupon SPRING10"  # by id: still there

            assert await ms.expire() == 1
            assert await ms.expire() == 0  # a second sweep finds nothing new
            [event] = await expired_events(ms)
            assert (event.memory_id, event.reason, event.expiration_date) == (
                old.id,
                "expiration_date",
                yesterday,
            )
            history = await ms.history(old.id)
            assert [h.event for h in history] == ["ADD", "EXPIRE"] and history[
                -1
            ].reason == "expiration_date"
            got = await ms.get(old.id)
            assert got.expired_at is not None and got.to_api()["expired_at"].endswith("Z")
            assert await ids(ms, {"user_id": "gus"}) == {live.id, plain.id}

            await ms.replay()  # expiry is in the log, so a rebuilt projection has it too
            assert await ids(ms, {"user_id": "gus"}) == {live.id, plain.id}
            assert (await ms.get(old.id)).expired_at == got.expired_at

    asyncio.run(go())


def test_retention_policy_expires_only_what_it_matches(settings: Settings) -> None:
    async def go() -> None:
        async with Memstream(settings) as ms:
            old = now_ms() - 8 * DAY_MS
            stale = await add_written_at(
                ms, "ticket 1: printer jam", old, user_id="hal", run_id="ticket-1"
            )
            fresh = await add_written_at(
                ms, "ticket 2: new laptop", now_ms(), user_id="hal", run_id="ticket-2"
            )
            other = await add_written_at(
                ms, "chat about music", old, user_id="hal", run_id="chat-1"
            )
            unscoped = await add_written_at(ms, "hal is left-handed", old, user_id="hal")
            policy = await ms.set_retention_policy(field="run_id", pattern="ticket-*", ttl="7d")
            assert policy == {
                "policy_id": "run_id:ticket-*",
                "field": "run_id",
                "pattern": "ticket-*",
                "ttl_seconds": 604800,
            }
            assert [p["policy_id"] for p in await ms.retention_policies()] == ["run_id:ticket-*"]

            # before any sweep: the stale ticket is gone from reads; nothing else is
            assert await ids(ms, {"user_id": "hal", "run_id": "*"}) == {fresh, other}
            assert await ids(ms, {"user_id": "hal"}) == {unscoped}  # a null run_id is never matched
            assert stale in await ids(ms, {"user_id": "hal", "run_id": "*"}, show_expired=True)

            assert await ms.expire() == 1
            [event] = await expired_events(ms)
            assert (event.memory_id, event.reason, event.policy_id) == (
                stale,
                "policy",
                "run_id:ticket-*",
            )

            await ms.remove_retention_policy("run_id:ticket-*")
            assert await ms.retention_policies() == []
            # what the policy already expired stays expired
            assert await ids(ms, {"user_id": "hal", "run_id": "*"}) == {fresh, other}

    asyncio.run(go())


def test_the_server_mode_sweeper_runs_by_itself(settings: Settings) -> None:
    async def go() -> None:
        ms = Memstream(dataclasses.replace(settings, sweep_interval_s=0.2))
        await ms.start(background_projector=True)
        try:
            yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
            [old] = await ms.add("expired voucher", user_id="ivy", expiration_date=yesterday)
            for _ in range(100):
                if (await ms.get(old.id)).expired_at is not None:
                    break
                await asyncio.sleep(0.1)
            assert (await ms.get(old.id)).expired_at is not None
            assert [e.memory_id for e in await expired_events(ms)] == [old.id]
        finally:
            await ms.close()

    asyncio.run(go())
