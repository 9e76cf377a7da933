"""The webhook payload, its signature, and the registration rules (no log needed)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from memstream.errors import ValidationError
from memstream.events import MemoryAdded, MemoryDeleted, MemoryUpdated, SubjectErased
from memstream.log.base import Position
from memstream.scope import Scope
from memstream.webhooks.payload import body_of, mem0_type, payload, sign, verify
from memstream.webhooks.registry import check_event_types, check_url, parse_start

SCOPE = Scope("acme", "support", user_id="alice", run_id="t-1")


def test_an_add_carries_mem0s_three_keys_and_the_ledgers_own() -> None:
    event = MemoryAdded(
        scope=SCOPE, memory_id="m1", text="Likes tea", hash="h", metadata='{"a": 1}',
        categories=("food",), occurred_at=1_764_633_600_000,
    )  # fmt: skip
    doc = payload(event, Position(2, 41), "wh_1")
    assert doc["event_details"] == {
        "id": "m1",
        "data": {"memory": "Likes tea", "metadata": {"a": 1}, "categories": ["food"]},
        "event": "ADD",
    }
    assert doc["event_type"] == "memory_add"
    assert doc["event_id"] == event.event_id
    assert doc["occurred_at"] == "2025-12-02T00:00:00.000Z"
    assert (doc["user_id"], doc["agent_id"], doc["run_id"]) == ("alice", None, "t-1")
    assert doc["position"] == {"partition": 2, "offset": 41}
    assert doc["erased"] is False


def test_an_erased_events_text_is_not_in_the_payload() -> None:
    event = MemoryAdded(scope=SCOPE, memory_id="m1", text="", hash="h", erased=True)
    doc = payload(event, Position(0, 0), "wh_1")
    assert doc["event_details"]["data"] == {"memory": None}
    assert doc["erased"] is True


def test_types_map_to_mem0_names() -> None:
    assert mem0_type(MemoryUpdated(scope=SCOPE, memory_id="m", text="x")) == "memory_update"
    deleted = MemoryDeleted(scope=SCOPE, memory_id="m", reason="delete_all")
    assert mem0_type(deleted) == "memory_delete"
    assert payload(deleted, Position(0, 1), "w")["event_details"]["data"] == {
        "memory": None,
        "reason": "delete_all",
    }
    erased = SubjectErased(scope=Scope("acme", "support", user_id="bob"), subject_field="user_id")
    assert payload(erased, Position(0, 2), "w")["event_details"]["data"]["subject"] == {
        "user_id": "bob"
    }


def test_the_signature_is_hmac_sha256_over_the_exact_body() -> None:
    body = body_of({"b": "é", "a": 1})
    assert body == b'{"b":"\\u00e9","a":1}'
    expected = hmac.new(b"whsec_x", body, hashlib.sha256).hexdigest()
    assert sign("whsec_x", body) == f"sha256={expected}"
    assert verify("whsec_x", body, sign("whsec_x", body))
    assert not verify("whsec_y", body, sign("whsec_x", body))
    assert not verify("whsec_x", json.dumps({"b": "é", "a": 1}).encode(), sign("whsec_x", body))
    assert not verify("whsec_x", body, None)


@pytest.mark.parametrize(
    ("given", "offsets"),
    [(None, None), ("now", None), ("earliest", {}), (12, {0: 12}), ("0:3,2:40", {0: 3, 2: 40})],
)
def test_start_positions(given: object, offsets: object) -> None:
    assert parse_start(given) == offsets


@pytest.mark.parametrize("bad", ["", "yesterday", "0:-1", "a:b", True, 1.5])
def test_bad_start_positions_are_named(bad: object) -> None:
    with pytest.raises(ValidationError, match="start"):
        parse_start(bad)


def test_registration_rules() -> None:
    assert check_event_types(["memory_add", "memory_add", "ingest_job_failed"]) == (
        "memory_add",
        "ingest_job_failed",
    )
    with pytest.raises(ValidationError, match="memory_explode"):
        check_event_types(["memory_explode"])
    with pytest.raises(ValidationError, match="non-empty"):
        check_event_types([])
    assert check_url("https://hooks.example/x?y=1") == "https://hooks.example/x?y=1"
    for bad in ("ftp://x", "http://", "hooks.example/x", ""):
        with pytest.raises(ValidationError, match="url"):
            check_url(bad)
