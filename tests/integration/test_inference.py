"""Inference (issue 12) against a scripted chat-completions server on loopback, on the file
log and on real Kafka: the events each scripted decision gives, the final state, the
failures that must append nothing, replay without the LLM, erasure of messages and
decisions, and two inferred adds racing in one scope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from memstream.events import (
    Event,
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
    decode_event,
)
from memstream.llm import LLMUnavailableError
from memstream.service import Memstream
from memstream.settings import Settings
from tests.llm_server import Reply, ScriptedLLM, decide, facts

T = TypeVar("T")


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


def with_llm(settings: Settings, llm: ScriptedLLM, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": llm.base_url, "llm_model": "scripted-1", "llm_max_retries": 0,
        "llm_timeout_s": 5.0, **kw,
    }  # fmt: skip
    return dataclasses.replace(settings, **values)


def go(settings: Settings, body: Callable[[Memstream], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Memstream(settings) as ms:
            return await body(ms)

    return asyncio.run(main())


async def log_events(ms: Memstream) -> list[Event]:
    """Every event in the log, opened with the key store (sealed texts readable)."""
    reader = await ms.log.reader({})
    out: list[Event] = []
    try:
        end = sum((await ms.log.end_offsets()).values())
        while len(out) < end:
            batch = await reader.next_batch(1000, timeout_s=1.0)
            out.extend(decode_event(r.value, ms.projector.keys.lookup) for r in batch)
    finally:
        await reader.close()
    return out


async def live(ms: Memstream, user: str = "alice") -> dict[str, str]:
    page = await ms.get_all({"user_id": user}, page_size=1000)
    return {m.id: m.memory for m in page.results}


def test_add_update_delete_none_give_exactly_the_scripted_events(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        chat = [
            {"role": "user", "content": "Hi, I'm Alice. I like tea and I live in Paris."},
            {"role": "assistant", "content": "Nice to meet you, Alice!"},
        ]
        llm.push(
            facts("Likes tea", "Lives in Paris"),
            decide(
                {"id": "a", "text": "Likes tea", "event": "ADD", "categories": ["food", "bogus"]},
                {"id": "b", "text": "Lives in Paris", "event": "ADD"},
            ),
        )
        first = await ms.add(chat, infer=True, user_id="alice")
        assert [(r.event, r.memory) for r in first] == [
            ("ADD", "Likes tea"), ("ADD", "Lives in Paris"),
        ]  # fmt: skip
        tea, paris = first[0].id, first[1].id
        # the second call saw the extracted facts and no stored memory
        shown = llm.requests[1]["messages"][1]["content"]
        assert "(none)" in shown and "Likes tea" in shown

        # UPDATE + DELETE + NONE: the LLM sees temporary ids, never the real ones
        llm.push(
            facts("Loves green tea", "Moved to Berlin"),
            decide(
                {
                    "id": "0",
                    "text": "Loves green tea",
                    "event": "UPDATE",
                    "old_memory": "Likes tea",
                },
                {"id": "1", "text": "Lives in Paris", "event": "DELETE"},
                {"id": "2", "text": "Lives in Berlin", "event": "ADD"},
            ),
        )
        second = await ms.add("I love green tea now. I moved to Berlin.", infer=True,
                              user_id="alice")  # fmt: skip
        request = llm.requests[3]["messages"][1]["content"]
        assert tea not in request and paris not in request
        shown_ids = json.loads(request.split("\n")[1])
        temp = {m["id"]: m["text"] for m in shown_ids}
        assert set(temp.values()) == {"Likes tea", "Lives in Paris"}
        by_event = {r.event: r for r in second}
        if temp["0"] == "Likes tea":
            assert by_event["UPDATE"].id == tea and by_event["DELETE"].id == paris
        else:  # the other order: the script's UPDATE hit Paris and DELETE hit tea
            assert by_event["UPDATE"].id == paris and by_event["DELETE"].id == tea
        assert by_event["UPDATE"].previous_memory == temp["0"]
        assert by_event["UPDATE"].memory == "Loves green tea"
        assert by_event["ADD"].memory == "Lives in Berlin"

        # NONE: nothing changes, but the decision is recorded
        llm.push(
            facts("Lives in Berlin"),
            decide({"id": "0", "text": "Lives in Berlin", "event": "NONE"}),
        )
        third = await ms.add("Berlin is home.", infer=True, user_id="alice")
        assert third == []

        # no facts: one call only, still recorded
        llm.push(facts())
        assert await ms.add("ok thanks", infer=True, user_id="alice") == []
        assert llm.remaining() == 0 and len(llm.requests) == 7

        events = await log_events(ms)
        kinds = [e.event_type for e in events]
        assert kinds == [
            "MessagesRecorded", "InferenceDecided", "MemoryAdded", "MemoryAdded",
            "MessagesRecorded", "InferenceDecided", "MemoryUpdated", "MemoryDeleted", "MemoryAdded",
            "MessagesRecorded", "InferenceDecided",
            "MessagesRecorded", "InferenceDecided",
        ]  # fmt: skip
        m0, d0 = events[0], events[1]
        assert isinstance(m0, MessagesRecorded) and json.loads(m0.messages) == chat
        assert isinstance(d0, InferenceDecided)
        assert (d0.messages_event_id, d0.model, d0.llm_host) == (
            m0.event_id,
            "scripted-1",
            llm.host,
        )
        assert (d0.prompt_tokens, d0.completion_tokens) == (22, 14)  # two scripted calls
        assert d0.prompt_version and len(d0.prompt_hash) == 64 and d0.temperature == 0.0
        assert json.loads(d0.output)["facts"] == ["Likes tea", "Lives in Paris"]
        for e in events:
            if isinstance(e, MemoryAdded | MemoryUpdated | MemoryDeleted):
                assert e.decision_id is not None
        added = events[2]
        assert isinstance(added, MemoryAdded) and added.decision_id == d0.event_id
        assert added.categories == ("food",)  # the LLM's categories, only known ones
        upd = events[6]
        assert isinstance(upd, MemoryUpdated) and upd.expected_offset is not None

        state = await live(ms)
        assert sorted(state.values()) == ["Lives in Berlin", "Loves green tea"]
        # what a conversation caused, found from its MessagesRecorded id alone
        caused = ms.inferred_outcomes(events[4].event_id)
        assert caused is not None
        assert [r["event_id"] for r in caused] == [e.event_id for e in events[6:9]]
        assert ms.inferred_outcomes(events[9].event_id) == []  # the NONE conversation
        history = await ms.history(by_event["UPDATE"].id)
        assert history[-1].inference is not None
        assert (
            history[-1]
            .inference["explanation"]
            .startswith("updated by inference (model scripted-1) from the messages of 20")
        )

    go(with_llm(settings, llm), body)


@pytest.mark.parametrize(
    "failure",
    ["malformed_json", "wrong_shape", "unknown_temp_id", "http_500", "http_429", "timeout"],
)
def test_llm_failures_are_clear_errors_and_append_nothing(
    settings: Settings, llm: ScriptedLLM, failure: str
) -> None:
    async def body(ms: Memstream) -> None:
        llm.push(facts("Likes tea"), decide({"id": "x", "text": "Likes tea", "event": "ADD"}))
        [seed] = await ms.add("I like tea", infer=True, user_id="alice")
        ends = await ms.log.end_offsets()
        if failure == "malformed_json":
            llm.push(Reply("{not json"))
        elif failure == "wrong_shape":
            llm.push(facts("Likes coffee"), Reply({"memory": [{"id": "0", "event": "MAYBE"}]}))
        elif failure == "unknown_temp_id":
            llm.push(facts("Likes coffee"), decide({"id": "7", "text": "x", "event": "DELETE"}))
        elif failure == "http_500":
            llm.push(Reply(status=500))
        elif failure == "http_429":
            llm.push(facts("Likes coffee"), Reply(status=429))
        else:
            llm.push(Reply(facts("Likes coffee"), delay=2.5))
        with pytest.raises(LLMUnavailableError) as info:
            await ms.add("I like coffee too", infer=True, user_id="alice")
        message = info.value.message
        assert llm.host in message and "scripted-1" in message
        expected = {
            "malformed_json": "malformed structured output",
            "wrong_shape": "malformed structured output",
            "unknown_temp_id": "unknown memory id '7'",
            "http_500": "HTTP 500",
            "http_429": "HTTP 429",
            "timeout": "did not answer within",
        }[failure]
        assert expected in message
        assert info.value.status_code == 503
        assert await ms.log.end_offsets() == ends  # nothing appended
        assert await live(ms) == {seed.id: "Likes tea"}

    go(with_llm(settings, llm, llm_timeout_s=1.0), body)


def test_retries_429_and_500_with_backoff_then_succeeds(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        llm.push(Reply(status=429), Reply(status=503), facts("Likes tea"))
        llm.push(decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        [r] = await ms.add("I like tea", infer=True, user_id="alice")
        assert r.event == "ADD" and len(llm.requests) == 4

    go(with_llm(settings, llm, llm_max_retries=2), body)


def test_json_object_fallback_when_the_server_rejects_json_schema(
    settings: Settings, tmp_path: Path
) -> None:
    with ScriptedLLM(json_schema=False) as llm:

        async def body(ms: Memstream) -> None:
            llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
            [r] = await ms.add("I like tea", infer=True, user_id="alice")
            assert r.memory == "Likes tea"
            assert [q["response_format"]["type"] for q in llm.requests] == ["json_object"] * 2

        go(with_llm(settings, llm), body)


def test_no_llm_stores_verbatim(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        assert not ms.inference_on
        [r] = await ms.add("I like tea", infer=True, user_id="alice")
        assert (r.event, r.memory) == ("ADD", "I like tea")

    go(settings, body)


def test_replay_without_the_llm_and_erasure_of_messages_and_decisions(
    settings: Settings, llm: ScriptedLLM
) -> None:
    secret_msg = "alice-secret-message-capybara"
    secret_fact = "alice-secret-fact-pelican"
    secret_new = "alice-secret-updated-lemur"

    async def body(ms: Memstream) -> None:
        llm.push(facts(secret_fact), decide({"id": "n", "text": secret_fact, "event": "ADD"}))
        [a] = await ms.add(f"{secret_msg} please remember", infer=True, user_id="alice")
        llm.push(
            facts(secret_new),
            decide({"id": "0", "text": secret_new, "event": "UPDATE", "old_memory": secret_fact}),
        )
        await ms.add("an update", infer=True, user_id="alice")
        llm.push(facts("Bob sails"), decide({"id": "n", "text": "Bob sails", "event": "ADD"}))
        await ms.add("I sail", infer=True, user_id="bob")
        before = await live(ms), await live(ms, "bob")
        await ms.settle()  # the tables themselves are read below: the fresh tier written
        gen = ms.projector.generation()
        rows = sorted(repr(sorted(r.items())) for r in gen.memories().to_arrow().to_pylist())
        events = sorted(repr(sorted(r.items())) for r in gen.events().to_arrow().to_pylist())
        n = len(llm.requests)
        llm.stop()  # the LLM is gone: replay must not need it
        await ms.replay()
        gen = ms.projector.generation()
        assert (
            sorted(repr(sorted(r.items())) for r in gen.memories().to_arrow().to_pylist()) == rows
        )
        assert (
            sorted(repr(sorted(r.items())) for r in gen.events().to_arrow().to_pylist()) == events
        )
        assert (await live(ms), await live(ms, "bob")) == before
        assert len(llm.requests) == n and a.id in before[0]

        await ms.erase(user_id="alice")
        assert await live(ms) == {}
        assert await live(ms, "bob") == before[1]
        leaks = [
            str(p)
            for p in Path(ms.data_dir).rglob("*")
            if p.is_file()
            and any(s.encode() in p.read_bytes() for s in (secret_msg, secret_fact, secret_new))
        ]
        assert leaks == []
        raw = [e for e in await log_events(ms) if e.scope.user_id == "alice"]
        assert raw and all(e.erased for e in raw if e.SEALED)

    go(with_llm(settings, llm), body)


def test_racing_inferred_adds_in_one_scope_are_serialised(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """Two adds at once: the second LLM call sees the first's result (one scope lock, and
    the projection caught up under it), so it can UPDATE instead of adding a contradiction."""

    async def body(ms: Memstream) -> None:
        llm.push(
            Reply(facts("Likes tea"), delay=0.3),
            decide({"id": "n", "text": "Likes tea", "event": "ADD"}),
            facts("Dislikes tea"),
            decide(
                {"id": "0", "text": "Dislikes tea", "event": "UPDATE", "old_memory": "Likes tea"}
            ),
        )
        a, b = await asyncio.gather(
            ms.add("I like tea", infer=True, user_id="alice"),
            ms.add("Actually I dislike tea", infer=True, user_id="alice"),
        )
        # whichever took the lock first got the first script entries (ADD); the other's LLM
        # was shown that memory (unserialised, it would have seen none: unknown id "0")
        first, second = sorted([a, b], key=lambda rs: rs[0].event)
        assert [r.event for r in first] == ["ADD"] and [r.event for r in second] == ["UPDATE"]
        assert second[0].id == first[0].id
        assert "Likes tea" in llm.requests[3]["messages"][1]["content"]
        assert list((await live(ms)).values()) == ["Dislikes tea"]

    go(with_llm(settings, llm), body)


def test_update_of_a_memory_changed_after_the_llm_read_it_is_a_conflict(
    settings: Settings, llm: ScriptedLLM
) -> None:
    """Across processes the lock does not reach: the projector compares the version the
    LLM read (expected_offset) and records CONFLICT instead of applying blindly."""

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
        await ms.update(a.id, text="Drinks only coffee")  # a direct write meanwhile
        [r] = await inferred
        assert r.event == "CONFLICT" and r.id == a.id
        assert await live(ms) == {a.id: "Drinks only coffee"}
        history = await ms.history(a.id)
        assert [h.event for h in history] == ["ADD", "UPDATE", "CONFLICT"]
        # replay re-derives the same conflict from the log
        await ms.replay()
        assert [h.event for h in await ms.history(a.id)] == ["ADD", "UPDATE", "CONFLICT"]
        assert await live(ms) == {a.id: "Drinks only coffee"}

    go(with_llm(settings, llm), body)


def test_project_settings_steer_extraction_and_categories(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        await ms.update_project(
            custom_instructions="Only remember food preferences.",
            custom_categories=[{"beverages": "drinks"}, "meals"],
        )
        project = await ms.project()
        assert project.custom_instructions == "Only remember food preferences."
        llm.push(
            facts("Likes tea"),
            decide(
                {
                    "id": "n",
                    "text": "Likes tea",
                    "event": "ADD",
                    "categories": ["beverages", "food"],
                }
            ),
        )
        [r] = await ms.add("I like tea", infer=True, user_id="alice")
        assert "Only remember food preferences." in llm.requests[0]["messages"][0]["content"]
        assert "beverages (drinks)" in llm.requests[1]["messages"][0]["content"]
        assert (await ms.get(r.id)).categories == ["beverages"]
        # a category given by the request wins over the LLM's
        llm.push(
            facts("Likes cake"),
            decide({"id": "n", "text": "Likes cake", "event": "ADD", "categories": ["meals"]}),
        )
        [c] = await ms.add("I like cake", infer=True, user_id="alice", categories=["dessert"])
        assert (await ms.get(c.id)).categories == ["dessert"]
        await ms.update_project(custom_instructions="Remember everything.")
        project = await ms.project()
        assert project.custom_instructions == "Remember everything."
        assert project.custom_categories == [{"beverages": "drinks"}, "meals"]

    go(with_llm(settings, llm), body)


def test_reinfer_proposes_with_another_model_then_swaps_in_events(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        [nuts] = await ms.add("Allergic to nuts", user_id="alice")  # a direct write
        llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
        await ms.add("I like tea", infer=True, user_id="alice")
        llm.push(
            facts("Lives in Berlin"), decide({"id": "n", "text": "Lives in Berlin", "event": "ADD"})
        )
        await ms.add("I moved to Berlin", infer=True, user_id="alice")
        before = await live(ms)
        ends = await ms.log.end_offsets()

        # the new model: shown only the direct memory at the first conversation ("0")
        llm.push(
            facts("Loves tea", "Severe nut allergy"),
            decide(
                {"id": "n", "text": "Loves tea", "event": "ADD"},
                {"id": "0", "text": "Severely allergic to nuts", "event": "UPDATE"},
            ),
            facts("Lives in Berlin"),
            decide({"id": "n", "text": "Lives in Berlin", "event": "ADD"}),
        )
        plan, applied = await ms.reinfer(model="scripted-2", user_id="alice")
        assert applied is None
        assert llm.requests[-1]["model"] == "scripted-2" and llm.remaining() == 0
        assert "Allergic to nuts" in llm.requests[-3]["messages"][1]["content"]
        assert plan.conversations == 2
        assert [a["text"] for a in plan.appear] == ["Loves tea"]
        assert [(c["id"], c["from"], c["to"]) for c in plan.change] == [
            (nuts.id, "Allergic to nuts", "Severely allergic to nuts")
        ]
        assert [g["text"] for g in plan.go] == ["Likes tea"]
        assert plan.unchanged == 1  # Lives in Berlin
        # a proposal is one event in the log (recorded, applied to nothing live)
        assert (await ms.log.end_offsets())[0] == ends[0] + 1 and await live(ms) == before

        _, applied = await ms.reinfer_swap(plan.proposal_id)  # no LLM call: it is in the log
        assert llm.remaining() == 0 and len(llm.requests) == 8
        assert sorted(r.event for r in applied) == ["ADD", "DELETE", "UPDATE"]
        after = await live(ms)
        assert sorted(after.values()) == [
            "Lives in Berlin", "Loves tea", "Severely allergic to nuts",
        ]  # fmt: skip
        history = await ms.history(nuts.id)
        assert history[-1].inference is not None and history[-1].inference["model"] == "scripted-2"
        llm.stop()
        await ms.replay()  # no LLM needed: the swap is in the log
        assert await live(ms) == after

    go(with_llm(settings, llm), body)
