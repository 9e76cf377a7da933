"""The projector's policy, without I/O: log-order decisions and crash-replay idempotence."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.events import Event, MemoryAdded, MemoryDeleted, MemoryUpdated, text_hash
from memstream.log.base import Position
from memstream.projector.apply import BatchState, apply_event
from memstream.scope import Scope

SCOPES = [
    Scope("o", "p", user_id="alice"),
    Scope("o", "p", user_id="alice", run_id="t1"),
    Scope("o", "p", user_id="bob"),
]
TEXTS = ["tea", "coffee", "water"]
IDS = ["m1", "m2", "m3", "m4"]


def added(mid: str, scope: Scope, text: str) -> MemoryAdded:
    return MemoryAdded(scope=scope, memory_id=mid, text=text, hash=text_hash(text))


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    out: list[Event] = []
    scope_of: dict[str, Scope] = {}
    for _ in range(draw(st.integers(1, 25))):
        mid = draw(st.sampled_from(IDS))
        kind = draw(st.sampled_from(["add", "add", "update", "delete"]))
        if kind == "add":
            scope = scope_of.setdefault(mid, draw(st.sampled_from(SCOPES)))
            out.append(added(mid, scope, draw(st.sampled_from(TEXTS))))
        elif mid in scope_of:
            scope = scope_of[mid]
            if kind == "update":
                t = draw(st.sampled_from(TEXTS))
                out.append(MemoryUpdated(scope=scope, memory_id=mid, text=t, hash=text_hash(t)))
            else:
                out.append(MemoryDeleted(scope=scope, memory_id=mid))
    return out


def run_batches(events: list[Event], cuts: list[int], crash_at: int | None) -> dict[str, Any]:
    """Apply events in batches like the projector does; at `crash_at`, apply that batch twice
    (its writes landed but its checkpoint did not)."""
    live: dict[str, dict[str, Any]] = {}
    recorded: dict[str, str] = {}  # the events table: event_id -> outcome, written first
    bounds = sorted({0, len(events), *[c for c in cuts if 0 < c < len(events)]})
    batches = [list(enumerate(events))[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    for i, batch in enumerate(batches):
        for _ in range(2 if i == crash_at else 1):
            state = BatchState()
            for row in copy.deepcopy(list(live.values())):
                state.load(row)
            for offset, event in batch:
                audit = apply_event(state, event, Position(0, offset), recorded.get(event.event_id))
                recorded.setdefault(event.event_id, audit["outcome"])
            for row in state.upserts():
                live[row["id"]] = row
            for mid in state.deletes():
                live.pop(mid, None)
    return {
        mid: (r["text"], r["hash"], r["created_offset"], r["last_offset"])
        for mid, r in live.items()
    }


@settings(max_examples=300)
@given(streams(), st.lists(st.integers(0, 25), max_size=4), st.integers(0, 4))
def test_reapplying_a_batch_after_a_crash_changes_nothing(
    events: list[Event], cuts: list[int], crash: int
) -> None:
    assert run_batches(events, cuts, crash_at=crash) == run_batches(events, [], crash_at=None)


@settings(max_examples=300)
@given(streams(), st.lists(st.integers(0, 25), max_size=4))
def test_batching_never_changes_the_outcome(events: list[Event], cuts: list[int]) -> None:
    assert run_batches(events, cuts, None) == run_batches(events, [], None)


def test_exact_duplicate_in_the_same_scope_is_one_memory_decided_in_log_order() -> None:
    state = BatchState()
    a = apply_event(state, added("m1", SCOPES[0], "tea"), Position(0, 0))
    b = apply_event(state, added("m2", SCOPES[0], "tea"), Position(0, 1))
    c = apply_event(
        state, added("m3", SCOPES[1], "tea"), Position(0, 2)
    )  # other scope: its own memory
    assert (a["outcome"], b["outcome"], c["outcome"]) == ("ADD", "NONE", "ADD")
    assert b["resolved_memory_id"] == "m1"
    assert state.rows.get("m2") is None and state.rows["m3"] is not None


def test_after_delete_the_same_text_can_be_added_again() -> None:
    state = BatchState()
    apply_event(state, added("m1", SCOPES[0], "tea"), Position(0, 0))
    apply_event(state, MemoryDeleted(scope=SCOPES[0], memory_id="m1"), Position(0, 1))
    again = apply_event(state, added("m2", SCOPES[0], "tea"), Position(0, 2))
    assert again["outcome"] == "ADD" and state.rows["m2"] is not None


def test_update_records_old_and_new_text_and_skips_immutable() -> None:
    state = BatchState()
    apply_event(state, added("m1", SCOPES[0], "tea"), Position(0, 0))
    up = apply_event(
        state,
        MemoryUpdated(
            scope=SCOPES[0], memory_id="m1", text="green tea", hash=text_hash("green tea")
        ),
        Position(0, 1),
    )
    assert (up["outcome"], up["old_text"], up["text"]) == ("UPDATE", "tea", "green tea")
    row = state.rows["m1"]
    assert row is not None and row["text"] == "green tea" and row["last_offset"] == 1
    imm = MemoryAdded(
        scope=SCOPES[0], memory_id="m9", text="fixed", hash=text_hash("fixed"), immutable=True
    )
    apply_event(state, imm, Position(0, 2))
    res = apply_event(
        state,
        MemoryUpdated(scope=SCOPES[0], memory_id="m9", text="changed", hash=text_hash("changed")),
        Position(0, 3),
    )
    assert res["outcome"] == "NOOP" and state.rows["m9"]["text"] == "fixed"  # type: ignore[index]
