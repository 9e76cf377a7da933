"""Webhooks delivered from the log, to a real HTTP receiver on loopback, on both logs.

The receiver fails its first deliveries with 500; every subscribed event must still arrive,
in log order per scope, each signed over its exact body; a stopped dispatcher resumes after
the last event it finished; a webhook can replay history; an erased subject's text is never
sent; the registrations themselves are rebuilt from their log by a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from memstream.metrics import REGISTRY
from memstream.models import Tenant
from memstream.service import Memstream
from memstream.settings import Settings
from memstream.webhooks import DeliveryPolicy, verify
from tests.webhook_receiver import Received, receiving

ACME = Tenant("acme", "support")
OTHER = Tenant("acme", "sales")
FAST = DeliveryPolicy(max_attempts=10, backoff_s=0.01, max_backoff_s=0.05, timeout_s=5.0)
TYPES = ["memory_add", "memory_update", "memory_delete"]


@contextlib.asynccontextmanager
async def dispatching(ms: Memstream, policy: DeliveryPolicy = FAST) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(ms.webhooks.dispatch(stop, policy))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def ids(requests: list[Received]) -> list[str]:
    return [r.json["event_id"] for r in requests]


def test_every_event_arrives_in_order_signed_despite_failures_and_after_a_restart(
    settings: Settings,
) -> None:
    asyncio.run(_in_order_despite_failures(settings))


async def _in_order_despite_failures(settings: Settings) -> None:
    with receiving(fail_first=3) as receiver:
        async with Memstream(settings) as ms:
            hook = await ms.webhooks.create(ACME, name="audit", url=receiver.url, event_types=TYPES)
            # per scope, the event ids in the order they were written
            written: dict[str, list[str]] = {"alice": [], "bob": []}
            for i in range(4):
                for user in ("alice", "bob"):
                    [r] = await ms.add(f"{user} fact {i}", tenant=ACME, user_id=user)
                    written[user].append(r.event_id)
            first = (await ms.get_all({"user_id": "alice"}, tenant=ACME)).results[0]
            written["alice"].append(
                (await ms.update(first.id, tenant=ACME, text="alice fact, corrected")).event_id
            )
            # not subscribed to: never sent
            await ms.feedback(first.id, tenant=ACME, feedback="POSITIVE", feedback_reason=None)
            written["alice"].append((await ms.delete(first.id, tenant=ACME)).event_id)
            await ms.add("not for this hook", tenant=OTHER, user_id="alice")

            expected = sum(len(v) for v in written.values())
            counts = {
                outcome: REGISTRY.get_sample_value(
                    "memstream_webhook_deliveries_total", {"outcome": outcome}
                )
                or 0.0
                for outcome in ("succeeded", "retried")
            }
            async with dispatching(ms):
                await receiver.until(lambda got: len(got) >= expected)
            for outcome, n in (("succeeded", expected), ("retried", 3)):
                now = REGISTRY.get_sample_value(
                    "memstream_webhook_deliveries_total", {"outcome": outcome}
                )
                assert now == counts[outcome] + n

            got = receiver.accepted()
            assert len(receiver.requests) == expected + 3  # three 500s, each retried
            for user, events in written.items():
                mine = [r for r in got if r.json["user_id"] == user]
                assert ids(mine) == events  # every one, once, in log order per scope
            for r in got:
                assert r.json["project_id"] == "support"
                assert verify(hook["secret"], r.body, r.headers["x-memstream-signature"])
                assert not verify(hook["secret"], r.body + b" ", r.headers["x-memstream-signature"])
                assert r.headers["x-memstream-event-id"] == r.json["event_id"]
            by_id = {r.json["event_id"]: r.json for r in got}
            update = by_id[written["alice"][-2]]
            assert update["event_type"] == "memory_update"
            assert update["event_details"] == {
                "id": first.id,
                "data": {"memory": "alice fact, corrected"},
                "event": "UPDATE",
            }
            assert by_id[written["alice"][-1]]["event_details"]["event"] == "DELETE"
            assert by_id[written["alice"][0]]["event_details"]["data"]["memory"] == "alice fact 0"

            records = await ms.webhooks.delivery_log(ACME, hook["webhook_id"], limit=1000)
            assert {d.event_id for d in records} == {e for v in written.values() for e in v}
            assert all(d.status == "succeeded" for d in records)
            assert sum(d.attempts for d in records) == expected + 3
            assert max(d.attempts for d in records) >= 2
            assert all(d.position.offset >= 0 and d.last_error is None or d.attempts > 1
                       for d in records)  # fmt: skip
            retried = [d for d in records if d.attempts > 1]
            assert all(d.response_status == 200 for d in retried)

            # stopped: events written meanwhile wait in the log, and only they are sent next
            later = [
                (await ms.add(f"later {i}", tenant=ACME, user_id="alice"))[0].event_id
                for i in range(3)
            ]
            async with dispatching(ms):
                await receiver.until(lambda got: len(got) >= expected + len(later))
                await asyncio.sleep(0.5)  # anything sent twice would arrive meanwhile
            assert ids(receiver.accepted()[expected:]) == later


def test_only_changes_the_projection_applied_are_delivered(settings: Settings) -> None:
    asyncio.run(_only_applied(settings))


async def _only_applied(settings: Settings) -> None:
    """The same fact added twice is two MemoryAdded events in the log, and the projection
    keeps one memory: the receiver hears of that one, never of a memory that does not exist."""
    with receiving() as receiver:
        async with Memstream(settings) as ms:
            await ms.webhooks.create(ACME, name="applied", url=receiver.url, event_types=TYPES)
            [first] = await ms.add("carol likes green tea", tenant=ACME, user_id="carol")
            [again] = await ms.add("carol likes green tea", tenant=ACME, user_id="carol")
            [jazz] = await ms.add("carol likes jazz", tenant=ACME, user_id="carol")
            gone = await ms.delete(jazz.id, tenant=ACME)
            assert (first.event, again.event) == ("ADD", "NONE")  # decided a duplicate
            assert again.id == first.id and again.event_id != first.event_id  # both logged
            audit = await ms.history(first.id, tenant=ACME)
            assert [h.event for h in audit] == ["ADD", "NONE"]  # the second changed nothing

            async with dispatching(ms):
                # in log order per scope: the duplicate lies between the first and the jazz
                await receiver.until(lambda got: len(got) >= 3)
            got = receiver.accepted()
            assert ids(got) == [first.event_id, jazz.event_id, gone.event_id]
            assert [r.json["event_details"]["event"] for r in got] == ["ADD", "ADD", "DELETE"]


def test_a_new_webhook_replays_history_or_starts_now(settings: Settings) -> None:
    asyncio.run(_replay_history(settings))


async def _replay_history(settings: Settings) -> None:
    with receiving() as history, receiving() as fresh:
        async with Memstream(settings) as ms:
            old = [
                (await ms.add(f"old {i}", tenant=ACME, user_id="dana"))[0].event_id
                for i in range(3)
            ]
            await ms.webhooks.create(
                ACME, name="all", url=history.url, event_types=["memory_add"], start="earliest"
            )
            await ms.webhooks.create(ACME, name="new", url=fresh.url, event_types=["memory_add"])
            [new] = await ms.add("new one", tenant=ACME, user_id="dana")
            async with dispatching(ms):
                await history.until(lambda got: len(got) >= 4)
                await fresh.until(lambda got: len(got) >= 1)
                await asyncio.sleep(0.3)
            assert ids(history.accepted()) == [*old, new.event_id]
            assert ids(fresh.accepted()) == [new.event_id]
            hooks = await ms.webhooks.all(ACME)
        # the registrations are events: a new process rebuilds them from their log
        async with Memstream(settings) as again:
            assert [h["name"] for h in await again.webhooks.all(ACME)] == ["all", "new"]
            assert [h["webhook_id"] for h in await again.webhooks.all(ACME)] == [
                h["webhook_id"] for h in hooks
            ]
            assert await again.webhooks.all(OTHER) == []


def test_an_erased_subjects_text_is_never_sent(settings: Settings) -> None:
    asyncio.run(_erased(settings))


async def _erased(settings: Settings) -> None:
    with receiving() as receiver:
        async with Memstream(settings) as ms:
            [kept] = await ms.add("erin likes tea", tenant=ACME, user_id="erin")
            [gone] = await ms.add("carol's secret", tenant=ACME, user_id="carol")
            await ms.erase(tenant=ACME, user_id="carol")
            await ms.webhooks.create(
                ACME, name="h", url=receiver.url, event_types=["memory_add", "subject_erase"],
                start="earliest",
            )  # fmt: skip
            async with dispatching(ms):
                await receiver.until(lambda got: len(got) >= 3)
            by_id = {r.json["event_id"]: r.json for r in receiver.accepted()}
            assert by_id[kept.event_id]["event_details"]["data"]["memory"] == "erin likes tea"
            assert by_id[gone.event_id]["event_details"]["data"]["memory"] is None
            assert by_id[gone.event_id]["erased"] is True
            assert all(b"carol's secret" not in r.body for r in receiver.requests)
            [erasure] = [d for d in by_id.values() if d["event_type"] == "subject_erase"]
            assert erasure["event_details"]["data"]["subject"] == {"user_id": "carol"}


def test_retries_are_bounded_and_a_given_up_event_is_recorded_as_failed(
    settings: Settings,
) -> None:
    asyncio.run(_bounded(settings))


async def _bounded(settings: Settings) -> None:
    policy = DeliveryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5.0)
    with receiving(fail_first=3) as receiver:
        async with Memstream(settings) as ms:
            hook = await ms.webhooks.create(
                ACME, name="flaky", url=receiver.url, event_types=["memory_add"]
            )
            [lost] = await ms.add("first", tenant=ACME, user_id="fay")
            [kept] = await ms.add("second", tenant=ACME, user_id="fay")
            async with dispatching(ms, policy):
                await receiver.until(lambda got: len(got) >= 1)
            assert [r.json["event_id"] for r in receiver.requests] == [lost.event_id] * 3 + [
                kept.event_id
            ]
            assert [r.headers["x-memstream-delivery-attempt"] for r in receiver.requests] == [
                "1", "2", "3", "1",
            ]  # fmt: skip
            records = {
                d.event_id: d for d in await ms.webhooks.delivery_log(ACME, hook["webhook_id"])
            }
            failed = records[lost.event_id]
            assert (failed.status, failed.attempts, failed.response_status) == ("failed", 3, 500)
            assert failed.last_error == "HTTP 500: nope"
            assert records[kept.event_id].status == "succeeded"
            only_failed = await ms.webhooks.delivery_log(ACME, hook["webhook_id"], status="failed")
            assert [d.event_id for d in only_failed] == [lost.event_id]


def test_a_paused_webhook_keeps_its_position_and_gets_the_backlog_when_resumed(
    settings: Settings,
) -> None:
    asyncio.run(_paused(settings))


async def _paused(settings: Settings) -> None:
    with receiving() as receiver, receiving() as moved:
        async with Memstream(settings) as ms:
            hook = await ms.webhooks.create(
                ACME, name="p", url=receiver.url, event_types=["memory_add"]
            )
            await ms.webhooks.update(ACME, hook["webhook_id"], is_active=False)
            backlog = [
                (await ms.add(f"gil {i}", tenant=ACME, user_id="gil"))[0].event_id for i in range(3)
            ]
            async with dispatching(ms):
                await asyncio.sleep(1.0)  # a paused webhook's worker is running, and sends nothing
                assert receiver.requests == []
                # resumed, at a new url: the backlog goes there, in order
                await ms.webhooks.update(ACME, hook["webhook_id"], is_active=True, url=moved.url)
                await moved.until(lambda got: len(got) >= 3)
            assert ids(moved.accepted()) == backlog
            assert receiver.requests == []
