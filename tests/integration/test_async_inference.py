"""Async inferred adds that outlive their server (issue 12; producers/resume.py), against a
scripted chat-completions server on loopback, on the file log and on real Kafka: the
conversation is in the log before the add is answered; an owed add left in the log is
settled at start; only the first settling of an add applies (a second decision or a late
failure is a DUPLICATE, and replay agrees); failures are final or retried as documented;
and a log written before async adds existed replays and owes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from memstream.avro import AvroCodec
from memstream.events import (
    Actor,
    InferenceDecided,
    InferenceFailed,
    MemoryAdded,
    MessagesRecorded,
    codec,
    encode_event,
    to_record,
)
from memstream.query.explain import Settlement
from memstream.scope import Scope
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_inference import go, live, log_events, with_llm
from tests.llm_server import Reply, ScriptedLLM, decide, facts

CHAT = [{"role": "user", "content": "I play chess"}]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


async def settled(ms: Memstream, event_id: str, timeout_s: float = 60.0) -> Settlement:
    """The add's settlement once the projection shows one (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await ms.catch_up()
        if (found := ms.settlement(event_id)) is not None:
            return found
        assert time.monotonic() < deadline, f"async add {event_id} was never settled"
        await asyncio.sleep(0.05)


def audit_outcomes(ms: Memstream) -> dict[str, tuple[str, str]]:
    """event id -> (event type, the projector's outcome), from the events table."""
    rows = ms.generation().query_events("true")
    return {r["event_id"]: (r["event_type"], r["outcome"]) for r in rows}


