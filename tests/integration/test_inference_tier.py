"""Inference events in the fresh tier (projector/tier.py): an inferred add's messages,
decision and memory events stay in memory like a plain add's, and every reader still
gets the answer the tables give once they are written -- history's "updated by inference
(model M) from the messages of T", an async add's outcome, the owed-add scan, the first
settling of an add winning across tier batches, a conflict across tier batches, an
erasure reaching a tier that holds sealed messages, and a restart that finds the tier
lost re-deriving the same state from the log.

Every test runs with a tier that never flushes by itself (100,000 rows, an hour), and
checks first that nothing was flushed: what it then reads comes from the tier.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memstream.events import Actor, InferenceFailed, MessagesRecorded, SubjectErased
from memstream.keystore.base import Subject
from memstream.projector.tier import EMPTY
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


def tiered(settings: Settings, llm: ScriptedLLM, **kw: Any) -> Settings:
    """The LLM, and a tier that flushes only when told to (or when a batch must be)."""
    return with_llm(dataclasses.replace(settings, tier_rows=100_000, tier_age_s=3600.0), llm, **kw)


def flushed(ms: Memstream) -> int:
    """Events the tables hold (the checkpoint: the last flush)."""
    return sum(ms.projector.generation().checkpoint().values())


def held(ms: Memstream) -> dict[str, str]:
    """event id -> event type of the audit rows in this process's tier."""
    view = ms.projector.tier_view(ms.projector.generation())
    return {a["event_id"]: a["event_type"] for a in view.audits}


def history_views(entries: list[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(h) for h in entries]


def outcomes(ms: Memstream, ids: list[str]) -> dict[str, str]:
    return {i: r["outcome"] for i, r in ms.reader.outcomes(ids).items()}


async def settled_in_tier(ms: Memstream, event_id: str) -> Settlement:
    """The add's settlement once this process's projection shows one, never flushing."""
    for _ in range(1200):
        await ms.catch_up(flush=False)
        if (found := ms.settlement(event_id)) is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"async add {event_id} was never settled")


