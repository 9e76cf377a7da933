"""`reinfer` over a filter into a candidate generation (issue 12, "Beyond Mem0"), on the file
log and on real Kafka, against a scripted chat-completions server: the proposal is in the
log, the candidate is a real generation on disk read like the live one, nothing live moves
until the swap, the swap makes live equal to the candidate, replay reproduces it without the
LLM, an erasure reaches the candidate, and a memory changed after the proposal stops the swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from memstream.errors import ConflictError, FilterError, RequestTooLargeError
from memstream.events import InferenceDecided
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_inference import log_events
from tests.llm_server import ScriptedLLM, decide, facts

T = TypeVar("T")
ALICE_AND_BOB = {"user_id": {"in": ["alice", "bob"]}}


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


def with_llm(settings: Settings, llm: ScriptedLLM) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": llm.base_url, "llm_model": "model-old", "llm_max_retries": 0,
        "llm_timeout_s": 5.0,
    }  # fmt: skip
    return dataclasses.replace(settings, **values)


def go(settings: Settings, body: Callable[[Memstream], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Memstream(settings) as ms:
            return await body(ms)

    return asyncio.run(main())


async def memories(ms: Memstream, user: str, candidate: str | None = None) -> dict[str, str]:
    page = await ms.get_all({"user_id": user}, page_size=1000, candidate=candidate)
    return {m.id: m.memory for m in page.results}


async def recorded(ms: Memstream, llm: ScriptedLLM) -> dict[str, Any]:
    """alice: a direct memory and two inferred conversations; bob and carol one each."""
    [nuts] = await ms.add("Allergic to nuts", user_id="alice")
    llm.push(facts("Likes tea"), decide({"id": "n", "text": "Likes tea", "event": "ADD"}))
    [tea] = await ms.add("I like tea", infer=True, user_id="alice")
    llm.push(
        facts("Lives in Berlin"), decide({"id": "n", "text": "Lives in Berlin", "event": "ADD"})
    )
    [berlin] = await ms.add("I moved to Berlin", infer=True, user_id="alice")
    llm.push(facts("Plays chess"), decide({"id": "n", "text": "Plays chess", "event": "ADD"}))
    [chess] = await ms.add("I play chess", infer=True, user_id="bob")
    llm.push(facts("Likes jazz"), decide({"id": "n", "text": "Likes jazz", "event": "ADD"}))
    await ms.add("I like jazz", infer=True, user_id="carol")
    return {"nuts": nuts.id, "tea": tea.id, "berlin": berlin.id, "chess": chess.id}


def new_model_script(llm: ScriptedLLM) -> None:
    """The new model, conversation by conversation (alice's two, then bob's)."""
    llm.push(
        facts("Loves tea", "Severe nut allergy"),
        decide(
            {"id": "n", "text": "Loves tea", "event": "ADD"},
            {"id": "0", "text": "Severely allergic to nuts", "event": "UPDATE"},
        ),
        facts("Lives in Berlin"),
        decide({"id": "n", "text": "Lives in Berlin", "event": "ADD"}),
        facts("Plays chess", "Likes go"),
        decide(
            {"id": "n", "text": "Plays chess", "event": "ADD"},
            {"id": "n", "text": "Likes go", "event": "ADD"},
        ),
    )


def test_filter_proposal_candidate_swap_and_replay_without_the_llm(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        ids = await recorded(ms, llm)
        live_before = {u: await memories(ms, u) for u in ("alice", "bob", "carol")}
        ends = await ms.log.end_offsets()

        new_model_script(llm)
        plan, applied = await ms.reinfer(model="model-new", filters=ALICE_AND_BOB)
        assert applied is None and llm.remaining() == 0
        assert [r["model"] for r in llm.requests[-6:]] == ["model-new"] * 6
        # bob's conversation was decided against bob's state only
        assert "Likes tea" not in llm.requests[-1]["messages"][1]["content"]
        assert [s.user_id for s in plan.scopes] == ["alice", "bob"]
        assert plan.conversations == 3
        assert sorted(a["text"] for a in plan.appear) == ["Likes go", "Loves tea"]
        assert [(c["id"], c["from"], c["to"]) for c in plan.change] == [
            (ids["nuts"], "Allergic to nuts", "Severely allergic to nuts")
        ]
        assert [(g["id"], g["text"]) for g in plan.go] == [(ids["tea"], "Likes tea")]
        assert plan.unchanged == 2  # Lives in Berlin and Plays chess keep their ids

        # the proposal is in the log: one InferenceDecided per scope, applied to nothing
        assert sum((await ms.log.end_offsets()).values()) == sum(ends.values()) + 2
        new = [e for e in await log_events(ms) if e.request_id == plan.proposal_id]
        assert len(new) == 2 and all(isinstance(e, InferenceDecided) for e in new)
        assert sorted(e.scope.user_id or "" for e in new) == ["alice", "bob"]
        for user in ("alice", "bob", "carol"):
            assert await memories(ms, user) == live_before[user]

        # the candidate: a real generation on disk, not live, read like the live one
        assert plan.generation is not None
        gen_dir = Path(ms.data_dir) / "projections" / plan.generation
        assert (gen_dir / "CANDIDATE").is_file() and ms.status()["generation"] != plan.generation
        candidate = {u: await memories(ms, u, plan.proposal_id) for u in ("alice", "bob", "carol")}
        assert sorted(candidate["alice"].values()) == [
            "Lives in Berlin", "Loves tea", "Severely allergic to nuts",
        ]  # fmt: skip
        assert candidate["alice"][ids["nuts"]] == "Severely allergic to nuts"
        assert candidate["alice"][ids["berlin"]] == "Lives in Berlin"
        assert sorted(candidate["bob"].values()) == ["Likes go", "Plays chess"]
        assert candidate["carol"] == live_before["carol"]  # not selected: as live
        hits = await ms.search("tea", {"user_id": "alice"}, top_k=1, candidate=plan.proposal_id)
        assert [h.memory for h in hits] == ["Loves tea"]
        assert [h.memory for h in await ms.search("tea", {"user_id": "alice"}, top_k=1)] == [
            "Likes tea"
        ]

        # from here on no LLM: discarding and rebuilding the candidate is a fold of the log
        llm.stop()
        assert await ms.reinfer_discard(plan.proposal_id) == [plan.generation]
        assert not gen_dir.exists()
        shown = await ms.reinfer_show(plan.proposal_id)
        assert shown.generation != plan.generation
        assert (shown.appear, shown.change, shown.go) == (plan.appear, plan.change, plan.go)
        assert {u: await memories(ms, u, plan.proposal_id) for u in candidate} == candidate

        _, results = await ms.reinfer_swap(plan.proposal_id)
        assert sorted(r.event for r in results) == ["ADD", "ADD", "DELETE", "UPDATE"]
        swapped = {u: await memories(ms, u) for u in ("alice", "bob", "carol")}
        assert swapped == candidate  # same ids, same texts
        assert not (Path(ms.data_dir) / "projections" / shown.generation).exists()
        history = await ms.history(ids["nuts"])
        assert history[-1].inference is not None and history[-1].inference["model"] == "model-new"
        # swapping again changes nothing
        _, again = await ms.reinfer_swap(plan.proposal_id)
        assert sorted(r.event for r in again) == ["ADD", "ADD", "DELETE", "UPDATE"]
        assert {u: await memories(ms, u) for u in swapped} == swapped

        await ms.replay()  # the LLM server is stopped: the swap is in the log
        assert {u: await memories(ms, u) for u in swapped} == swapped

    go(with_llm(settings, llm), body)


def test_erasing_a_user_reaches_the_candidate_generation(
    settings: Settings, llm: ScriptedLLM
) -> None:
    secret = "alice-candidate-secret-okapi"

    async def body(ms: Memstream) -> None:
        await recorded(ms, llm)
        llm.push(
            facts(secret),
            decide({"id": "n", "text": secret, "event": "ADD"}),
            facts("Lives in Berlin"),
            decide({"id": "n", "text": "Lives in Berlin", "event": "ADD"}),
            facts("Plays chess"),
            decide({"id": "n", "text": "Plays chess", "event": "ADD"}),
        )
        plan, _ = await ms.reinfer(model="model-new", filters=ALICE_AND_BOB)
        assert plan.generation is not None
        gen_dir = Path(ms.data_dir) / "projections" / plan.generation
        assert secret in (await memories(ms, "alice", plan.proposal_id)).values()
        assert any(secret.encode() in p.read_bytes() for p in gen_dir.rglob("*") if p.is_file())

        await ms.erase(user_id="alice")
        leaks = [
            str(p)
            for p in Path(ms.data_dir).rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert leaks == []
        assert gen_dir.is_dir()  # scrubbed, not dropped: bob's part is still there to judge
        assert await memories(ms, "alice", plan.proposal_id) == {}
        assert sorted((await memories(ms, "bob", plan.proposal_id)).values()) == ["Plays chess"]
        with pytest.raises(ConflictError, match="erased after it was made"):
            await ms.reinfer_swap(plan.proposal_id)

    go(with_llm(settings, llm), body)


def test_a_memory_changed_after_the_proposal_stops_the_swap(
    settings: Settings, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        ids = await recorded(ms, llm)
        new_model_script(llm)
        plan, _ = await ms.reinfer(model="model-new", filters=ALICE_AND_BOB)
        await ms.update(ids["nuts"], text="Allergic to peanuts")
        live_alice = await memories(ms, "alice")
        ends = await ms.log.end_offsets()
        with pytest.raises(
            ConflictError, match=f"MemoryUpdated of memory {ids['nuts']}"
        ) as failure:
            await ms.reinfer_swap(plan.proposal_id)
        assert "nothing was written" in failure.value.message
        assert await ms.log.end_offsets() == ends
        assert await memories(ms, "alice") == live_alice
        assert live_alice[ids["nuts"]] == "Allergic to peanuts"

    go(with_llm(settings, llm), body)


def test_selection_is_bounded_by_entity_ids_only_and_one_shot_swap(
    tmp_path: Path, llm: ScriptedLLM
) -> None:
    async def body(ms: Memstream) -> None:
        await recorded(ms, llm)
        ends = await ms.log.end_offsets()
        with pytest.raises(RequestTooLargeError, match="selects 3 recorded conversations in 2"):
            await ms.reinfer(model="model-new", filters=ALICE_AND_BOB, limit=2)
        with pytest.raises(FilterError, match="entity ids only"):
            await ms.reinfer(
                model="model-new",
                filters={"AND": [{"user_id": "alice"}, {"categories": {"contains": "x"}}]},
            )
        assert await ms.log.end_offsets() == ends and llm.remaining() == 0
        assert len(llm.requests) == 8  # the recorded adds' only

        # one scope, proposed and swapped in at once
        llm.push(facts("Loves jazz"), decide({"id": "n", "text": "Loves jazz", "event": "ADD"}))
        plan, applied = await ms.reinfer(model="model-new", user_id="carol", swap=True)
        assert applied is not None and sorted(r.event for r in applied) == ["ADD", "DELETE"]
        assert list((await memories(ms, "carol")).values()) == ["Loves jazz"]
        assert [
            (p["proposal_id"], p["scopes"], p["swapped_scopes"], p["generation"])
            for p in await ms.reinfer_proposals()
        ] == [(plan.proposal_id, 1, 1, None)]

    settings = Settings(data_dir=tmp_path / "data", embedder="hashing")
    go(with_llm(settings, llm), body)
