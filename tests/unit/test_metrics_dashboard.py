"""The Grafana dashboard and docs/metrics.md name only series the registry exposes, and
every memstream series is documented and charted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from memstream.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\b((?:memstream|process|python)_[a-z_]+)\b")


def exposed() -> set[str]:
    """Every sample name the registry can expose (counters' _total, histograms' _bucket...)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        names |= {s.name for s in family.samples}
    return names


def test_the_dashboard_queries_only_exposed_series_and_charts_every_memstream_one() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in SERIES.findall(e)}
    assert used and used <= exposed(), used - exposed()
    ours = {f.name for f in REGISTRY.collect() if f.name.startswith("memstream_")}
    charted = {n for n in used if n.startswith("memstream_")}
    assert {f for f in ours if not any(c.startswith(f) for c in charted)} == set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_docs_metrics_lists_every_memstream_series() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for family in REGISTRY.collect():
        if family.name.startswith("memstream_"):
            shown = f"{family.name}_total" if family.type == "counter" else family.name
            assert f"`{shown}`" in text, shown
    assert set(SERIES.findall(text)) - {"process_", "python_"} <= exposed() | {
        "process_resident_memory_bytes"
    }
