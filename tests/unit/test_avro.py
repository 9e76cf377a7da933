"""The event contract: every schema round-trips, messages name their writer schema, and a
message written with an older schema version stays readable."""

from __future__ import annotations

import copy
import datetime as dt
import json
import struct
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstream.avro import MAGIC, AvroCodec, SchemaRegistry
from memstream.errors import SchemaError
from memstream.events import (
    EVENT_TYPES,
    Actor,
    DeleteAllRequested,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    RetentionPolicyRemoved,
    RetentionPolicySet,
    decode_event,
    encode_event,
    text_hash,
)
from memstream.scope import Scope

ids = st.one_of(st.none(), st.text(min_size=1, max_size=20))
texts = st.text(max_size=200)


@st.composite
def scopes(draw: st.DrawFn) -> Scope:
    return Scope(
        draw(st.text(min_size=1, max_size=10)), draw(st.text(min_size=1, max_size=10)),
        draw(ids), draw(ids), draw(ids), draw(ids),
    )  # fmt: skip


@st.composite
def events(draw: st.DrawFn) -> object:
    common = dict(
        scope=draw(scopes()),
        memory_id=draw(ids),
        actor=Actor(draw(ids), draw(ids)),
        request_id=draw(ids),
        occurred_at=draw(st.integers(0, 253_402_300_799_999)),  # up to 9999-12-31
    )
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    if kind == "MemoryExpired":
        return MemoryExpired(
            **common,
            reason="policy",
            policy_id=draw(ids),
            expiration_date=draw(st.sampled_from([None, "2030-01-31"])),
        )
    if kind == "RetentionPolicySet":
        return RetentionPolicySet(
            **common,
            policy_id=draw(texts),
            field="run_id",
            pattern=draw(texts),
            ttl_seconds=draw(st.integers(0, 2**40)),
        )
    if kind == "RetentionPolicyRemoved":
        return RetentionPolicyRemoved(**common, policy_id=draw(texts))
    if kind == "MemoryAdded":
        t = draw(texts)
        return MemoryAdded(**common, text=t, hash=text_hash(t), metadata=json.dumps({"k": draw(texts)}),
                           categories=tuple(draw(st.lists(texts, max_size=3))),
                           expiration_date=draw(st.sampled_from([None, "2030-01-31"])),
                           immutable=draw(st.booleans()), source_hash=draw(ids))  # fmt: skip
    if kind == "MemoryUpdated":
        return MemoryUpdated(**common, text=draw(st.one_of(st.none(), texts)),
                             metadata=draw(st.sampled_from([None, "{}", '{"a": 1}'])),
                             categories=draw(st.one_of(st.none(), st.lists(texts, max_size=2).map(tuple))),
                             set_expiration_date=draw(st.booleans()))  # fmt: skip
    if kind == "MemoryDeleted":
        return MemoryDeleted(**common, reason=draw(st.sampled_from(["api", "delete_all", "expired"])),
                             cause_event_id=draw(ids))  # fmt: skip
    return DeleteAllRequested(**common, filters='{"user_id": "alice"}', count=draw(st.integers(0, 10**6)),
                              memory_ids=tuple(draw(st.lists(texts, max_size=3))))  # fmt: skip


