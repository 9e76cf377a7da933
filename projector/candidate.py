"""A `reinfer` candidate: the log folded with a proposal substituted for the old decisions.

`memstream reinfer` re-decides the recorded conversations of some scopes with another model
and records the result in the log as a *proposal*: one `InferenceDecided` per scope whose
output is `{"proposal": id, "conversations": [{"messages_event_id", ..., "ops": [...]}]}`,
where `ops` are the memory changes (ADD / UPDATE / DELETE with their memory ids, texts and
hashes) the new model's decisions on that conversation make. The live projector records a
proposal and applies nothing (as for every `InferenceDecided`).

A candidate generation is the fold of the log through the ordinary apply, with one
rewrite (`Substitution`): in a proposal's scopes, before the proposal's own position,
memory events that carry a `decision_id` (the old model's decisions, and earlier swaps)
are left out, and right after each re-decided `MessagesRecorded` come the proposal's ops for
it, as memory events at the conversation's position. Direct writes, expiries and erasures
stay where they are. So the candidate is a deterministic function of the log and the
proposal id: rebuilding it asks no LLM, and an erased subject's proposal is sealed under its
destroyed key like any text, so it folds to nothing.

Pure: no I/O here. The projector runs the fold (`Projector.build_candidate`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memstream.events import (
    Actor,
    Event,
    InferenceDecided,
    MemoryAdded,
    MemoryDeleted,
    MemoryUpdated,
    MessagesRecorded,
)
from memstream.log.base import Position
from memstream.scope import Scope

_IDS = uuid.UUID("6d656d73-7472-6561-6d2d-7265696e6665")  # uuid5 namespace of synthesized events
PROPOSAL_SOURCE = "reinfer"  # actor.source of a proposal's InferenceDecided
SWAP_SOURCE = "reinfer-swap"  # actor.source of the events that make a proposal live


def proposal_output(event: InferenceDecided) -> dict[str, Any] | None:
    """The proposal an `InferenceDecided` records, or None when it is not one (or erased)."""
    if event.erased:
        return None
    try:
        output = json.loads(event.output)
    except ValueError:
        return None
    if not isinstance(output, dict) or not isinstance(output.get("proposal"), str):
        return None
    return output


@dataclass
class Substitution:
    """The rewrite a candidate's fold applies to each batch of decoded events."""

    proposal_id: str
    # the position of each scope's proposal event: only events before it are rewritten
    until: dict[Scope, Position] = field(default_factory=dict)
    # messages event id -> (its ops, the proposal event that holds them)
    ops: dict[str, tuple[list[dict[str, Any]], InferenceDecided]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, proposal_id: str, events: Iterable[tuple[InferenceDecided, Position]]
    ) -> Substitution:
        """From the proposal's events as read from the log. An erased one (its subject's key
        is destroyed) still names its scope: the old decisions there are left out, and
        nothing comes in their place."""
        sub = cls(proposal_id)
        for event, position in events:
            sub.until[event.scope] = position
            output = proposal_output(event)
            if output is None:
                continue
            for conversation in output.get("conversations", []):
                sub.ops[conversation["messages_event_id"]] = (conversation.get("ops", []), event)
        return sub

    def __call__(self, events: list[tuple[Event, Position]]) -> list[tuple[Event, Position]]:
        out: list[tuple[Event, Position]] = []
        for event, position in events:
            until = self.until.get(event.scope)
            if until is None or position >= until:
                out.append((event, position))
                continue
            if (
                isinstance(event, MemoryAdded | MemoryUpdated | MemoryDeleted)
                and event.decision_id is not None
            ):
                continue  # an old decision: the proposal's ops stand in its place
            out.append((event, position))
            if isinstance(event, MessagesRecorded) and not event.erased:
                found = self.ops.get(event.event_id)
                if found is not None:
                    out.extend((e, position) for e in synthesize(event, *found))
        return out


def synthesize(
    messages: MessagesRecorded, ops: list[dict[str, Any]], proposal: InferenceDecided
) -> list[Event]:
    """The memory events a proposal's ops on one conversation stand for: at the
    conversation's time, sealed (for erasure) under the proposal's key, naming it."""
    out: list[Event] = []
    common: dict[str, Any] = dict(
        scope=proposal.scope, actor=Actor(source=PROPOSAL_SOURCE),
        request_id=proposal.request_id, occurred_at=messages.occurred_at,
        key_id=proposal.key_id, decision_id=proposal.event_id,
    )  # fmt: skip
    for i, op in enumerate(ops):
        event_id = str(uuid.uuid5(_IDS, f"{proposal.event_id}/{messages.event_id}/{i}"))
        kind = op.get("op")
        if kind == "ADD":
            out.append(MemoryAdded(
                **common, event_id=event_id, memory_id=op["memory_id"], text=op["text"],
                hash=op["hash"], categories=tuple(op.get("categories") or ()),
                metadata=op.get("metadata") or "{}", expiration_date=op.get("expiration_date"),
                immutable=bool(op.get("immutable")),
            ))  # fmt: skip
        elif kind == "UPDATE":
            out.append(MemoryUpdated(
                **common, event_id=event_id, memory_id=op["memory_id"], text=op["text"],
                hash=op["hash"], categories=tuple(op.get("categories") or ()),
            ))  # fmt: skip
        elif kind == "DELETE":
            out.append(MemoryDeleted(
                **common, event_id=event_id, memory_id=op["memory_id"], reason="inference",
            ))  # fmt: skip
    return out
