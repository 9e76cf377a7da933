"""Why a memory changed, when inference changed it: "updated by inference (model M) from
the messages of T", read from the decision and messages events the memory event names.

History and audit call this on the audit rows they return; it looks the decisions up in
the events table (one query for the decisions, one for their messages).
"""

from __future__ import annotations

import json
from typing import Any

from memstream.models import iso_ms
from memstream.projector.candidate import PROPOSAL_SOURCE, SWAP_SOURCE
from memstream.projector.store import Generation
from memstream.sqlutil import sql_in, sql_str

VERBS = {
    "ADD": "added",
    "UPDATE": "updated",
    "DELETE": "deleted",
    "NONE": "kept (already held)",
    "CONFLICT": "not changed (conflict: the memory changed after the LLM read it)",
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


def explain(gen: Generation, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """event id -> {decision_id, model, llm_host, messages_event_id, messages_at,
    explanation} for every row an inference caused (erased decisions say so)."""
    caused = decision_ids(rows)
    if not caused:
        return {}
    decisions = {
        r["event_id"]: r for r in gen.query_events(sql_in("event_id", sorted(set(caused.values()))))
    }
    payloads = {eid: _payload(r) for eid, r in decisions.items()}
    message_ids = sorted(
        {p["messages_event_id"] for p in payloads.values() if p.get("messages_event_id")}
    )
    messages = {
        r["event_id"]: r for r in gen.query_events(sql_in("event_id", message_ids))
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


def caused_by_messages(gen: Generation, messages_event_id: str) -> list[dict[str, Any]] | None:
    """The memory events an inferred add's conversation (its MessagesRecorded id) caused, in
    log order: what GET /v1/event/{id}/ reports once the in-process task is gone (another
    server, a restart). None when no decision names that conversation (yet)."""
    pattern = sql_str(f'%"messages_event_id": {json.dumps(messages_event_id)}%')
    # a reinfer proposal or swap names a conversation too, but did not answer that add
    decisions = gen.query_events(
        f"event_type = 'InferenceDecided' AND payload LIKE {pattern} AND (actor_source IS NULL "
        f"OR actor_source NOT IN ({sql_str(PROPOSAL_SOURCE)}, {sql_str(SWAP_SOURCE)}))"
    )
    if not decisions:
        return None
    ids = [d["event_id"] for d in decisions]
    rows = gen.query_events(
        "event_type IN ('MemoryAdded', 'MemoryUpdated', 'MemoryDeleted') AND ("
        + " OR ".join(f"payload LIKE {sql_str(f'%{json.dumps(i)}%')}" for i in ids)
        + ")"
    )
    return sorted(
        (r for r in rows if decision_ids([r]).get(r["event_id"]) in ids),
        key=lambda r: (r["partition"], r["offset"]),
    )
