"""An Avro body writer compiled per schema: the same bytes as `fastavro.schemaless_writer`,
a few times cheaper per record.

fastavro's writer walks the parsed schema for every record (a dispatch per field, a union
resolved by validating the value against each branch, a BytesIO); at ~20 us a MemoryAdded
that was the largest single cost of an add before the append (bench/README.md, round 7).
`compile_writer` turns one parsed schema into the source of one Python function that
writes exactly that record: fields in order, each union of `null` and one type settled by
an `is None`, lengths below 4096 from a table.

It handles only the values memstream's records hold, by exact type: str, int (in the
type's range), bool, float, bytes, list, dict, None. Anything else -- a UUID or datetime
for a logical type, a tuple, a subclass, a missing field without a default, a value of the
wrong type -- is handed to fastavro for the whole record, so such a record is written (or
refused) exactly as before. A schema with a type it does not compile (enum, fixed, a union
of two non-null types, a record default) gets no compiled writer at all: `compile_writer`
returns None and the caller keeps using fastavro. tests/unit/test_avro_writer.py checks
the bytes against fastavro's for random records of every schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import fastavro

__all__ = ["compile_writer", "zigzag"]

RecordWriter = Callable[[dict[str, Any]], bytes]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_ONE_BYTE = tuple(bytes([n]) for n in range(128))


class _Fallback(Exception):
    """A value the compiled writer does not handle: fastavro writes the record instead."""


class _Unsupported(Exception):
    """A schema the compiler does not handle: no compiled writer."""


def zigzag(n: int) -> bytes:
    """Avro's long: zigzag, then a little-endian base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _ONE_BYTE[z]
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# the encoded length n for n < 4096 (one or two bytes): hashes are 64 hex characters,
# sealed payloads a few hundred bytes
_LENGTHS = tuple(zigzag(n) for n in range(4096))


