#!/usr/bin/env python3
"""Read memstream's ledger straight from Kafka: a standalone consumer (fastavro + aiokafka).

It needs no memstream code, only its Avro schemas (the `schemas/` folder: current records
and `history/` for older writer versions). Each message value is Avro single-object encoding:

    C3 01 | 8-byte CRC-64-AVRO fingerprint (little-endian) of the writer schema | Avro body

The fingerprint is taken over the parsing canonical form of the schema with the shared
records (memstream.Scope, memstream.Actor) inlined, which is what Apache Avro's Java
`SchemaNormalization.parsingFingerprint64` computes too.

Prints one JSON object per event (--limit N stops after N); sealed fields stay sealed: texts,
metadata and filters are encrypted under per-subject keys (see docs/consuming.md).

    python consume.py --bootstrap 127.0.0.1:9092 --topic memstream.events --schemas schemas/
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
from aiokafka import AIOKafkaConsumer

MAGIC = b"\xc3\x01"
SHARED = ("memstream.Scope", "memstream.Actor")  # records the event schemas refer to by name


def fingerprint(parsed: Any) -> bytes:
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.schema.expand_schema(parsed))
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def load_writers(folder: Path) -> dict[bytes, tuple[str, Any]]:
    """fingerprint -> (record name, parsed schema), for every schema version in `folder`."""
    named: dict[str, Any] = {}
    for name in SHARED:
        fastavro.schema.parse_schema(json.loads((folder / f"{name}.avsc").read_text()), named)
    writers: dict[bytes, tuple[str, Any]] = {}
    files = sorted(folder.glob("*.avsc")) + sorted((folder / "history").glob("*.avsc"))
    for path in files:
        if path.stem in SHARED:
            continue
        # each version parses against its own copy of the shared names (no redefinition clash)
        parsed = fastavro.schema.parse_schema(json.loads(path.read_text()), dict(named))
        writers[fingerprint(parsed)] = (parsed["name"], parsed)
    return writers


def decode(value: bytes, writers: dict[bytes, tuple[str, Any]]) -> dict[str, Any]:
    if value[:2] != MAGIC:
        raise ValueError("not an Avro single-object message")
    name, schema = writers[value[2:10]]  # KeyError: written by a newer memstream than the schemas
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
    assert isinstance(record, dict)
    return {"event_type": name.removeprefix("memstream."), **record}


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "hex") and type(value).__name__ == "UUID":
        return str(value)
    return value


async def consume(args: argparse.Namespace) -> int:
    writers = load_writers(Path(args.schemas))
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,  # its own committed position, like every ledger consumer
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    try:
        while args.limit is None or seen < args.limit:
            batches = await consumer.getmany(timeout_ms=args.idle_ms)
            if not batches:
                break  # nothing new for a while: stop (a service would keep polling)
            for tp, messages in batches.items():
                for msg in messages:
                    event = decode(msg.value, writers)
                    out = {"partition": tp.partition, "offset": msg.offset, **event}
                    print(json.dumps(jsonable(out), sort_keys=True), flush=True)
                    seen += 1
            await consumer.commit()  # after the events are handled: at-least-once
    finally:
        await consumer.stop()
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", default="memstream.events")
    p.add_argument("--schemas", default=str(Path(__file__).resolve().parents[2] / "schemas"))
    p.add_argument("--group", default="memstream-example-consumer")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--idle-ms", type=int, default=5000, help="stop after this long without events")
    n = asyncio.run(consume(p.parse_args()))
    print(f"{n} events", file=sys.stderr)


if __name__ == "__main__":
    main()