def test_an_inferred_add_stays_in_the_tier_and_history_explains_it(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """The messages, decision and memory events of two inferred adds are held in the tier
    (nothing is written to the tables), and history explains both changes from there --
    exactly as it does once the tier is flushed."""

    async def body(ms: Memstream) -> None:
        llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        [a] = await ms.add("I like tea", infer=True, user_id="alice")
        llm.push(
            facts("Loves tea"),
            decide({"id": "0", "text": "Loves tea", "event": "UPDATE", "old_memory": "Likes tea"}),
        )
        [b] = await ms.add("I love tea", infer=True, user_id="alice")
        assert (a.event, b.event, b.id) == ("ADD", "UPDATE", a.id)
        assert flushed(ms) == 0  # all of it is in the tier
        kinds = sorted(held(ms).values())
        assert kinds.count("MessagesRecorded") == 2 and kinds.count("InferenceDecided") == 2
        assert await live(ms) == {a.id: "Loves tea"}
        history = await ms.history(a.id)
        assert [h.event for h in history] == ["ADD", "UPDATE"]
        why = [h.inference for h in history]
        assert all(w is not None for w in why)
        assert why[0]["explanation"].startswith(
            "added by inference (model scripted-1) from the messages of 20"
        )  # type: ignore[index]
        assert why[1]["explanation"].startswith(
            "updated by inference (model scripted-1) from the messages of 20"
        )  # type: ignore[index]
        assert why[0]["decision_id"] != why[1]["decision_id"]  # type: ignore[index]
        before = history_views(history)
        await ms.projector.flush_tier()
        assert flushed(ms) > 0 and not held(ms)
        assert history_views(await ms.history(a.id)) == before

    go(tiered(settings, llm), body)


def test_an_async_add_settles_in_the_tier_and_the_first_settling_wins_across_batches(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """An async add whose messages were flushed is settled into the tier: its outcome
    (GET /v1/event) and the owed-add scan read the settlement from there. A second
    decision and a late failure, each in a later tier batch, are DUPLICATEs; the
    tables and a replay agree once written."""
    gate = threading.Event()

    async def body(ms: Memstream) -> None:
        assert ms.async_adds is not None and ms.inference is not None
        llm.push(Reply(facts("Plays chess"), gate=gate),
                 decide({"id": "n", "text": "Plays chess", "event": "ADD"}))  # fmt: skip
        eid = await ms.add_async(CHAT, user_id="alice")
        await ms.catch_up()  # the pending messages are in the tables, owed
        assert eid not in held(ms) and flushed(ms) == 1
        gate.set()
        first = await settled_in_tier(ms, eid)
        assert first.failed is None and [r["text"] for r in first.rows] == ["Plays chess"]
        assert flushed(ms) == 1 and first.event_id in held(ms)  # settled in the tier
        gen = ms.projector.generation()
        # the owed-add scan: from the tables alone the add looks owed; with the tier it is not
        assert [r["event_id"] for r in ms.async_adds._owed(gen, EMPTY)] == [eid]
        assert ms.async_adds._owed(gen, ms.projector.tier_view(gen)) == []
        assert await ms.async_adds._settled(eid)

        [recorded] = [e for e in await log_events(ms) if e.event_id == eid]
        assert isinstance(recorded, MessagesRecorded)
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
        await ms.async_adds._append([failure])
        assert flushed(ms) == 1  # still nothing more written
        decisions = [e.event_id for e in await log_events(ms) if e.event_type == "InferenceDecided"]
        ids = [*decisions, failure.event_id]
        in_tier = outcomes(ms, ids)
        assert in_tier == {decisions[0]: "DECIDED", decisions[1]: "DUPLICATE",
                           failure.event_id: "DUPLICATE"}  # fmt: skip
        assert sorted((await live(ms)).values()) == ["Plays chess"]
        again = ms.settlement(eid)
        assert again is not None and (again.event_id, again.failed) == (first.event_id, None)

        await ms.projector.flush_tier()
        assert not held(ms) and outcomes(ms, ids) == in_tier
        written = ms.settlement(eid)
        assert written is not None and [r["event_id"] for r in written.rows] == [
            r["event_id"] for r in first.rows
        ]
        await ms.replay()
        assert outcomes(ms, ids) == in_tier
        assert sorted((await live(ms)).values()) == ["Plays chess"]

    go(tiered(settings, llm, llm_timeout_s=60.0), body)


def test_a_conflict_across_tier_batches_is_detected(settings: Settings, llm: ScriptedLLM) -> None:
    """An inferred UPDATE decided on a version a direct update replaced meanwhile: the
    three batches sit in the tier, and the projector still records a CONFLICT."""

    async def body(ms: Memstream) -> None:
        llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        [a] = await ms.add("I like tea", infer=True, user_id="alice")
        llm.push(
            facts("Loves tea"),
            Reply(decide({"id": "0", "text": "Loves tea", "event": "UPDATE"}), delay=0.5),
        )
        inferred = asyncio.create_task(ms.add("I love tea", infer=True, user_id="alice"))
        while len(llm.requests) < 4:  # the decision call is in flight
            await asyncio.sleep(0.02)
        await ms.update(a.id, text="Drinks only coffee")
        [r] = await inferred
        assert r.event == "CONFLICT" and r.id == a.id
        assert flushed(ms) == 0
        history = await ms.history(a.id)
        assert [h.event for h in history] == ["ADD", "UPDATE", "CONFLICT"]
        assert history[2].inference is not None
        assert history[2].inference["explanation"].startswith("not changed (conflict")
        assert await live(ms) == {a.id: "Drinks only coffee"}
        await ms.replay()
        assert history_views(await ms.history(a.id)) == history_views(history)

    go(tiered(settings, llm), body)


def test_an_erasure_reaching_a_tier_with_sealed_messages_leaves_no_text(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """The erasure's batch arrives while the tier holds the subject's messages and
    decisions (appended by another process: keys destroyed, then SubjectErased; this one
    had not flushed). The tier is written and scrubbed with it: no message or decision
    text in any file under the data directory, and none in the tier."""
    secret_msg = "alice-secret-message-okapi"
    secret_fact = "alice-secret-fact-quokka"
    secret_later = "alice-secret-later-axolotl"

    async def body(ms: Memstream) -> None:
        assert ms.async_adds is not None
        llm.push(facts(secret_fact), decide({"id": "n", "text": secret_fact, "event": "ADD"}))
        await ms.add(f"{secret_msg} please", infer=True, user_id="alice")
        llm.push(facts(secret_later), decide({"id": "n", "text": secret_later, "event": "ADD"}))
        eid = await ms.add_async([{"role": "user", "content": secret_later}], user_id="alice")
        await settled_in_tier(ms, eid)
        llm.push(facts("Bob sails"), decide({"id": "n", "text": "Bob sails", "event": "ADD"}))
        await ms.add("I sail", infer=True, user_id="bob")
        assert flushed(ms) == 0
        view = ms.projector.tier_view(ms.projector.generation())
        assert secret_msg in repr(view.audits) and secret_fact in repr(view.audits)

        subject = Subject("local", "default", "user_id", "alice")
        key_ids = await ms.projector.keys.destroy(subject)
        erased = SubjectErased(scope=Scope("local", "default", user_id="alice"),
                               subject_field="user_id", key_ids=tuple(key_ids))  # fmt: skip
        await ms.writer._append([erased])
        assert not held(ms) and flushed(ms) > 0  # written and scrubbed at once
        assert await live(ms) == {}
        assert list((await live(ms, "bob")).values()) == ["Bob sails"]
        view = ms.projector.tier_view(ms.projector.generation())
        assert not any(s in repr(view.audits) for s in (secret_msg, secret_fact, secret_later))
        secrets = (secret_msg, secret_fact, secret_later)
        leaks = [
            str(p)
            for p in Path(ms.data_dir).rglob("*")
            if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)
        ]
        assert leaks == []

    go(tiered(settings, llm), body)


# -- a process killed with inference events in its tier ----------------------------------

CHILD = """
import asyncio, dataclasses, json, sys
from pathlib import Path
from memstream.service import Memstream
from memstream.settings import Settings

async def main() -> None:
    fields = json.loads(sys.argv[1])
    fields["data_dir"] = Path(fields["data_dir"])
    ms = await Memstream(Settings(**fields)).start()
    [a] = await ms.add("I like tea", infer=True, user_id="alice")
    await ms.add("I love tea", infer=True, user_id="alice")
    eid = await ms.add_async([{"role": "user", "content": "I play chess"}], user_id="alice")
    for _ in range(1200):
        await ms.catch_up(flush=False)
        if ms.settlement(eid) is not None:
            break
        await asyncio.sleep(0.05)
    done = ms.settlement(eid)
    history = [dataclasses.asdict(h) for h in await ms.history(a.id)]
    gen = ms.projector.generation()
    print(json.dumps({
        "id": a.id, "eid": eid, "history": history,
        "settled": [done.event_id, [r["event_id"] for r in done.rows]],
        "held": len(ms.projector.tier_view(gen).audits),
        "flushed": sum(gen.checkpoint().values()),
    }), flush=True)
    await asyncio.sleep(3600)  # killed here, the tier full

asyncio.run(main())
"""


def test_a_restart_after_a_kill_with_inference_events_in_the_tier_rederives_them(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """SIGKILLed with the inferred adds and an async add's settlement only in its tier:
    the next process applies them from the log again (the checkpoint is the last flush)
    and reads the same history, explanations and settlement -- without the LLM."""
    llm.push(
        facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}),
        facts("Loves tea"),
        decide({"id": "0", "text": "Loves tea", "event": "UPDATE", "old_memory": "Likes tea"}),
        facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}),
    )  # fmt: skip
    fields = {
        "data_dir": str(settings.data_dir), "embedder": "hashing", "tier_rows": 100_000,
        "tier_age_s": 3600.0, "kafka_bootstrap": settings.kafka_bootstrap,
        "topic": settings.topic, "llm_base_url": llm.base_url, "llm_model": "scripted-1",
        "llm_max_retries": 0, "llm_timeout_s": 5.0,
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(fields)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        said = json.loads(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert said["held"] >= 9  # messages, decisions and memory events of three adds
    assert said["flushed"] <= 1  # at most the async add's pending messages were written
    n = len(llm.requests)
    llm.stop()  # the restart must not need it

    async def after_restart() -> tuple[list[dict[str, Any]], Settlement | None]:
        async with Memstream(dataclasses.replace(settings, tier_rows=0)) as ms:
            await ms.catch_up()
            history = [dataclasses.asdict(h) for h in await ms.history(said["id"])]
            return history, ms.settlement(said["eid"])

    history, done = asyncio.run(after_restart())
    assert len(llm.requests) == n
    assert json.loads(json.dumps(history)) == said["history"]
    assert (
        done is not None and [done.event_id, [r["event_id"] for r in done.rows]] == said["settled"]
    )
