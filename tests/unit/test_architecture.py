"""The house rules of docs/architecture.md: which way imports run, and no import circles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import import_rules as rules


@pytest.fixture(scope="module")
def found() -> dict[str, Path]:
    return rules.modules(rules.package_dirs())


def test_every_stage_and_face_is_walked(found: dict[str, Path]) -> None:
    # a walk that found nothing would pass every rule below
    for module in (
        "memstream.cli.common",
        "memstream.server.app",
        "memstream.service",
        "memstream.producers.writer",
        "memstream.projector.projector",
        "memstream.query.filters",
        "memstream.log.kafka",
        "memstream.keystore.kafka",
    ):
        assert module in found, module
    assert len(list(rules.imports(found))) > 100


def test_imports_follow_the_layers(found: dict[str, Path]) -> None:
    assert rules.layer_violations(found) == []


def test_no_import_circles(found: dict[str, Path]) -> None:
    assert rules.cycles(found) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return rules.modules(
        {"memstream": tmp_path / "memstream", "memstream.query": tmp_path / "query",
         "memstream.projector": tmp_path / "projector"}
    )  # fmt: skip


def test_a_wrong_import_is_named(tmp_path: Path) -> None:
    found = _tree(tmp_path, {
        "memstream/__init__.py": "",
        "memstream/service.py": "from memstream.query.reader import read\n",
        "memstream/cli/__init__.py": "from memstream.projector.store import Store\n",
        "query/__init__.py": "",
        "query/reader.py": "def read():\n    from memstream.service import Memstream\n",
        "projector/__init__.py": "",
        "projector/store.py": "from memstream.query import reader\n",
    })  # fmt: skip
    bad = rules.layer_violations(found)
    assert any(
        "memstream.query.reader (query) imports memstream.service (service)" in b for b in bad
    )
    assert any(
        "memstream.projector.store (projector) imports memstream.query.reader" in b for b in bad
    )
    assert any("memstream.cli (faces) imports memstream.projector.store" in b for b in bad)
    assert len(bad) == 3
    assert rules.cycles(found) == [["memstream.query.reader", "memstream.service"]]


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    found = _tree(tmp_path, {
        "memstream/__init__.py": "",
        "memstream/service.py": "from memstream.query.reader import read\n",
        "query/__init__.py": "",
        "query/reader.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from memstream.service import Memstream\n"
        ),
    })  # fmt: skip
    assert rules.layer_violations(found) == []
    assert rules.cycles(found) == []


def test_a_face_may_not_reach_into_the_log_implementation(tmp_path: Path) -> None:
    found = _tree(tmp_path, {
        "memstream/__init__.py": "",
        "memstream/log/__init__.py": "",
        "memstream/log/base.py": "",
        "memstream/log/file.py": "",
        "memstream/server/__init__.py": (
            "from memstream.log.base import EventLog\nfrom memstream.log.file import FileEventLog\n"
        ),
    })  # fmt: skip
    bad = rules.layer_violations(found)
    assert len(bad) == 1 and "reaches into memstream.log.file" in bad[0]
