"""Reads over the tables and this process's fresh tier (projector/tier.py).

The tier holds, for every memory id it changed since its base, the memory's current row or
None (gone). A read therefore drops every table row whose id the tier changed, and adds the
tier's live rows that pass the same filter -- the reference evaluator (`query/matcher.py`)
and the retention rules (`row_visible`), exactly what the scoped plan checks table rows
against -- so the answer is the one the tables would give once the tier is flushed.
Audit rows (history, a request's events, outcomes) are the union of both, by event id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from memstream.projector.apply import scope_of_row
from memstream.projector.store import Generation
from memstream.projector.tier import TierView
from memstream.query.filtertree import Node
from memstream.query.matcher import evaluate
from memstream.query.retention import row_visible
from memstream.query.scoped import lead_of
from memstream.scope import Scope

__all__ = ["audits_where", "events_where", "merge", "of_scope", "tier_matches", "tier_vectors"]


def tier_matches(
    view: TierView,
    ast: Node,
    columns: Sequence[str],
    *,
    policies: Sequence[Mapping[str, Any]] | None,
    now_ms: int,
) -> list[dict[str, Any]]:
    """The tier's live rows that `ast` accepts (and that are visible at `now_ms` under
    `policies`, unless None: show_expired), as dicts of `columns` plus `vector`. Looked up
    through the tier's index by the filter's lead (the column every accepted row has one
    of the values of), else every tier row is checked."""
    if not view.rows:
        return []
    lead = lead_of(ast)
    ids = view.candidates(*lead) if lead is not None else view.candidates(None, None)
    out = []
    for mid in ids:
        row = view.rows.get(mid)
        if row is None or not evaluate(ast, row):
            continue
        if policies is not None and not row_visible(row, policies, now_ms):
            continue
        picked = {c: row[c] for c in columns}
        picked["vector"] = row["vector"]
        out.append(picked)
    return out


def merge(
    table_rows: list[dict[str, Any]], view: TierView, tier_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Table rows the tier did not change, then the tier's rows (without their vectors)."""
    if not view.rows:
        return table_rows
    kept = [r for r in table_rows if r["id"] not in view.rows]
    return kept + [{k: v for k, v in r.items() if k != "vector"} for r in tier_rows]


def tier_vectors(rows: list[dict[str, Any]], dim: int) -> np.ndarray:
    """The (n, dim) float32 matrix of tier rows' vectors."""
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([np.asarray(r["vector"], dtype=np.float32) for r in rows])


def audits_where(
    table_rows: list[dict[str, Any]], view: TierView, keep: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The events table's rows plus the tier's audit rows `keep` accepts, once per event."""
    if not view.audits:
        return table_rows
    seen = {r["event_id"] for r in table_rows}
    extra = [a for a in view.audits if a["event_id"] not in seen and keep(a)]
    return table_rows + extra


def events_where(
    gen: Generation, view: TierView, where: str, keep: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The events table's rows `where` selects, plus the tier's audit rows `keep` accepts
    (`keep` must say in Python what `where` says in SQL), once per event.

    The view is taken by the caller BEFORE the table is read: a flush between the two then
    leaves the rows in both (deduplicated), never in neither -- a view taken after the read
    could be the empty tier that replaced the flushed one."""
    return audits_where(gen.query_events(where), view, keep)


def of_scope(scope: Scope) -> Callable[[dict[str, Any]], bool]:
    """What projector/decisions.py `scope_where` selects: exactly the scope's rows."""
    return lambda row: scope_of_row(row) == scope


def of_tenant(org_id: str, project_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["org_id"] == org_id and row["project_id"] == project_id


def ids_in(column: str, ids: Iterable[str]) -> Callable[[dict[str, Any]], bool]:
    wanted = set(ids)
    return lambda row: row[column] in wanted
