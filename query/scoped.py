"""Scoped reads that lead with the most selective indexed equality (issue 16, section 1).

Why: Lance answers every indexed conjunct of a predicate from its index and intersects the
row sets. For `{"user_id": X}` memstream's predicate is `org_id = .. AND project_id = .. AND
user_id = X AND agent_id IS NULL AND app_id IS NULL AND run_id IS NULL` plus the retention
clauses, and all but `user_id = X` select most of the table: at 200k rows a top-10 search
with it took ~91 ms, with `user_id = X` alone ~8 ms (bench/search_plans.py, bench/README.md).

The plan here: `lead_predicate` picks one top-level conjunct of the filter that is an
equality or IN list on an indexed column (`id`, then `run_id`, `user_id`, `agent_id`,
`app_id`); Lance answers `where(lead)` from that one index; every fetched row is then checked
against the whole filter by the reference evaluator (`query/matcher.py`: tenancy, implicit
null scoping, NOT, lists, wildcards, metadata) and against the retention rules
(`query/retention.py:row_visible`); a search ranks what is left by exact cosine distance
(numpy), ties broken by id. It is exact by construction: the lead is implied by the filter,
so every matching row is fetched, and a fetched row is kept exactly when it matches. When
the lead selects more than `max_rows` rows (an agent shared by thousands of users) the plan
declines and the reader sends the whole predicate to Lance as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from memstream.query.filtertree import And, EntityMatch, IdMatch, Node
from memstream.query.matcher import evaluate
from memstream.query.retention import row_visible
from memstream.sqlutil import sql_in

__all__ = [
    "LEAD_COLUMNS",
    "MAX_GET_ALL_ROWS",
    "MAX_SEARCH_ROWS",
    "Scope",
    "cosine_distances",
    "fetch_scope",
    "lead_predicate",
    "rank",
]

LEAD_COLUMNS = ("id", "run_id", "user_id", "agent_id", "app_id")
"""Indexed columns a plan may lead with, most selective kind first (a memory id names one
row; a run is usually shorter than a user's life, a user has fewer memories than an agent
serving many users)."""

MAX_SEARCH_ROWS = 20_000
"""Beyond this many rows under the lead, a search hands the whole predicate to Lance."""
MAX_GET_ALL_ROWS = 50_000
"""The same for get_all (which returns every matching row anyway)."""


def _conjuncts(node: Node) -> Iterable[Node]:
    if isinstance(node, And):
        for child in node.children:
            yield from _conjuncts(child)
    else:
        yield node


def lead_predicate(ast: Node) -> str | None:
    """A Lance predicate on one indexed column implied by `ast`, or None if there is none.

    Only top-level conjuncts qualify (a NOT or an OR never implies an equality), and of an
    entity only its plain values: `null` or `"*"` in the same condition would admit rows
    outside the list. Among candidates the earliest column of LEAD_COLUMNS wins, then the
    shortest list.
    """
    best: tuple[int, int, str] | None = None
    for node in _conjuncts(ast):
        if isinstance(node, IdMatch) and node.ids:
            column, ids = "id", node.ids
        elif (
            isinstance(node, EntityMatch)
            and node.ids
            and not node.wildcard
            and not node.null
            and node.field in LEAD_COLUMNS
        ):
            column, ids = node.field, node.ids
        else:
            continue
        key = (LEAD_COLUMNS.index(column), len(ids), sql_in(column, ids))
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else best[2]


@dataclass(frozen=True)
class Scope:
    """The rows under a lead that pass the whole filter: `rows` as dicts (without the
    vector), and, when vectors were asked for, their (n, dim) float32 matrix."""

    rows: list[dict[str, Any]]
    vectors: np.ndarray | None


def fetch_scope(
    table: Any,
    lead: str,
    columns: Sequence[str],
    ast: Node,
    *,
    policies: Sequence[Mapping[str, Any]] | None,
    now_ms: int,
    max_rows: int,
    with_vectors: bool = False,
) -> Scope | None:
    """The rows of `table` under `lead` that satisfy `ast` (and are visible at `now_ms` under
    `policies`, unless `policies` is None: show_expired), or None when the lead selects
    more than `max_rows` rows."""
    wanted = [*columns, "vector"] if with_vectors else list(columns)
    got: pa.Table = table.search().where(lead).select(wanted).limit(max_rows + 1).to_arrow()
    if got.num_rows > max_rows:
        return None
    plain = got.drop_columns(["vector"]) if with_vectors else got
    rows = plain.to_pylist()
    keep = [
        i
        for i, row in enumerate(rows)
        if evaluate(ast, row) and (policies is None or row_visible(row, policies, now_ms))
    ]
    vectors = None
    if with_vectors:
        matrix = _matrix(got["vector"])
        vectors = matrix[keep] if len(keep) != len(rows) else matrix
    return Scope([rows[i] for i in keep], vectors)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks()
    dim = flat.type.list_size
    values = flat.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)


def cosine_distances(vectors: np.ndarray, query: Any) -> np.ndarray:
    """1 - cosine similarity of each row with `query` (Lance's "cosine" metric); a zero
    vector is at distance 1 from everything."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    norms = np.linalg.norm(vectors, axis=1) * np.float32(np.linalg.norm(q))
    dots = vectors @ q
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0.0)
    return (1.0 - cos).astype(np.float64)


def rank(ids: Sequence[str], distances: np.ndarray, top_k: int) -> list[int]:
    """Indices of the `top_k` nearest rows: by distance, ties by id (deterministic).

    Only the rows at or below the k-th smallest distance are sorted in Python."""
    n = len(ids)
    if n == 0:
        return []
    if n > top_k:
        kth = np.partition(distances, top_k - 1)[top_k - 1]
        candidates = np.flatnonzero(distances <= kth).tolist()
    else:
        candidates = list(range(n))
    candidates.sort(key=lambda i: (float(distances[i]), ids[i]))
    return candidates[:top_k]
