"""The candidate's fold rewrite (projector/candidate.py), pure: in a proposal's scopes and
before its position the old decisions leave and the proposal's ops come in their place;
everything else passes through unchanged, and an erased proposal brings nothing."""

from __future__ import annotations

import dataclasses
import json

from memstream.events import (
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
)
from memstream.log.base import Position
from memstream.projector.candidate import Substitution, proposal_output
from memstream.scope import Scope

ALICE = Scope("o", "p", user_id="alice")
BOB = Scope("o", "p", user_id="bob")


def proposal(scope: Scope, ops: dict[str, list[dict[str, object]]]) -> InferenceDecided:
    conversations = [{"messages_event_id": m, "ops": o} for m, o in ops.items()]
    return InferenceDecided(
        scope=scope, request_id="pid", messages_event_id="m", model="new", llm_host="h",
        prompt_version="v", prompt_hash="x", key_id="k1",
        output=json.dumps({"proposal": "pid", "conversations": conversations}),
    )  # fmt: skip


def test_old_decisions_go_and_the_proposal_ops_come_at_the_conversation() -> None:
    talk = MessagesRecorded(scope=ALICE, event_id="m1", messages="[]", occurred_at=5)
    old = InferenceDecided(scope=ALICE, messages_event_id="m1", model="old", llm_host="h",
                           prompt_version="v", prompt_hash="x")  # fmt: skip
    old_add = MemoryAdded(scope=ALICE, memory_id="a", text="t", hash="h", decision_id=old.event_id)
    direct = MemoryAdded(scope=ALICE, memory_id="d", text="direct", hash="hd")
    bobs = MemoryAdded(scope=BOB, memory_id="b", text="bob", hash="hb", decision_id="other")
    ops = [
        {"op": "ADD", "memory_id": "n", "text": "new", "hash": "hn", "categories": ["food"]},
        {"op": "UPDATE", "memory_id": "d", "text": "direct!", "hash": "hd2", "categories": []},
        {"op": "DELETE", "memory_id": "z"},
    ]
    prop = proposal(ALICE, {"m1": ops})
    later = MemoryUpdated(scope=ALICE, memory_id="a", text="u", decision_id=old.event_id)
    sub = Substitution.of("pid", [(prop, Position(0, 10))])
    events = [
        (direct, Position(0, 1)), (talk, Position(0, 2)), (old, Position(0, 3)),
        (old_add, Position(0, 4)), (bobs, Position(1, 0)), (prop, Position(0, 10)),
        (later, Position(0, 11)),
    ]  # fmt: skip
    out = sub(events)
    assert [e for e, _ in out[:2]] == [direct, talk]
    synthesized = out[2:5]
    assert [type(e).__name__ for e, _ in synthesized] == [
        "MemoryAdded", "MemoryUpdated", "MemoryDeleted",
    ]  # fmt: skip
    assert all(pos == Position(0, 2) for _, pos in synthesized)
    added = synthesized[0][0]
    assert isinstance(added, MemoryAdded)
    assert (added.memory_id, added.text, added.hash, added.categories) == (
        "n",
        "new",
        "hn",
        ("food",),
    )
    assert (added.occurred_at, added.key_id, added.decision_id) == (5, "k1", prop.event_id)
    assert isinstance(synthesized[2][0], MemoryDeleted)
    # the old decision's InferenceDecided stays (recorded, applies nothing); its ADD goes;
    # another scope's decision and anything after the proposal pass through
    assert [e for e, _ in out[5:]] == [old, bobs, prop, later]
    # deterministic: the same fold twice gives the same event ids
    assert [e.event_id for e, _ in sub(events)] == [e.event_id for e, _ in out]


def test_an_erased_proposal_still_removes_the_old_decisions_and_adds_nothing() -> None:
    prop = dataclasses.replace(proposal(ALICE, {"m1": [{"op": "DELETE", "memory_id": "z"}]}),
                               erased=True, output="{}")  # fmt: skip
    assert proposal_output(prop) is None
    talk = MessagesRecorded(scope=ALICE, event_id="m1", messages="[]")
    old_add = MemoryAdded(scope=ALICE, memory_id="a", text="t", hash="h", decision_id="d")
    out = Substitution.of("pid", [(prop, Position(0, 9))])(
        [(talk, Position(0, 1)), (old_add, Position(0, 2))]
    )
    assert [e for e, _ in out] == [talk]
