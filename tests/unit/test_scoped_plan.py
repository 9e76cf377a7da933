"""Proof that the scoped read plan (query/scoped.py) gives exactly the brute-force answer.

Random memories (tenants, entity scopes, hostile ids, expiry dates, sweeper marks, random
vectors) go into a real LanceDB table with the BTree indexes the projector builds; random
retention policies and random filters that carry a lead (a user, a run, an agent, a list of
them, memory ids) beside implicit null scoping, "*", NOT, OR and metadata conditions are run
through the plan -- the lead from the index, the rest checked in Python, exact cosine
ranking -- and compared with brute force over every row of the table: the reference
evaluator, the retention rules, numpy distances, sorted by (distance, id). Same ids, same
order. The same filters through LanceDB's own predicate (the plan before) must select the
same set, and LanceDB's cosine distances must equal the plan's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lancedb.index import BTree
from test_filters_property import (  # the filter property test's strategies
    COMMON_IDS,
    DATE_POOL,
    ID_POOL,
    ORG,
    PROJECT,
    TIME_POINTS,
    filters,
    memories,
    rows_of,
)

from memstream.projector.tables import memories_schema
from memstream.query.filters import compile_filters, exact_lance_filter
from memstream.query.matcher import evaluate
from memstream.query.retention import row_visible, today_utc, visible
from memstream.query.scoped import cosine_distances, fetch_scope, lead_predicate, rank
from memstream.scope import ENTITY_FIELDS

DIM = 8
COLUMNS = [
    "id", "org_id", "project_id", "user_id", "agent_id", "app_id", "run_id", "text", "hash",
    "metadata", "categories", "created_at", "updated_at", "expiration_date", "immutable",
    "expired_at",
]  # fmt: skip
NOW = TIME_POINTS[6]  # an instant inside the generated time range


class Table:
    def __init__(self, root: Path) -> None:
        self.db = lancedb.connect(str(root))
        self.rows: list[dict[str, Any]] = []

    def load(self, rows: list[dict[str, Any]], seed: int) -> None:
        rng = np.random.default_rng(seed)
        rows = [rows[i] for i in rng.permutation(len(rows))]  # table order is not id order
        # a few distinct vectors (one of them zero): many rows at equal distances, so the
        # order of ties is tested too
        pool = rng.standard_normal((4, DIM)).astype(np.float32)
        pool[0] = 0.0
        self.vectors = pool[rng.integers(0, 4, len(rows))]
        self.rows = rows
        data = [{**r, "vector": v.tolist()} for r, v in zip(rows, self.vectors, strict=True)]
        self.table = self.db.create_table(
            "memories", pa.Table.from_pylist(data, schema=memories_schema(DIM)), mode="overwrite"
        )
        for column in ("id", "org_id", "project_id", *ENTITY_FIELDS):
            self.table.create_index(column, config=BTree())


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    yield Table(tmp_path_factory.mktemp("scoped"))


common = st.sampled_from(COMMON_IDS)


def _maybe(values: list[str | None], nones: int) -> st.SearchStrategy[str | None]:
    return st.sampled_from([*values, *([None] * nones)])


TENANTS = [(ORG, PROJECT)] * 8 + [(ORG, "proj-2"), ("org-2", PROJECT)]
# memories shaped like real scopes (mostly one user; some with an agent, a run, an app), so
# most scoped filters select a few rows; the text, metadata, categories, times and dates of
# the filter property test's memories
scoped_memories = st.lists(
    memories.map(lambda ms: ms[0]).flatmap(
        lambda m: st.fixed_dictionaries(
            {
                "user_id": _maybe(["a", "a", "a", "b", "it's", "A"], 1),
                "agent_id": _maybe(["a", "b"], 8),
                "app_id": _maybe(["a"], 12),
                "run_id": _maybe(["a", "it's"], 10),
            }
        ).map(lambda e, m=m: {**m, "entities": e, "tenant": TENANTS[len(str(e)) % 10]})
    ),
    min_size=8,
    max_size=30,
)
lead_values = st.one_of(st.just("a"), common, common, common, st.sampled_from(ID_POOL))
lead_specs = st.one_of(
    lead_values,
    st.lists(lead_values, min_size=1, max_size=3),
    st.lists(st.one_of(lead_values, st.none(), st.just("*")), min_size=1, max_size=3),
    st.fixed_dictionaries({"in": st.lists(lead_values, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"eq": lead_values}),
)
leads = st.one_of(
    st.builds(lambda f, s: {f: s}, st.sampled_from(ENTITY_FIELDS), lead_specs),
    st.builds(lambda s: {"user_id": s}, lead_specs),
    st.builds(lambda s: {"user_id": s}, lead_specs),
    st.builds(
        lambda u, ids: {"user_id": u, "memory_ids": ids},
        common,
        st.lists(st.sampled_from([f"m{i}" for i in range(12)]), min_size=1, max_size=6),
    ),
)
# what goes beside the lead: other entities (values, "*", null), NOT, OR, any filter
siblings = st.one_of(
    st.just({}),
    st.just({}),
    st.builds(lambda a: {"agent_id": a}, st.sampled_from([*COMMON_IDS, "*", None])),
    st.builds(lambda r: {"run_id": r}, st.sampled_from([*COMMON_IDS, "*"])),
    st.builds(lambda a: {"NOT": {"agent_id": a}}, st.sampled_from([*COMMON_IDS, "*", None])),
    filters,
)
led_filters = st.one_of(
    st.builds(lambda lead, s: {"AND": [lead, s]} if s else lead, leads, siblings),
    st.builds(lambda lead, s: {**s, **lead}, leads, siblings.filter(lambda s: "AND" not in s)),
)
policies = st.lists(
    st.fixed_dictionaries(
        {
            "policy_id": st.sampled_from(["p1", "p2", "p3"]),
            "field": st.sampled_from(ENTITY_FIELDS),
            "pattern": st.one_of(
                st.just("*"), st.sampled_from(COMMON_IDS), st.sampled_from(["a*", "i*", "it'*"])
            ),
            "ttl_seconds": st.sampled_from([1, 3600, 86_400, 3 * 86_400]),
        }
    ),
    max_size=1,
)


def brute_force(
    t: Table, ast: Any, pols: list[dict[str, Any]] | None, query: np.ndarray, k: int
) -> list[str]:
    keep = [
        i
        for i, r in enumerate(t.rows)
        if evaluate(ast, r) and (pols is None or row_visible(r, pols, NOW))
    ]
    dist = cosine_distances(t.vectors, query)
    keep.sort(key=lambda i: (float(dist[i]), t.rows[i]["id"]))
    return [t.rows[i]["id"] for i in keep[:k]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=st.one_of(scoped_memories, scoped_memories, memories),
    filter_list=st.lists(led_filters, min_size=1, max_size=8),
    pols=policies,
    show_expired=st.sampled_from([True, True, False]),
    expired=st.sets(st.integers(0, 29), max_size=3),
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 6),
)
def test_scoped_plan_equals_brute_force(
    table: Table,
    drawn: list[dict[str, Any]],
    filter_list: list[dict[str, Any]],
    pols: list[dict[str, Any]],
    show_expired: bool,
    expired: set[int],
    seed: int,
    top_k: int,
) -> None:
    rows = rows_of(drawn)
    for i in expired:
        if i < len(rows):
            rows[i]["expired_at"] = TIME_POINTS[0]
    table.load(rows, seed)
    query = np.random.default_rng(seed + 1).standard_normal(DIM).astype(np.float32)
    active = None if show_expired else pols
    for f in filter_list:
        compiled = compile_filters(f, org_id=ORG, project_id=PROJECT, require_entity=False)
        lead = lead_predicate(compiled.ast)
        event(f"lead: {lead.split(' ')[0] if lead else None}")
        if lead is None:  # a list with null or "*": no plain lead (the reader uses Lance)
            continue
        scope = fetch_scope(
            table.table, lead, COLUMNS, compiled.ast,
            policies=active, now_ms=NOW, max_rows=1000, with_vectors=True,
        )  # fmt: skip
        assert scope is not None and scope.vectors is not None
        distances = cosine_distances(scope.vectors, query)
        got = [scope.rows[i]["id"] for i in rank([r["id"] for r in scope.rows], distances, top_k)]
        assert got == brute_force(table, compiled.ast, active, query, top_k), (f, lead)

        # the whole set equals what LanceDB's own predicate (the plan before) selects
        everything = brute_force(table, compiled.ast, active, query, len(rows))
        pred = exact_lance_filter(table.table, compiled)
        if active is not None:
            pred = f"({pred}) AND {visible(active, NOW)}"
        lance = table.table.search().where(pred).select(["id"]).limit(None).to_arrow()
        assert sorted(lance["id"].to_pylist()) == sorted(everything), (f, pred)
        event(f"scope rows: {'0' if not everything else '1-3' if len(everything) < 4 else '4+'}")

        # and the plan's distances are LanceDB's cosine distances (nonzero vectors)
        if everything:
            hits = (
                table.table.search(query.tolist()).metric("cosine").where(pred, prefilter=True)
                .select(["id", "_distance"]).limit(len(rows)).to_arrow().to_pylist()
            )  # fmt: skip
            index = {r["id"]: i for i, r in enumerate(table.rows)}
            ours = cosine_distances(table.vectors, query)
            for hit in hits:
                i = index[hit["id"]]
                if np.linalg.norm(table.vectors[i]) > 0:
                    assert abs(ours[i] - hit["_distance"]) < 1e-4


def test_a_filter_without_a_plain_lead_has_none() -> None:
    for f in (
        {"user_id": "*"},
        {"user_id": ["a", None]},
        {"OR": [{"user_id": "a"}, {"agent_id": "b"}]},
        {"NOT": {"user_id": "a"}},
        {"user_id": {"ne": "a"}},
        {"user_id": {"nin": ["a"]}},
    ):
        compiled = compile_filters(f, org_id=ORG, project_id=PROJECT, require_entity=False)
        assert lead_predicate(compiled.ast) is None, f


def test_the_lead_prefers_ids_then_runs_then_users() -> None:
    def lead(f: Mapping[str, Any]) -> str | None:
        return lead_predicate(compile_filters(f, org_id=ORG, project_id=PROJECT).ast)

    assert lead({"user_id": "u", "agent_id": "a"}) == "user_id IN ('u')"
    assert lead({"user_id": "u", "run_id": "r"}) == "run_id IN ('r')"
    assert lead({"agent_id": "a", "memory_ids": ["m1"]}) == "id IN ('m1')"
    assert lead({"user_id": ["u", "v"], "agent_id": "*"}) == "user_id IN ('u', 'v')"
    assert lead({"user_id": "it's"}) == "user_id IN ('it''s')"


def test_fetch_declines_a_scope_larger_than_its_limit(table: Table) -> None:
    rows = rows_of(
        [
            {"tenant": (ORG, PROJECT), "entities": {"user_id": "a"}, "text": f"t{i}",
             "categories": [], "metadata": {}, "created_at": TIME_POINTS[0],
             "updated_at": TIME_POINTS[0], "expiration_date": None}
            for i in range(5)
        ]
    )  # fmt: skip
    table.load(rows, 1)
    compiled = compile_filters({"user_id": "a"}, org_id=ORG, project_id=PROJECT)
    lead = lead_predicate(compiled.ast)
    assert lead is not None
    kw: dict[str, Any] = {"policies": None, "now_ms": NOW}
    assert fetch_scope(table.table, lead, COLUMNS, compiled.ast, max_rows=4, **kw) is None
    scope = fetch_scope(table.table, lead, COLUMNS, compiled.ast, max_rows=5, **kw)
    assert scope is not None and len(scope.rows) == 5


@settings(max_examples=200, deadline=None)
@given(
    row=st.fixed_dictionaries(
        {
            "user_id": st.sampled_from([*COMMON_IDS, None, "ab", "it'sx"]),
            "agent_id": st.sampled_from([*COMMON_IDS, None]),
            "app_id": st.none(),
            "run_id": st.sampled_from(["a", None]),
            "expiration_date": st.one_of(st.none(), st.sampled_from(DATE_POOL)),
            "expired_at": st.one_of(st.none(), st.just(TIME_POINTS[0])),
            "updated_at": st.sampled_from(TIME_POINTS),
        }
    ),
    pols=policies,
    now=st.sampled_from(TIME_POINTS),
)
def test_row_visible_is_the_sql_rule(
    tmp_path_factory: pytest.TempPathFactory,
    row: dict[str, Any],
    pols: list[dict[str, Any]],
    now: int,
) -> None:
    """Python's retention rule equals the SQL one DuckDB evaluates (DataFusion's is the
    same text; the property test above checks it through LanceDB too)."""
    import duckdb

    con = duckdb.connect()
    con.register("r", pa.Table.from_pylist([row]))
    sql = visible(pols, now)
    (got,) = con.execute(f"SELECT ({sql}) FROM r").fetchone()  # type: ignore[misc]
    assert bool(got) == row_visible(row, pols, now), (sql, json.dumps(row), today_utc(now))
