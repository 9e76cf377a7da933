"""The write side's commit boundary and the read side's checks under a request's
cancellation token (memstream.cancellation), on both logs. The REST server cancels the token
when a client disconnects (tests/e2e/test_disconnect.py shows that end to end); here the
test plays the server's part, so it can stop exactly while an append is under way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from memstream import cancellation
from memstream.log.base import EventLog
from memstream.service import Memstream, open_log
from memstream.settings import Settings


class HeldAppends:
    """The real log, whose appends wait (once started) until the test lets them go on: a
    slow disk or broker, so that a client can leave in the middle of one."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self.started = asyncio.Event()
        self.go_on = asyncio.Event()

    async def append(self, messages: Any) -> Any:
        self.started.set()
        await self.go_on.wait()
        return await self._log.append(messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def leave(token: cancellation.Token, task: asyncio.Task[Any]) -> bool:
    """What the server does when the client disconnects (memstream/server/disconnect.py)."""
    stopped = token.cancel()
    if stopped:
        task.cancel()
    return stopped


def test_an_add_whose_append_has_begun_is_completed_when_its_client_leaves(
    settings: Settings,
) -> None:
    async def go() -> None:
        log = HeldAppends(open_log(settings))
        async with Memstream(settings, log=log) as ms:  # type: ignore[arg-type]
            token = cancellation.Token()
            with cancellation.bound(token):
                add = asyncio.create_task(ms.add("Likes green tea", user_id="leaver"))
            await asyncio.wait_for(log.started.wait(), 60)
            assert leave(token, add) is False  # committing: the write runs to its end
            log.go_on.set()
            results = await asyncio.wait_for(add, 60)
            assert [(r.event, r.memory) for r in results] == [("ADD", "Likes green tea")]
            page = await ms.get_all({"user_id": "leaver"})
            assert [m.memory for m in page.results] == ["Likes green tea"]

    asyncio.run(go())


def test_an_add_not_yet_appending_is_abandoned_whole(settings: Settings) -> None:
    async def go() -> None:
        log = HeldAppends(open_log(settings))
        async with Memstream(settings, log=log) as ms:  # type: ignore[arg-type]
            end = await ms.log.end_offsets()
            token = cancellation.Token()
            with cancellation.bound(token):
                add = asyncio.create_task(
                    ms.add(
                        [{"role": "user", "content": t} for t in ("One", "Two", "Three")],
                        user_id="leaver",
                    )
                )
            await asyncio.sleep(0)  # it has started: validated, not appending yet
            assert not log.started.is_set()
            assert leave(token, add) is True
            with pytest.raises(asyncio.CancelledError):
                await add
            log.go_on.set()
            assert await ms.log.end_offsets() == end  # nothing of the batch reached the log
            assert (await ms.get_all({"user_id": "leaver"})).count == 0

    asyncio.run(go())


def test_reads_in_worker_threads_stop_when_the_token_is_cancelled(
    settings: Settings,
) -> None:
    async def go() -> None:
        async with Memstream(settings) as ms:
            await ms.add(
            [{"role": "user", "content": f"fact {i}"} for i in range(20)],
            user_id="reader", metadata={"n": 1},
        )  # fmt: skip
            # in the tables: the reader's as_of read is of the tables (the service writes
            # the fresh tier first, projector/tier.py; this test calls the reader itself)
            await ms.projector.flush_tier()
            wide = {"user_id": "reader", "OR": [{"metadata": {"n": -i}} for i in range(50)]}
            reads = {
                "get_all": lambda: ms.reader.get_all(ms.tenant, wide),
                "search": lambda: ms.reader.search(ms.tenant, "fact", wide),
                "as_of": lambda: ms.reader.get_all(ms.tenant, wide, as_of="2099-01-01"),
            }
            for read in reads.values():
                gone = cancellation.Token()
                assert gone.cancel()
                with cancellation.bound(gone), pytest.raises(cancellation.RequestCancelled):
                    await asyncio.to_thread(read)
                # the same read without a token (or with a live one) answers
                with cancellation.bound(cancellation.Token()):
                    await asyncio.to_thread(read)

    asyncio.run(go())
