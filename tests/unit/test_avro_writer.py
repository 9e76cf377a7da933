"""The compiled Avro writer (memstream/avro_writer.py) writes exactly fastavro's bytes.

For random records of every current schema -- and records holding the values it hands
back to fastavro (UUID, datetime, tuples, missing fields) -- the compiled writer's bytes
equal `fastavro.schemaless_writer`'s and decode back to the record; what fastavro refuses
it refuses too.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.avro import MAGIC, AvroCodec, SchemaRegistry
from memstream.avro_writer import compile_writer, zigzag
from memstream.events import Actor, MemoryAdded, MemoryDeleted, codec, encode_event, to_record
from memstream.scope import Scope

REGISTRY = SchemaRegistry.load_default()
NAMES = sorted(REGISTRY.current)
NAMED: dict[str, Any] = {name: entry.parsed for name, entry in REGISTRY.current.items()}

LONG = st.integers(-(1 << 63), (1 << 63) - 1)
INT = st.integers(-(1 << 31), (1 << 31) - 1)
# lengths on both sides of the writer's 4096-entry length table
TEXT = st.text(max_size=80) | st.text(min_size=1400, max_size=2100)


def fastavro_body(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, REGISTRY.current[name].parsed, record)
    return buf.getvalue()


def outcome(write: Any, record: dict[str, Any]) -> bytes | type[BaseException]:
    """The bytes `write` gives, or the type of what it raises."""
    try:
        body: bytes = write(record)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    return body


def values(schema: Any, odd: bool) -> st.SearchStrategy[Any]:
    """Valid values of `schema`; with `odd`, also the forms the compiled writer leaves to
    fastavro (UUID, aware datetime, tuples)."""
    if isinstance(schema, str) and schema in NAMED:
        schema = NAMED[schema]
    if isinstance(schema, list):
        return st.one_of(*(values(branch, odd) for branch in schema))
    if isinstance(schema, dict):
        kind, logical = schema["type"], schema.get("logicalType")
        if kind == "record":
            return records(schema, odd)
        if kind == "array":
            items = st.lists(values(schema["items"], odd), max_size=4)
            return items | items.map(tuple) if odd else items
        if kind == "map":
            return st.dictionaries(st.text(max_size=10), values(schema["values"], odd), max_size=4)
        if logical == "uuid":
            plain = st.uuids().map(str)
            return plain | st.uuids() if odd else plain
        if logical == "timestamp-millis":
            plain = st.integers(0, 1 << 45)
            aware = st.datetimes(
                min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1),
                timezones=st.just(dt.UTC),
            ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))  # fmt: skip
            return plain | aware if odd else plain
        schema = kind
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": INT,
        "long": LONG,
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": TEXT,
        "bytes": st.binary(max_size=300) | st.binary(min_size=4090, max_size=4100),
    }[schema]


@st.composite
def _record(draw: st.DrawFn, schema: dict[str, Any], odd: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in schema["fields"]:
        kind = field["type"]
        may_omit = "default" in field or (isinstance(kind, list) and "null" in kind)
        if may_omit and draw(st.integers(0, 4)) == 0:
            continue  # written as its default, by both writers
        out[field["name"]] = draw(values(kind, odd))
    return out


def records(schema: dict[str, Any], odd: bool) -> st.SearchStrategy[dict[str, Any]]:
    return _record(schema, odd)


@st.composite
def named_records(draw: st.DrawFn, odd: bool = False) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(NAMES))
    return name, draw(records(REGISTRY.current[name].parsed, odd))


def test_every_current_schema_is_compiled() -> None:
    """A schema change that the compiler cannot write would silently cost the speed-up."""
    assert [n for n in NAMES if REGISTRY.current[n].write is None] == []


@settings(max_examples=600)
@given(named_records())
def test_compiled_bytes_equal_fastavro(case: tuple[str, dict[str, Any]]) -> None:
    name, record = case
    entry = REGISTRY.current[name]
    assert entry.write is not None
    body = entry.write(record)
    assert body == fastavro_body(name, record)
    message = AvroCodec.encode_with(entry, record)
    assert message == MAGIC + entry.fingerprint + body
    decoded_name, back = AvroCodec(REGISTRY).decode(message, logical=False)
    assert decoded_name == name
    full = fastavro.schemaless_reader(io.BytesIO(fastavro_body(name, record)), entry.plain, None)
    assert back == full


@settings(max_examples=300)
@given(named_records(odd=True))
def test_values_left_to_fastavro_are_written_as_fastavro_writes_them(
    case: tuple[str, dict[str, Any]],
) -> None:
    """Written as fastavro writes them -- or refused as fastavro refuses them (a tuple
    in a union is fastavro's (branch name, value) notation)."""
    name, record = case
    entry = REGISTRY.current[name]
    assert entry.write is not None
    assert outcome(entry.write, record) == outcome(lambda r: fastavro_body(name, r), record)


def test_a_memory_added_message_is_unchanged() -> None:
    scope = Scope("org", "proj", user_id="alice", run_id="r" * 70)
    event = MemoryAdded(
        scope=scope, memory_id="m1", actor=Actor("k1", "cli"), text="x" * 200, hash="h",
        categories=("a", "b"), expiration_date="2030-01-01", immutable=True,
    )  # fmt: skip
    record = {**to_record(event), "key_id": None}
    entry = codec().registry.current["memstream.MemoryAdded"]
    assert encode_event(event) == MAGIC + entry.fingerprint + fastavro_body(entry.name, record)


@pytest.mark.parametrize(
    "bad",
    [
        {"text": None},  # a non-null string given None
        {"text": 5},
        {"immutable": "yes"},  # fastavro writes a truthy value as true: so do we
        {"occurred_at": 1 << 64},  # out of a long's range
        {"categories": ["a", 7]},
    ],
)
def test_a_wrong_value_is_written_or_refused_as_fastavro_does(bad: dict[str, Any]) -> None:
    record = {**to_record(MemoryAdded(scope=Scope("o", "p", user_id="u"), text="t", hash="h"))}
    record.update(bad)
    entry = REGISTRY.current["memstream.MemoryAdded"]
    assert entry.write is not None
    expected = outcome(lambda r: fastavro_body(entry.name, r), record)
    assert outcome(entry.write, record) == expected
    assert bad.get("immutable") == "yes" or not isinstance(expected, bytes)


def test_a_missing_field_without_default_is_refused_like_fastavro() -> None:
    record = to_record(MemoryAdded(scope=Scope("o", "p", user_id="u"), text="t", hash="h"))
    del record["hash"]
    entry = REGISTRY.current["memstream.MemoryAdded"]
    assert entry.write is not None
    with pytest.raises(ValueError, match="no value and no default for hash"):
        entry.write(record)


def test_unsupported_schemas_get_no_compiled_writer() -> None:
    enum = {"type": "record", "name": "E", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
    ]}  # fmt: skip
    two = {"type": "record", "name": "T", "fields": [{"name": "x", "type": ["int", "string"]}]}
    for schema in (enum, two):
        named: dict[str, Any] = {}
        assert compile_writer(fastavro.parse_schema(schema, named_schemas=named), named) is None


@given(LONG)
def test_zigzag_is_avros_long(n: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert zigzag(n) == buf.getvalue()


def test_uuid_values_still_round_trip() -> None:
    entry = REGISTRY.current["memstream.MemoryDeleted"]
    record = to_record(MemoryDeleted(scope=Scope("o", "p", agent_id="a"), memory_id="m"))
    record["event_id"] = uuid.uuid4()
    assert entry.write is not None
    assert entry.write(record) == fastavro_body(entry.name, record)