def test_the_conversation_is_in_the_log_before_the_answer_with_the_adds_fields(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """accept() returns only after the pending MessagesRecorded is durable, holding what
    is needed to decide it later (the options are sealed with the messages)."""
    gate = threading.Event()

    async def body(ms: Memstream) -> None:
        llm.push(Reply(facts("Plays chess"), gate=gate), decide({"id": "n", "text": "Plays chess",
                                                                 "event": "ADD"}))  # fmt: skip
        eid = await ms.add_async(
            CHAT, user_id="alice", metadata={"src": "chat"}, categories=["hobbies"],
            expiration_date="2031-01-02", request_id="req-1",
        )  # fmt: skip
        [recorded] = [e for e in await log_events(ms) if e.event_id == eid]
        assert isinstance(recorded, MessagesRecorded) and recorded.pending
        assert json.loads(recorded.messages) == CHAT
        assert json.loads(recorded.options) == {
            "metadata": {"src": "chat"}, "categories": ["hobbies"],
            "expiration_date": "2031-01-02", "immutable": False,
        }  # fmt: skip
        assert recorded.key_id is not None  # sealed, options with the messages
        try:
            await ms.catch_up()
            assert ms.settlement(eid) is None  # owed: the LLM is held
            # the same request again: the first add's id, nothing appended
            ends = await ms.log.end_offsets()
            assert await ms.add_async(CHAT, user_id="alice", request_id="req-1") == eid
            assert await ms.log.end_offsets() == ends
        finally:
            gate.set()
        done = await settled(ms, eid)
        assert done.failed is None and [r["text"] for r in done.rows] == ["Plays chess"]
        [memory] = (await ms.get_all({"user_id": "alice"})).results
        assert (memory.metadata, memory.categories) == ({"src": "chat"}, ["hobbies"])
        assert memory.expiration_date == "2031-01-02"
        decision = [e for e in await log_events(ms) if isinstance(e, InferenceDecided)]
        assert [(d.messages_event_id, d.settles) for d in decision] == [(eid, True)]

    go(with_llm(settings, llm, llm_timeout_s=60.0), body)  # the gate holds an answer


def test_only_the_first_settling_of_an_add_applies_and_replay_agrees(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """Two settlers decided one async add (two servers, or a restart racing a slow task):
    the first decision in log order applies, the second and its memory events are
    DUPLICATE, a failure recorded after them is a DUPLICATE too; a replay gives the same."""

    async def body(ms: Memstream) -> None:
        llm.push(facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
        eid = await ms.add_async(CHAT, user_id="alice")
        first = await settled(ms, eid)
        [recorded] = [e for e in await log_events(ms) if e.event_id == eid]
        assert isinstance(recorded, MessagesRecorded) and ms.inference is not None
        # a second settler, deciding differently (it saw another state, or another model)
        llm.push(facts("Plays chess well"),
                 decide({"id": "n", "text": "Plays chess well", "event": "ADD"}))  # fmt: skip
        [late] = await ms.inference.infer(
            ms.tenant, json.loads(recorded.messages), user_id="alice", recorded=recorded
        )
        assert late.event == "DUPLICATE"
        failure = InferenceFailed(
            scope=recorded.scope, actor=Actor(), messages_event_id=eid, model="m",
            llm_host="h", reason="too late",
        )  # fmt: skip
        await ms.async_adds._append([failure])  # type: ignore[union-attr]
        assert sorted((await live(ms)).values()) == ["Plays chess"]
        again = await settled(ms, eid)
        assert (again.event_id, again.failed) == (first.event_id, None)
        assert [r["text"] for r in again.rows] == ["Plays chess"]
        events = await log_events(ms)
        decisions = [e for e in events if isinstance(e, InferenceDecided)]
        assert len(decisions) == 2 and all(d.messages_event_id == eid for d in decisions)
        outcomes = audit_outcomes(ms)
        assert [outcomes[d.event_id][1] for d in decisions] == ["DECIDED", "DUPLICATE"]
        late_add = [e for e in events if isinstance(e, MemoryAdded)][-1]
        assert late_add.decision_id == decisions[1].event_id
        assert outcomes[late_add.event_id] == ("MemoryAdded", "DUPLICATE")
        assert outcomes[failure.event_id] == ("InferenceFailed", "DUPLICATE")

        await ms.replay()
        assert audit_outcomes(ms) == outcomes
        assert sorted((await live(ms)).values()) == ["Plays chess"]

    go(with_llm(settings, llm), body)


def test_a_failed_add_is_recorded_and_the_first_settling_wins_over_a_late_decision(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """An unusable answer fails the add at once (InferenceFailed, with the reason); a
    decision appended after it changes nothing."""

    async def body(ms: Memstream) -> None:
        llm.push(Reply("{not json"))
        eid = await ms.add_async(CHAT, user_id="alice")
        done = await settled(ms, eid)
        assert done.failed is not None and "malformed structured output" in done.failed
        assert llm.host in done.failed and len(llm.requests) == 1  # final: not asked again
        [failed] = [e for e in await log_events(ms) if isinstance(e, InferenceFailed)]
        assert (failed.messages_event_id, failed.attempts) == (eid, 1)
        [recorded] = [e for e in await log_events(ms) if e.event_id == eid]
        assert isinstance(recorded, MessagesRecorded) and ms.inference is not None
        llm.push(facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
        await ms.inference.infer(ms.tenant, CHAT, user_id="alice", recorded=recorded)
        assert await live(ms) == {}
        assert (await settled(ms, eid)).failed == done.failed

    go(with_llm(settings, llm), body)


def test_transient_failures_are_retried_with_backoff_until_the_add_is_too_old(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        # a 500, then the answers: retried after the backoff, settled once
        llm.push(Reply(status=500), facts("Plays chess"))
        llm.push(decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
        eid = await ms.add_async(CHAT, user_id="alice")
        done = await settled(ms, eid)
        assert done.failed is None and [r["text"] for r in done.rows] == ["Plays chess"]
        assert len(llm.requests) == 3
        assert not [e for e in await log_events(ms) if isinstance(e, InferenceFailed)]

    go(with_llm(settings, llm), body)

    async def too_old(ms: Memstream) -> None:
        llm.push(Reply(status=503))
        eid = await ms.add_async(CHAT, user_id="bob")
        done = await settled(ms, eid)
        assert done.failed is not None and "HTTP 503" in done.failed
        assert await live(ms, "bob") == {}

    go(with_llm(settings, llm, infer_retry_for_s=0.0), too_old)


def test_an_owed_add_left_in_the_log_is_settled_when_a_server_starts(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """A process accepts an add while its LLM is unreachable and stops (the add is owed,
    its retry abandoned); a server started later on the same log settles it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens there

    async def accept(ms: Memstream) -> str:
        eid = await ms.add_async(CHAT, user_id="alice")
        await ms.catch_up()
        assert ms.settlement(eid) is None
        return eid

    eid = go(dataclasses.replace(with_llm(settings, llm), llm_base_url=dead), accept)

    async def serve() -> None:
        llm.push(facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
        ms = Memstream(with_llm(settings, llm))
        await ms.start(background_projector=True)
        try:
            done = await settled(ms, eid)
            assert done.failed is None and [r["text"] for r in done.rows] == ["Plays chess"]
            assert list((await live(ms)).values()) == ["Plays chess"]
        finally:
            await ms.close()

    asyncio.run(serve())


def _v1(name: str) -> Any:
    text = (
        resources.files("memstream.schemas") / "history" / f"memstream.{name}.v1.avsc"
    ).read_text()
    return codec().registry.register(json.loads(text))


def test_a_log_written_before_async_adds_replays_and_owes_nothing(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """MessagesRecorded and InferenceDecided as the previous version wrote them (no
    pending, options, settles): replay applies them as before, and no add is owed."""
    scope = Scope("local", "default", user_id="alice")
    recorded = MessagesRecorded(scope=scope, messages=json.dumps(CHAT), source_hash="s")
    decision = InferenceDecided(
        scope=scope, messages_event_id=recorded.event_id, model="old", llm_host="h",
        prompt_version="1", prompt_hash="p",
    )  # fmt: skip
    added = MemoryAdded(
        scope=scope, memory_id="m-1", text="Plays chess", hash="h1", decision_id=decision.event_id
    )
    old: list[tuple[bytes, bytes]] = []
    for event, v1 in ((recorded, "MessagesRecorded"), (decision, "InferenceDecided")):
        record = {k: v for k, v in to_record(event).items() if k not in ("pending", "options",
                                                                         "settles")}  # fmt: skip
        old.append((scope.key(), AvroCodec.encode_with(_v1(v1), {**record, "key_id": None})))
    old.append((scope.key(), encode_event(added)))

    async def body(ms: Memstream) -> None:
        await ms.log.append(old)
        await ms.replay()
        assert await live(ms) == {"m-1": "Plays chess"}
        outcomes = audit_outcomes(ms)
        assert outcomes[recorded.event_id] == ("MessagesRecorded", "MESSAGES")
        assert outcomes[decision.event_id] == ("InferenceDecided", "DECIDED")
        assert ms.async_adds is not None and await ms.async_adds.resume() == 0
        done = ms.settlement(recorded.event_id)
        assert done is not None and [r["memory_id"] for r in done.rows] == ["m-1"]
        assert len(llm.requests) == 0

    go(with_llm(settings, llm), body)


def test_an_owed_add_whose_subject_is_erased_is_never_decided(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """The add waits to retry (HTTP 500) when its subject is erased: its next attempt stops,
    although the LLM now answers, so nothing is decided from the erased messages."""

    async def body(ms: Memstream) -> None:
        assert ms.async_adds is not None
        llm.push(Reply(status=500))
        await ms.add_async(CHAT, user_id="alice")
        deadline = time.monotonic() + 60
        while not llm.requests:
            assert time.monotonic() < deadline, "the LLM was never asked"
            await asyncio.sleep(0.05)
        await ms.erase(user_id="alice")
        llm.push(facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
        while ms.async_adds._running:  # the retry stops once it sees the erasure
            assert time.monotonic() < deadline, "the owed add never stopped"
            await asyncio.sleep(0.05)
        events = await log_events(ms)
        assert not [e for e in events if isinstance(e, InferenceDecided | InferenceFailed)]
        assert await live(ms) == {}
        assert await ms.async_adds.resume() == 0

    go(with_llm(settings, llm), body)