class _Compiler:
    """Emits the statements that write one value of a schema held in a local variable."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.counter = 0
        self.constants: dict[str, Any] = {}

    def var(self) -> str:
        self.counter += 1
        return f"v{self.counter}"

    def const(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, schema: Any, v: str, indent: int) -> None:
        """Statements that append the encoding of the value in local `v` to the bytearray `out`."""
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        if isinstance(schema, list):
            self.union(schema, v, indent)
            return
        if isinstance(schema, dict):
            kind = schema["type"]
            logical = schema.get("logicalType")
            if kind == "record":
                self.record(schema, v, indent)
                return
            if kind == "array":
                self.array(schema, v, indent)
                return
            if kind == "map":
                self.map(schema, v, indent)
                return
            if logical is not None and (kind, logical) not in (
                ("string", "uuid"),
                ("long", "timestamp-millis"),
            ):
                raise _Unsupported(f"logical type {logical}")
            # uuid / timestamp-millis: a str / int is written as the plain type (a UUID or
            # datetime falls back to fastavro, which converts it)
            schema = kind
        self.primitive(schema, v, indent)

    def primitive(self, kind: Any, v: str, indent: int) -> None:
        e = self.emit
        if kind == "null":
            e(indent, f"if {v} is not None: raise _Fallback")
        elif kind == "boolean":
            e(indent, f"if {v} is True: out += b'\\x01'")
            e(indent, f"elif {v} is False: out += b'\\x00'")
            e(indent, "else: raise _Fallback")
        elif kind in ("int", "long"):
            lo, hi = (_INT_MIN, _INT_MAX) if kind == "int" else (_LONG_MIN, _LONG_MAX)
            e(indent, f"if {v}.__class__ is not int or not {lo} <= {v} <= {hi}: raise _Fallback")
            e(indent, f"out += zigzag({v})")
        elif kind in ("float", "double"):
            fmt = self.const(struct.Struct("<f" if kind == "float" else "<d").pack)
            e(indent, f"if {v}.__class__ is not float: raise _Fallback")
            e(indent, f"out += {fmt}({v})")
        elif kind == "string":
            e(indent, f"if {v}.__class__ is not str: raise _Fallback")
            b = self.var()
            e(indent, f"{b} = {v}.encode()")
            self.length(f"len({b})", indent)
            e(indent, f"out += {b}")
        elif kind == "bytes":
            e(indent, f"if {v}.__class__ is not bytes: raise _Fallback")
            self.length(f"len({v})", indent)
            e(indent, f"out += {v}")
        else:
            raise _Unsupported(f"type {kind!r}")

    def length(self, expr: str, indent: int) -> None:
        n = self.var()
        self.emit(indent, f"{n} = {expr}")
        self.emit(indent, f"out += _LENGTHS[{n}] if {n} < 4096 else zigzag({n})")

    def union(self, branches: list[Any], v: str, indent: int) -> None:
        """Only `[null, T]` / `[T, null]` (what memstream's schemas use)."""
        if len(branches) != 2 or "null" not in branches or branches[0] == branches[1]:
            raise _Unsupported(f"union {branches!r}")
        null_index = branches.index("null")
        other = branches[1 - null_index]
        self.emit(indent, f"if {v} is None:")
        self.emit(indent + 1, f"out += {self.const(zigzag(null_index))}")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"out += {self.const(zigzag(1 - null_index))}")
        self.value(other, v, indent + 1)

    def array(self, schema: dict[str, Any], v: str, indent: int) -> None:
        item = self.var()
        self.emit(indent, f"if {v}.__class__ is not list: raise _Fallback")
        self.emit(indent, f"if {v}:")
        self.emit(indent + 1, f"out += zigzag(len({v}))")
        self.emit(indent + 1, f"for {item} in {v}:")
        self.value(schema["items"], item, indent + 2)
        self.emit(indent, "out += b'\\x00'")

    def map(self, schema: dict[str, Any], v: str, indent: int) -> None:
        key, item = self.var(), self.var()
        self.emit(indent, f"if {v}.__class__ is not dict: raise _Fallback")
        self.emit(indent, f"if {v}:")
        self.emit(indent + 1, f"out += zigzag(len({v}))")
        self.emit(indent + 1, f"for {key}, {item} in {v}.items():")
        self.primitive("string", key, indent + 2)
        self.value(schema["values"], item, indent + 2)
        self.emit(indent, "out += b'\\x00'")

    def record(self, schema: dict[str, Any], v: str, indent: int) -> None:
        self.emit(indent, f"if {v}.__class__ is not dict: raise _Fallback")
        for field in schema["fields"]:
            name, kind = field["name"], field["type"]
            f = self.var()
            if "default" in field:
                default = field["default"]
                if not (default is None or isinstance(default, str | int | float | bool)):
                    if default != []:
                        raise _Unsupported(f"default {default!r}")
                    default = []  # one list shared by every call: the writer only reads it
                self.emit(indent, f"{f} = {v}.get({name!r}, {self.const(default)})")
            elif isinstance(kind, list) and "null" in kind:
                self.emit(indent, f"{f} = {v}.get({name!r})")  # fastavro's default: None
            else:
                self.emit(indent, f"{f} = {v}[{name!r}]")  # missing: KeyError -> fastavro
            self.value(kind, f, indent)


def compile_writer(parsed: Any, named: dict[str, Any]) -> RecordWriter | None:
    """A function record -> Avro body, byte-identical to fastavro.schemaless_writer with
    `parsed`; None when the schema uses a type this compiler does not handle. `named`: the
    named schemas `parsed` refers to (as filled in by fastavro.schema.parse_schema)."""
    compiler = _Compiler(named)
    try:
        compiler.record(parsed, "record", 1)
    except _Unsupported:
        return None
    source = "\n".join(
        ["def write(record):", "    out = bytearray()"] + compiler.lines + ["    return bytes(out)"]
    )
    scope: dict[str, Any] = {
        "_Fallback": _Fallback,
        "_LENGTHS": _LENGTHS,
        "zigzag": zigzag,
        **compiler.constants,
    }
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), scope)  # noqa: S102
    compiled: RecordWriter = scope["write"]

    def write(record: dict[str, Any]) -> bytes:
        try:
            return compiled(record)
        except Exception:  # noqa: BLE001 -- anything unusual: fastavro decides, as before
            return _fastavro_body(parsed, record)

    write.__doc__ = source  # the generated code, for whoever debugs it
    return write


def _fastavro_body(parsed: Any, record: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()
