"""Why a memory changed, when inference changed it: "updated by inference (model M) from
the messages of T", read from the decision and messages events the memory event names.

History and audit call this on the audit rows they return; it looks the decisions up in
the events table (one query for the decisions, one for their messages) and, given this
process's fresh tier (`view`, projector/tier.py), among the audit rows not flushed yet:
a decision and its messages usually sit in the tier for a while after the add.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from memstream.models import Tenant, iso_ms
from memstream.projector.apply import scope_of_row
from memstream.projector.candidate import PROPOSAL_SOURCE, SWAP_SOURCE
from memstream.projector.decisions import scope_where
from memstream.projector.store import Generation
from memstream.projector.tier import EMPTY, TierView
from memstream.query.tiered import events_where, ids_in, of_scope
from memstream.sqlutil import sql_in, sql_str

VERBS = {
    "ADD": "added",
    "UPDATE": "updated",
    "DELETE": "deleted",
    "NONE": "kept (already held)",
    "CONFLICT": "not changed (conflict: the memory changed after the LLM read it)",
    "DUPLICATE": "not changed (a second decision on one async add: the first one stands)",
}


def decision_ids(rows: list[dict[str, Any]]) -> dict[str, str]:
    """event id -> decision id, for the rows an inference caused."""
    out: dict[str, str] = {}
    for row in rows:
        if row["event_type"] not in ("MemoryAdded", "MemoryUpdated", "MemoryDeleted"):
            continue
        payload = json.loads(row.get("payload") or "{}")
        if isinstance(payload, dict) and payload.get("decision_id"):
            out[row["event_id"]] = payload["decision_id"]
    return out


def explain(
    gen: Generation, rows: list[dict[str, Any]], view: TierView = EMPTY
) -> dict[str, dict[str, Any]]:
    """event id -> {decision_id, model, llm_host, messages_event_id, messages_at,
    explanation} for every row an inference caused (erased decisions say so). `view`: the
    fresh tier of `gen` in this process (taken before `rows` were read)."""
    caused = decision_ids(rows)
    if not caused:
        return {}
    wanted = sorted(set(caused.values()))
    decisions = {
        r["event_id"]: r
        for r in events_where(gen, view, sql_in("event_id", wanted), ids_in("event_id", wanted))
    }
    payloads = {eid: _payload(r) for eid, r in decisions.items()}
    message_ids = sorted(
        {p["messages_event_id"] for p in payloads.values() if p.get("messages_event_id")}
    )
    messages = {
        r["event_id"]: r
        for r in events_where(
            gen, view, sql_in("event_id", message_ids), ids_in("event_id", message_ids)
        )
    } if message_ids else {}  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        did = caused.get(row["event_id"])
        if did is None:
            continue
        p = payloads.get(did, {})
        m = messages.get(p.get("messages_event_id", ""))
        at = iso_ms(m["occurred_at"]) if m is not None else None
        verb = VERBS.get(row["outcome"], row["outcome"].lower())
        model = p.get("model")
        if model:
            text = f"{verb} by inference (model {model}) from the messages of {at or 'an unknown time'}"
        else:
            text = f"{verb} by inference (the decision's details are erased or not projected)"
        out[row["event_id"]] = {
            "decision_id": did,
            "model": model,
            "llm_host": p.get("llm_host"),
            "prompt_version": p.get("prompt_version"),
            "messages_event_id": p.get("messages_event_id"),
            "messages_at": at,
            "explanation": text,
        }
    return out


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row.get("payload") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an inferred add's conversation was settled: by the first decision or failure
    naming it in log order (later ones are DUPLICATEs, reinfer's re-decisions come after)."""

    event_id: str  # the InferenceDecided or InferenceFailed
    failed: str | None  # the reason, when it is an InferenceFailed
    rows: list[dict[str, Any]]  # the memory events the decision caused, in log order


def settlement(
    gen: Generation,
    messages_event_id: str,
    tenant: Tenant | None = None,
    view: TierView = EMPTY,
) -> Settlement | None:
    """What settled an inferred add (its MessagesRecorded id): GET /v1/event/{id}/ on any
    server, after any restart. None while nothing has (an async add still owed), or when
    the messages are not projected here (yet), not `tenant`'s, or erased. `view`: the
    fresh tier of `gen` in this process, whose audit rows count as projected."""
    found = events_where(
        gen,
        view,
        f"event_id = {sql_str(messages_event_id)}",
        ids_in("event_id", [messages_event_id]),
    )
    if not found or found[0]["event_type"] != "MessagesRecorded":
        return None
    if tenant is not None and (found[0]["org_id"], found[0]["project_id"]) != (
        tenant.org_id,
        tenant.project_id,
    ):
        return None
    of = scope_of_row(found[0])
    scope, in_scope = scope_where(of), of_scope(of)
    pattern = sql_str(f'%"messages_event_id": {json.dumps(messages_event_id)}%')
    outcomes = [
        r
        for r in events_where(
            gen,
            view,
            f"{scope} AND event_type IN ('InferenceDecided', 'InferenceFailed') "
            f"AND outcome IN ('DECIDED', 'FAILED') AND payload LIKE {pattern}",
            lambda a: (
                in_scope(a)
                and a["event_type"] in ("InferenceDecided", "InferenceFailed")
                and a["outcome"] in ("DECIDED", "FAILED")
            ),
        )  # fmt: skip
        if _payload(r).get("messages_event_id") == messages_event_id  # LIKE's _ is a wildcard
        and _answers(r)
    ]
    if not outcomes:
        return None
    first = min(outcomes, key=lambda r: (r["partition"], r["offset"]))
    if first["event_type"] == "InferenceFailed":
        reason = _payload(first).get("reason")
        return Settlement(first["event_id"], str(reason or "inference failed"), [])
    did = first["event_id"]
    rows = events_where(
        gen, view,
        f"{scope} AND event_type IN ('MemoryAdded', 'MemoryUpdated', 'MemoryDeleted') "
        f"AND payload LIKE {sql_str(f'%{json.dumps(did)}%')}",
        lambda a: in_scope(a)
        and a["event_type"] in ("MemoryAdded", "MemoryUpdated", "MemoryDeleted"),
    )  # fmt: skip
    caused = [r for r in rows if decision_ids([r]).get(r["event_id"]) == did]
    return Settlement(did, None, sorted(caused, key=lambda r: (r["partition"], r["offset"])))


def _answers(row: dict[str, Any]) -> bool:
    """Whether a decision or failure answers the add of the conversation it names: an
    async add's settling one, or a synchronous add's own decision -- not a reinfer proposal
    or swap, which name a conversation too (and never settle it)."""
    if row["event_type"] == "InferenceFailed" or _payload(row).get("settles"):
        return True
    return row["actor_source"] not in (PROPOSAL_SOURCE, SWAP_SOURCE)


def caused_by_messages(
    gen: Generation, messages_event_id: str, view: TierView = EMPTY
) -> list[dict[str, Any]] | None:
    """The memory events an inferred add's conversation (its MessagesRecorded id) caused, in
    log order: what GET /v1/event/{id}/ reports once the in-process task is gone (another
    server, a restart). None when no decision names that conversation (yet)."""
    settled = settlement(gen, messages_event_id, view=view)
    return settled.rows if settled is not None and settled.failed is None else None