@given(events())
def test_every_event_type_round_trips(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


def test_every_schema_file_is_loaded_and_every_event_type_has_one() -> None:
    registry = SchemaRegistry.load_default()
    files = {
        p.name for p in resources.files("memstream.schemas").iterdir() if p.name.endswith(".avsc")
    }
    assert {f"{n}.avsc" for n in registry.current} == files
    for name in EVENT_TYPES:
        assert f"memstream.{name}" in registry.current


def test_message_starts_with_magic_and_the_writer_fingerprint() -> None:
    event = MemoryDeleted(scope=Scope("o", "p", user_id="u"), memory_id="m")
    data = encode_event(event)
    registry = SchemaRegistry.load_default()
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == registry.current["memstream.MemoryDeleted"].fingerprint
    # the fingerprint is CRC-64-AVRO, little-endian, as the spec's test vector for "null" shows
    import fastavro.schema

    from memstream.avro import fingerprint_of

    null_fp = fingerprint_of(fastavro.schema.parse_schema("null"))
    assert struct.unpack("<Q", null_fp)[0] == 0x63DD24E7CC258F8A


def test_fingerprints_differ_per_type_and_are_stable_across_loads() -> None:
    a, b = SchemaRegistry.load_default(), SchemaRegistry.load_default()
    fps = {n: s.fingerprint for n, s in a.current.items()}
    assert fps == {n: s.fingerprint for n, s in b.current.items()}
    assert len(set(fps.values())) == len(fps)


def test_a_message_written_with_an_older_schema_version_stays_readable() -> None:
    """v0 of MemoryAdded had no categories, expiration_date, immutable or source_hash; the
    current reader fills their defaults."""
    registry = SchemaRegistry.load_default()
    current = json.loads(
        resources.files("memstream.schemas").joinpath("memstream.MemoryAdded.avsc").read_text()
    )
    old = copy.deepcopy(current)
    dropped = {"categories", "expiration_date", "immutable", "source_hash"}
    old["fields"] = [f for f in old["fields"] if f["name"] not in dropped]
    old_entry = registry.register(old, current=False)
    assert old_entry.fingerprint != registry.current["memstream.MemoryAdded"].fingerprint

    codec = AvroCodec(registry)
    record = {
        "event_id": "8c3b7a0e-31a8-4bd2-93f6-1a3b3e0f8a11", "occurred_at": 1_700_000_000_000,
        "scope": {"org_id": "o", "project_id": "p", "user_id": "alice"},
        "memory_id": "m1", "actor": {"key_id": None, "source": "old-client"}, "request_id": None,
        "text": "likes tea", "metadata": "{}", "hash": text_hash("likes tea"),
    }  # fmt: skip
    data = AvroCodec.encode_with(old_entry, record)
    name, decoded = codec.decode(data)
    assert name == "memstream.MemoryAdded"
    assert decoded["text"] == "likes tea"
    assert decoded["categories"] == [] and decoded["immutable"] is False
    assert decoded["expiration_date"] is None and decoded["source_hash"] is None
    # the plain decode (what the projector uses) resolves the old schema the same way
    _, plain = codec.decode(data, logical=False)
    assert plain == {**decoded, "event_id": record["event_id"], "occurred_at": 1_700_000_000_000}


@given(events())
def test_the_plain_decode_differs_only_in_the_types_of_ids_and_times(event: object) -> None:
    data = encode_event(event)  # type: ignore[arg-type]
    codec = AvroCodec()
    _, logical = codec.decode(data)
    _, plain = codec.decode(data, logical=False)
    assert isinstance(plain["event_id"], str) and isinstance(plain["occurred_at"], int)
    assert str(logical["event_id"]) == plain["event_id"]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert logical["occurred_at"] == epoch + dt.timedelta(milliseconds=plain["occurred_at"])
    assert {k: v for k, v in logical.items() if k not in ("event_id", "occurred_at")} == {
        k: v for k, v in plain.items() if k not in ("event_id", "occurred_at")
    }


def test_unknown_fingerprint_and_garbage_are_clear_errors() -> None:
    codec = AvroCodec()
    with pytest.raises(SchemaError, match="bad magic"):
        codec.decode(b"not avro at all")
    with pytest.raises(SchemaError, match="unknown writer schema"):
        codec.decode(MAGIC + b"\x00" * 8 + b"\x02")
    good = encode_event(MemoryDeleted(scope=Scope("o", "p", user_id="u"), memory_id="m"))
    with pytest.raises(SchemaError, match="cannot decode"):
        codec.decode(good[:12])


def test_inference_events_written_before_async_adds_read_with_the_defaults() -> None:
    """MessagesRecorded and InferenceDecided v1 (no pending / options / settles): an old
    conversation is not owed, and an old decision settles nothing."""
    from memstream.events import InferenceDecided, MessagesRecorded, codec, to_record

    scope = Scope("o", "p", user_id="u")
    for event, drop in (
        (MessagesRecorded(scope=scope, messages="[]"), ("pending", "options")),
        (InferenceDecided(scope=scope, messages_event_id="m", model="x", llm_host="h",
                          prompt_version="1", prompt_hash="p"), ("settles",)),
    ):  # fmt: skip
        v1 = json.loads(
            (
                resources.files("memstream.schemas")
                / "history"
                / f"memstream.{event.event_type}.v1.avsc"
            ).read_text()
        )
        old = codec().registry.register(v1)
        assert (
            old.fingerprint != codec().registry.current[f"memstream.{event.event_type}"].fingerprint
        )
        record = {k: v for k, v in to_record(event).items() if k not in drop}
        back = decode_event(AvroCodec.encode_with(old, {**record, "key_id": None}))
        assert back == event
