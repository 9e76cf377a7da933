"""Sealed events: what the log holds for a subject's data, and what it takes to read it."""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstream import crypto
from memstream.avro import AvroCodec
from memstream.errors import SchemaError
from memstream.events import (
    DeleteAllRequested,
    FeedbackGiven,
    MemoryAdded,
    MemoryUpdated,
    decode_event,
    encode_event,
)
from memstream.keystore.base import Subject, SubjectKey
from memstream.scope import Scope

SCOPE = Scope("org", "proj", user_id="alice", agent_id="bot")
SUBJECT = Subject("org", "proj", "user_id", "alice")


def key(subject: Subject = SUBJECT, key_id: str = "k-1") -> SubjectKey:
    return SubjectKey(key_id, subject, os.urandom(32), 0)


def lookup_of(*keys: SubjectKey):  # type: ignore[no-untyped-def]
    found = {(k.subject, k.key_id): k for k in keys}
    return lambda subject, key_id: found.get((subject, key_id))


def test_the_subject_is_the_most_personal_entity() -> None:
    assert Subject.of_scope(SCOPE) == SUBJECT
    assert Subject.of_scope(Scope("o", "p", agent_id="bot", run_id="r")) == Subject(
        "o", "p", "agent_id", "bot"
    )
    assert Subject.of_scope(Scope("o", "p")) is None
    assert Subject("o", "p", "user_id", "a").digest() != Subject("o", "p", "agent_id", "a").digest()


@given(
    text=st.text(min_size=1, max_size=200),
    meta=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    cats=st.lists(st.text(min_size=1, max_size=10), max_size=3),
)
def test_a_sealed_add_round_trips_and_hides_its_text(
    text: str, meta: dict[str, str], cats: list[str]
) -> None:
    k = key()
    event = MemoryAdded(
        scope=SCOPE, memory_id="m", text=text, hash=crypto.keyed_hash(k, text),
        metadata=json.dumps(meta), categories=tuple(cats),
    )  # fmt: skip
    data = encode_event(event, k)
    if len(text) >= 4:
        assert text.encode() not in data
    back = decode_event(data, lookup_of(k))
    assert (back.text, back.metadata, back.categories) == (text, json.dumps(meta), tuple(cats))
    assert back.key_id == "k-1" and not back.erased


def test_without_its_key_an_event_reads_as_erased_with_placeholders() -> None:
    k = key()
    data = encode_event(MemoryAdded(scope=SCOPE, memory_id="m", text="secret", hash="h"), k)
    for lookup in (None, lookup_of(), lookup_of(key(key_id="another"))):
        back = decode_event(data, lookup)
        assert isinstance(back, MemoryAdded)
        assert back.erased and back.text == "" and back.metadata == "{}"
        assert back.memory_id == "m" and back.scope == SCOPE  # the audit's "who" stays


def test_an_update_keeps_which_fields_it_changes() -> None:
    k = key()
    data = encode_event(MemoryUpdated(scope=SCOPE, memory_id="m", metadata='{"a":1}'), k)
    back = decode_event(data, lookup_of(k))
    assert isinstance(back, MemoryUpdated)
    assert (back.text, back.metadata, back.categories) == (None, '{"a":1}', None)


def test_every_kind_of_caller_text_is_sealed() -> None:
    k = key()
    events = [
        DeleteAllRequested(scope=SCOPE, filters='{"metadata": {"x": "secret-filter"}}', count=0),
        FeedbackGiven(
            scope=SCOPE, memory_id="m", feedback="NEGATIVE", feedback_reason="secret-why"
        ),
    ]
    for event in events:
        data = encode_event(event, k)
        assert b"secret" not in data
        assert decode_event(data, lookup_of(k)) == dataclasses.replace(event, key_id="k-1")


def test_a_tampered_payload_is_an_error_not_a_silent_erasure() -> None:
    k = key()
    data = bytearray(encode_event(MemoryAdded(scope=SCOPE, memory_id="m", text="t", hash="h"), k))
    data[-30] ^= 0x01  # inside the ciphertext, which ends the record
    with pytest.raises(SchemaError, match="does not open"):
        decode_event(bytes(data), lookup_of(k))


def test_keyed_hashes_differ_between_subjects_and_say_nothing_without_the_key() -> None:
    a, b = key(), key(Subject("org", "proj", "user_id", "bob"))
    assert crypto.keyed_hash(a, "same text") == crypto.keyed_hash(a, "same text")
    assert crypto.keyed_hash(a, "same text") != crypto.keyed_hash(b, "same text")


def test_messages_written_before_sealing_existed_still_decode() -> None:
    """The v1 schema (no key_id / sealed fields) stays readable: old logs replay."""
    codec = AvroCodec()
    v1 = json.loads(
        (
            resources.files("memstream.schemas") / "history" / "memstream.MemoryAdded.v1.avsc"
        ).read_text()
    )
    old = codec.registry.register(v1)
    assert old.fingerprint != codec.registry.current["memstream.MemoryAdded"].fingerprint
    record = {
        "event_id": "0b3c1f9e-2f8e-4a56-9d0e-4c8f1b2a3d4e", "occurred_at": 1, "memory_id": "m",
        "scope": {"org_id": "o", "project_id": "p", "user_id": "u", "agent_id": None,
                  "app_id": None, "run_id": None},
        "actor": {"key_id": None, "source": None}, "request_id": None, "text": "plain old",
        "metadata": "{}", "categories": [], "expiration_date": None, "immutable": False,
        "hash": "h", "source_hash": None,
    }  # fmt: skip
    back = decode_event(AvroCodec.encode_with(old, record))
    assert isinstance(back, MemoryAdded)
    assert (back.text, back.key_id, back.erased) == ("plain old", None, False)
