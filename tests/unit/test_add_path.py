"""The cheaper helpers on an add's path give exactly what the slower ones gave: ids of
uuid4's format, the same keyed hash, the same id validation (bench/README.md, round 7)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstream.crypto import keyed_hash
from memstream.errors import ValidationError
from memstream.events import MemoryAdded, decode_event, new_id
from memstream.keystore.base import Subject, SubjectKey
from memstream.metrics import EVENTS_APPENDED, count_appended
from memstream.scope import MAX_ID_LENGTH, Scope, normalise_id
from memstream.service import Memstream
from memstream.settings import Settings

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_new_id_is_a_uuid4_string() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert UUID4.match(i), i
        parsed = uuid.UUID(i)
        assert str(parsed) == i
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_new_id_uses_every_random_bit() -> None:
    """122 random bits: no hex digit outside the version and variant is stuck."""
    seen = [set() for _ in range(36)]
    for _ in range(2000):
        for pos, ch in enumerate(new_id()):
            seen[pos].add(ch)
    fixed = {8, 13, 18, 23, 14}  # the dashes and the version digit
    assert all(len(seen[p]) == 1 for p in fixed)
    assert seen[19] == set("89ab")  # the variant digit
    assert all(len(seen[p]) == 16 for p in range(36) if p not in fixed | {19})


@given(st.text(max_size=300), st.binary(max_size=100))  # keys shorter and longer than a block
def test_keyed_hash_is_hmac_sha256(text: str, secret: bytes) -> None:
    """memstream keys are 32 bytes; the construction holds for any length."""
    key = SubjectKey("k", Subject("o", "p", "user_id", "u"), secret, 0)
    expected = hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()
    assert keyed_hash(key, text) == expected


def _old_normalise_id(field: str, value: Any) -> str | None:
    """The check as it was written before (per-character ord)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be a string")
    if value == "" or value.strip() == "":
        raise ValidationError(f"{field}: must not be empty")
    if value != value.strip():
        raise ValidationError(f"{field}: whitespace")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{field}: too long")
    if any(ord(c) < 32 for c in value):
        raise ValidationError(f"{field}: control characters")
    if value == "*":
        raise ValidationError(f"{field}: wildcard")
    return value


@given(st.text(alphabet=st.characters(max_codepoint=0x2100), max_size=40) | st.none())
def test_normalise_id_accepts_and_refuses_what_it_did(value: str | None) -> None:
    try:
        expected: Any = _old_normalise_id("user_id", value)
    except ValidationError:
        expected = ValidationError
    try:
        got: Any = normalise_id("user_id", value)
    except ValidationError:
        got = ValidationError
    assert got == expected


@pytest.mark.parametrize("bad", ["a\x00b", "a\x1fb", "a\nb", "\tab"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        normalise_id("user_id", bad)


def test_count_appended_counts_each_type() -> None:
    def value(kind: str) -> float:
        return EVENTS_APPENDED.labels(kind)._value.get()  # type: ignore[attr-defined,no-any-return]

    before = value("MemoryAdded"), value("MemoryDeleted")
    count_appended(["MemoryAdded", "MemoryDeleted", "MemoryAdded"])
    assert (value("MemoryAdded"), value("MemoryDeleted")) == (before[0] + 2, before[1] + 1)


def test_os_urandom_is_what_ids_draw_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids come from the OS's CSPRNG (fork-safe, no pool to share with a child)."""
    monkeypatch.setattr(os, "urandom", lambda n: b"\xff" * n)
    assert new_id() == "ffffffff-ffff-4fff-bfff-ffffffffffff"


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers()) | st.text())
def test_the_source_encoder_is_json_dumps(messages: Any) -> None:
    from memstream.producers.writer import _SOURCE_JSON

    assert _SOURCE_JSON.encode(messages) == json.dumps(messages, sort_keys=True, default=str)


@given(st.lists(st.none() | st.text(min_size=1, max_size=8), min_size=4, max_size=4))
def test_scope_key_is_unchanged(ids: list[str | None]) -> None:
    scope = Scope("org-é", "p", *ids)
    old = json.dumps(["org-é", "p", *ids], separators=(",", ":"), ensure_ascii=False).encode()
    assert scope.key() == old
    assert Scope.from_key(scope.key()) == scope
    assert scope.has_entity() == any(i is not None for i in ids)


def test_an_adds_hash_and_sealed_text_are_under_one_key(tmp_path: Path) -> None:
    """The texts are hashed and sealed under the key of one look-up: were each look-up to
    answer a different key (as if it raced a re-keying), the hash would still be the HMAC
    under the key the text is sealed with."""

    async def body() -> None:
        async with Memstream(Settings(data_dir=tmp_path, embedder="hashing")) as ms:
            store = ms.projector.keys
            real = store.key_for
            handed: dict[str, SubjectKey] = {}

            async def a_new_key_each_time(subject: Subject) -> SubjectKey:
                k = await real(subject)
                fresh = SubjectKey(new_id(), subject, os.urandom(32), k.created_at)
                handed[fresh.key_id] = fresh
                return fresh

            written: list[tuple[bytes, bytes]] = []
            append = ms.log.append

            async def recording(messages: Any) -> Any:
                written.extend(messages)
                return await append(messages)

            store.key_for = a_new_key_each_time  # type: ignore[method-assign]
            ms.log.append = recording  # type: ignore[method-assign]
            await ms.add([{"role": "user", "content": "likes tea"},
                          {"role": "user", "content": "lives in Lisbon"}],
                         user_id="alice", wait=False)  # fmt: skip
            assert len(written) == 2
            for _, value in written:
                event = decode_event(value, lambda subject, key_id: handed.get(key_id))
                assert isinstance(event, MemoryAdded) and not event.erased
                assert event.key_id is not None
                assert event.hash == keyed_hash(handed[event.key_id], event.text)

    asyncio.run(body())
