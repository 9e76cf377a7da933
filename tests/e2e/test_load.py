"""A short, bounded run of bench/load.py's mixed load: no 5xx, and every acknowledged add readable.

The bench (`python bench/load.py`, 32 clients x 60 s) reports the figures; this test checks only
correctness under concurrency (no timings are asserted), on the file log and on real Kafka.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.servers import Server

LOAD = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memstream_bench_load", LOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mixed_load_loses_nothing_and_never_answers_5xx(server: Server) -> None:
    load = _load_module()
    key, _, _ = server.new_key("load")
    result = load.run_load(server.base_url, key, clients=8, seconds=8.0, seed=7)
    assert result.ops["add"] > 0 and result.ops["search"] > 0 and result.ops["get_all"] > 0
    assert result.acknowledged > 0
    assert result.server_errors == 0
    assert result.other_errors == []
    assert result.lost == 0
