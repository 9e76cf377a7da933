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
import pyarrow.compute as pc

from memstream.projector.lance_datasets import dataset
from memstream.query.dialects import LANCE_IN_MAX
from memstream.query.filtertree import And, EntityMatch, IdMatch, Node, Tenant
from memstream.query.matcher import evaluate
from memstream.query.retention import today_utc
from memstream.sqlutil import sql_in

__all__ = [
    "LEAD_COLUMNS",
    "MAX_GET_ALL_ROWS",
    "MAX_SEARCH_ROWS",
    "Scope",
    "cosine_distances",
    "fetch_scope",
    "lead_of",
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


def lead_predicate(ast: Node, id_column: str = "id") -> str | None:
    """A Lance predicate on one indexed column implied by `ast`, or None if there is none.

    Only top-level conjuncts qualify (a NOT or an OR never implies an equality), and of an
    entity only its plain values: `null` or `"*"` in the same condition would admit rows
    outside the list. Among candidates the earliest column of LEAD_COLUMNS wins, then the
    shortest list. `id_column` names the memory id column (`memory_id` on `events`).
    """
    lead = lead_of(ast)
    if lead is None:
        return None
    column, ids = lead
    return sql_in(id_column if column == "id" else column, ids)


def lead_of(ast: Node) -> tuple[str, tuple[str, ...]] | None:
    """`lead_predicate`'s choice as (column, values): every row `ast` accepts has one of
    the values in that column (the fresh tier's index is looked up by it too)."""
    best: tuple[int, int, str, tuple[str, ...]] | None = None
    for node in _conjuncts(ast):
        if isinstance(node, IdMatch | EntityMatch) and len(node.ids) > LANCE_IN_MAX:
            continue  # Lance's IN grows faster than its list (query/dialects.py)
        if isinstance(node, IdMatch) and node.ids:
            column, ids = "id", tuple(node.ids)
        elif (
            isinstance(node, EntityMatch)
            and node.ids
            and not node.wildcard
            and not node.null
            and node.field in LEAD_COLUMNS
        ):
            column, ids = node.field, tuple(node.ids)
        else:
            continue
        key = (LEAD_COLUMNS.index(column), len(ids), column, ids)
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else (best[2], best[3])


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
    more than `max_rows` rows.

    The rows are read through `lance` (the LanceDB table's dataset at its version, kept
    warm by `dataset`: ~2 ms less than LanceDB's query builder). Tenancy, entity conditions and retention are checked
    on Arrow columns at once (`_arrow_mask`); only the conditions left (time ranges, text,
    categories, metadata, NOT/OR of them) go through the reference evaluator row by row."""
    wanted = [*columns, "vector"] if with_vectors else list(columns)
    got: pa.Table = dataset(table).to_table(columns=wanted, filter=lead, limit=max_rows + 1)
    if got.num_rows > max_rows:
        return None
    mask, rest = _arrow_mask(got, ast, policies, now_ms)
    keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) if mask is not None else None
    if keep is not None and len(keep) < got.num_rows:
        got = got.take(pa.array(keep, pa.int64()))
    plain = got.drop_columns(["vector"]) if with_vectors else got
    rows = plain.to_pylist()
    vectors = _matrix(got["vector"]) if with_vectors else None
    if rest is not None:
        kept = [i for i, row in enumerate(rows) if evaluate(rest, row)]
        if len(kept) < len(rows):
            rows = [rows[i] for i in kept]
            vectors = vectors[kept] if vectors is not None else None
    return Scope(rows, vectors)


def _arrow_mask(
    got: pa.Table, ast: Node, policies: Sequence[Mapping[str, Any]] | None, now_ms: int
) -> tuple[pa.ChunkedArray | pa.Array | None, Node | None]:
    """The top-level conjuncts of `ast` that are tenancy or entity conditions, and the
    retention rules, as one boolean Arrow mask (exactly the reference evaluator's and
    `row_visible`'s meaning); returns (mask or None, the conjuncts left or None)."""
    masks: list[Any] = []
    rest: list[Node] = []
    for node in _conjuncts(ast):
        if isinstance(node, Tenant):
            masks.append(pc.equal(got["org_id"], node.org_id))
            masks.append(pc.equal(got["project_id"], node.project_id))
        elif isinstance(node, EntityMatch):
            col = got[node.field]
            valid = pc.is_valid(col)
            if node.wildcard:
                present: Any = valid
            elif node.ids:
                present = pc.fill_null(pc.is_in(col, pa.array(list(node.ids), pa.string())), False)
            else:
                present = pa.scalar(False)
            masks.append(pc.if_else(valid, present, pa.scalar(node.null)))
        else:
            rest.append(node)
    if policies is not None:
        masks.append(pc.is_null(got["expired_at"]))
        expiry = got["expiration_date"]
        masks.append(pc.invert(pc.fill_null(pc.less(expiry, today_utc(now_ms)), False)))
        for policy in policies:
            value = got[policy["field"]]
            pattern = str(policy["pattern"])
            if pattern == "*":
                matched: Any = pc.is_valid(value)
            elif pattern.endswith("*"):
                matched = pc.starts_with(value, pattern[:-1])
            else:
                matched = pc.equal(value, pattern)
            cutoff = now_ms - int(policy["ttl_seconds"]) * 1000
            old = pc.less(got["updated_at"], cutoff)
            masks.append(pc.invert(pc.fill_null(pc.and_kleene(matched, old), False)))
    mask = None
    for m in masks:
        m = pc.fill_null(m, False)
        mask = m if mask is None else pc.and_(mask, m)
    left = None if not rest else (rest[0] if len(rest) == 1 else And(tuple(rest)))
    return mask, left


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks()
    dim = flat.type.list_size
    values = flat.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)


def cosine_distances(vectors: np.ndarray, query: Any) -> np.ndarray:
    """1 - cosine similarity of each row with `query` (Lance's "cosine" metric); a zero
    vector is at distance 1 from everything.

    Computed in float64 and rounded to float32: BLAS sums a row differently depending on
    where it sits in the matrix (blocks and remainders), so two equal vectors could
    otherwise get distances one float32 ulp apart and break the ties-by-id order."""
    v = np.asarray(vectors, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v)) * float(np.sqrt(q @ q))
    dots = v @ q
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return (1.0 - cos).astype(np.float32).astype(np.float64)


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
