"""The start-up scan for interrupted erasures reads only what changed since its last clean run.

`finish_interrupted` used to read the key columns of the whole projection at every start (every
CLI command). Now a clean scan leaves a stamp in the generation (the key store's erasure
marker and the checkpoint before it); while the marker is unchanged the next start reads
only the rows of events projected since, and nothing when there are none. These tests show
the stamp never hides plaintext under a dead key: rows after it are checked, a destroy after
it forces a whole scan. The file log only: the Kafka key store has no cheap marker (every
start there scans the whole projection, as before).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from memstream.keystore.base import Subject
from memstream.projector import erasure
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_erasure import go

ALICE = Subject("local", "default", "user_id", "alice")
SECRET = "alice-secret-stamp-capybara"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedder="hashing")


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The `since` of every sealed_keys call (None: the whole projection was read)."""
    calls: list[Any] = []
    real = erasure.sealed_keys

    def counted(gen: Any, subject: Any = None, *, since: Any = None) -> Any:
        calls.append(since)
        return real(gen, subject, since=since)

    monkeypatch.setattr(erasure, "sealed_keys", counted)
    return calls


async def add_alice(ms: Memstream) -> None:
    await ms.add(SECRET, user_id="alice")
    await ms.add("bob keeps his memory", user_id="bob")


async def alice_texts(ms: Memstream) -> list[str]:
    await ms.catch_up()
    page = await ms.get_all({"user_id": "alice"}, show_expired=True)
    return [m.memory for m in page.results]


def stamp(ms_settings: Settings) -> erasure.ScanStamp | None:
    async def read(ms: Memstream) -> erasure.ScanStamp | None:
        return erasure.read_scan_stamp(ms.generation())

    return go(ms_settings, read)


def test_a_clean_scan_is_recorded_and_an_unchanged_projection_is_not_read_again(
    settings: Settings, scans: list[Any]
) -> None:
    go(settings, add_alice)
    assert scans == [None]  # the first start read everything
    recorded = stamp(settings)  # this start read the rows since (alice's and bob's)
    assert recorded is not None and recorded.checkpoint == {0: 2}
    assert scans[1] == {}  # the stamp of the empty projection
    go(settings, alice_texts)
    assert len(scans) == 2  # nothing projected since the last clean scan: nothing read


def test_rows_projected_after_the_stamp_are_checked_for_dead_keys(
    settings: Settings, scans: list[Any]
) -> None:
    go(settings, lambda ms: ms.catch_up())  # a clean scan of an empty projection
    go(settings, add_alice)  # its start stamps; alice's rows come after the stamp
    keys = settings.data_dir / "log" / "subject-keys"
    # alice's key gone without a destroy (no journal line: the marker does not change), as
    # a key a long-running projector still had cached when another process destroyed it
    shutil.rmtree(keys / ALICE.digest())
    assert go(settings, alice_texts) == []  # the next start erased what it found
    assert scans[-1] is not None  # ... reading only the rows since the stamp


def test_a_destroy_after_the_stamp_makes_the_next_start_read_everything(
    settings: Settings, scans: list[Any]
) -> None:
    go(settings, add_alice)
    go(settings, alice_texts)  # stamps a checkpoint past alice's rows
    assert stamp(settings) is not None
    calls = len(scans)

    async def destroy_only(ms: Memstream) -> None:  # an erase killed after this step
        await ms.projector.keys.destroy(ALICE)

    go(settings, destroy_only)
    assert go(settings, alice_texts) == []
    assert scans[calls:] == [None]  # the journal grew: the whole projection was read
