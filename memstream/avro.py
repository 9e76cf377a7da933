"""Avro single-object encoding of events (magic C3 01 + CRC-64-AVRO fingerprint + body).

Every message names its writer schema, so a reader resolves old messages against the current
schema of the same record: the log stays readable after backward-compatible schema changes.
Schemas are parsed once; `SchemaRegistry` maps fingerprints to writer schemas.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastavro
import fastavro.schema

from memstream.avro_writer import RecordWriter, compile_writer
from memstream.errors import SchemaError

MAGIC = b"\xc3\x01"
SHARED_RECORDS = ("memstream.Scope", "memstream.Actor")


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    name: str  # full name, e.g. memstream.MemoryAdded
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the parsing canonical form
    parsed: Any
    # the same schema without logicalType annotations: the same bytes decode to plain str
    # and int instead of UUID and datetime objects (~8 us less per event on replay)
    plain: Any
    # the body writer compiled for this schema (memstream/avro_writer.py: fastavro's bytes,
    # several times cheaper); None = fastavro writes it
    write: RecordWriter | None = None


def without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


def fingerprint_of(parsed: Any) -> bytes:
    """The single-object-encoding fingerprint; named types are expanded so a change to a shared
    record changes the fingerprint of every record that uses it."""
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.schema.expand_schema(parsed))
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


class SchemaRegistry:
    """Current schemas by name (the reader side) plus every known writer schema by fingerprint."""

    def __init__(self) -> None:
        self._named: dict[str, Any] = {}
        self._plain_named: dict[str, Any] = {}
        self.current: dict[str, RegisteredSchema] = {}
        self._writers: dict[bytes, RegisteredSchema] = {}

    @classmethod
    def load_default(cls) -> SchemaRegistry:
        registry = cls()
        files = resources.files("memstream.schemas")
        texts = {
            entry.name[: -len(".avsc")]: entry.read_text()
            for entry in files.iterdir()
            if entry.name.endswith(".avsc")
        }
        for name in SHARED_RECORDS:
            registry.register(json.loads(texts.pop(name)), current=True)
        for name in sorted(texts):
            registry.register(json.loads(texts[name]), current=True)
        # earlier versions of the records: messages they wrote stay readable, never written
        history = files / "history"
        for entry in sorted(history.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".avsc"):
                registry.register(json.loads(entry.read_text()))
        return registry

    def register(self, schema: dict[str, Any], *, current: bool = False) -> RegisteredSchema:
        """Add a schema. Older versions are registered with current=False: readable, never written."""
        named = dict(self._named) if not current else self._named
        plain_named = dict(self._plain_named) if not current else self._plain_named
        parsed: Any = fastavro.schema.parse_schema(schema, named_schemas=named)
        plain = fastavro.schema.parse_schema(
            without_logical_types(schema), named_schemas=plain_named
        )
        name: str = parsed["name"]
        write = compile_writer(parsed, named) if current else None  # old ones are never written
        entry = RegisteredSchema(name, fingerprint_of(parsed), parsed, plain, write)
        self._writers[entry.fingerprint] = entry
        if current:
            self.current[name] = entry
        return entry

    def writer(self, fingerprint: bytes) -> RegisteredSchema:
        try:
            return self._writers[fingerprint]
        except KeyError:
            raise SchemaError(
                f"unknown writer schema fingerprint {fingerprint.hex()}: "
                "the message was written by a newer or foreign memstream"
            ) from None


class AvroCodec:
    """Encode/decode records as single-object Avro, resolving old writer schemas to the current ones."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry.load_default()

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        return self.encode_with(self.registry.current[name], record)

    @staticmethod
    def encode_with(schema: RegisteredSchema, record: dict[str, Any]) -> bytes:
        if schema.write is not None:
            return MAGIC + schema.fingerprint + schema.write(record)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes, *, logical: bool = True) -> tuple[str, dict[str, Any]]:
        """(record name, record). `logical=False`: uuid and timestamp-millis fields come
        back as the str and int they are encoded as, not as UUID and datetime."""
        if len(data) < 10 or data[:2] != MAGIC:
            raise SchemaError("not an Avro single-object message (bad magic)")
        writer = self.registry.writer(data[2:10])
        reader = self.registry.current.get(writer.name, writer)
        schema = writer.parsed if logical else writer.plain
        # no reader schema when it is the writer's: fastavro then skips schema resolution
        resolve = None if reader is writer else reader.parsed if logical else reader.plain
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, resolve)
        except Exception as exc:  # fastavro raises assorted errors on corrupt bodies
            raise SchemaError(f"cannot decode {writer.name}: {exc}") from exc
        assert isinstance(record, dict)
        return writer.name, record
