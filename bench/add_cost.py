"""The Python cost of one add before the append, piece by piece (issue 16, sections 2 and 6).

    python bench/add_cost.py            # each piece: min of 5 x 2,000 calls, in µs
    python bench/add_cost.py --whole    # plus a whole Memstream.add(wait=False) with the
                                        # log's append replaced by a no-op (CPU µs per add)

Uses only what main has too, so the same file runs against an older checkout's venv for a
paired before/after (bench/README.md, round 7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import TENANT, settings_for  # noqa: E402
from workload import make_workload  # noqa: E402

from memstream.crypto import keyed_hash, seal  # noqa: E402
from memstream.events import (  # noqa: E402
    Actor,
    MemoryAdded,
    codec,
    encode_event,
    message_of,
    new_id,
    to_record,
)
from memstream.keystore.base import Subject, SubjectKey  # noqa: E402
from memstream.log.base import Position  # noqa: E402
from memstream.producers import validation as v  # noqa: E402
from memstream.scope import Scope  # noqa: E402
from memstream.service import Memstream  # noqa: E402
from memstream.settings import Limits  # noqa: E402

TEXT = "Alice prefers window seats on long flights (noted in March 2024-03-05) " * 4


def micro(label: str, fn: Callable[[], Any], n: int = 2000) -> None:
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
    print(f"{label:44s} {best:7.1f} µs")


def pieces() -> None:
    key = SubjectKey("kid-1", Subject("org-1", "proj-1", "user_id", "u-1"), os.urandom(32), 0)
    scope = Scope("org-1", "proj-1", user_id="u-1")
    event = MemoryAdded(
        scope=scope, memory_id=new_id(), actor=Actor(), text=TEXT,
        hash=keyed_hash(key, TEXT), source_hash=keyed_hash(key, TEXT),
    )  # fmt: skip
    record = {**to_record(event), "text": "", "key_id": key.key_id, "sealed": b"x" * 400}
    limits = Limits()
    secret = json.dumps({"text": TEXT, "metadata": "{}", "categories": []}).encode()
    micro("request validation (add_request)", lambda: v.add_request(
        "org-1", "proj-1", TEXT, v.memory_texts, limits, user_id="u-1"))  # fmt: skip
    micro("Scope.of", lambda: Scope.of("org-1", "proj-1", user_id="u-1"))
    micro("new_id", new_id)
    micro("keyed_hash", lambda: keyed_hash(key, TEXT))
    micro("MemoryAdded(...) (two ids)", lambda: MemoryAdded(
        scope=scope, memory_id=new_id(), actor=Actor(), text=TEXT, hash="h", source_hash="s"))  # fmt: skip
    micro("to_record", lambda: to_record(event))
    micro("seal (AES-GCM of the JSON)", lambda: seal(key, event.event_id, secret))
    micro(
        "Avro body + header (codec().encode)",
        lambda: codec().encode("memstream.MemoryAdded", record),
    )
    micro("encode_event (sealed)", lambda: encode_event(event, key))
    micro("Scope.key()", scope.key)
    micro("message_of (sealed)", lambda: message_of(event, key))
    micro("a stat (check_writable, key journal)", lambda: os.stat("/tmp"))


async def whole() -> None:
    wl = make_workload(2300, users=20)
    with tempfile.TemporaryDirectory() as tmp:
        ms = Memstream(settings_for(Path(tmp), "hashing", None))
        await ms.start()
        count = 0

        async def no_append(messages: Any) -> list[Position]:
            nonlocal count
            count += len(messages)
            return [Position(0, count + i) for i in range(len(messages))]

        ms.log.append = no_append  # type: ignore[method-assign]
        rounds = []
        for _ in range(6):  # the first round warms the key cache
            started = time.process_time()
            for m in wl.memories[:2000]:
                await ms.add(m.text, tenant=TENANT, **m.entities(), wait=False)
            rounds.append((time.process_time() - started) / 2000 * 1e6)
        await ms.close()
    after_warm = rounds[1:]
    print(f"{'Memstream.add(wait=False), append a no-op':44s} {statistics.median(after_warm):7.1f} µs "
          f"CPU (median of 5 x 2,000; min {min(after_warm):.1f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args()
    pieces()
    if args.whole:
        asyncio.run(whole())


if __name__ == "__main__":
    main()
