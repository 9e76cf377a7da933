"""Proof that the LanceDB and DuckDB compilations of a filter mean what the reference says.

Random memories (entity ids from a small alphabet with None and hostile strings: quotes,
backslashes, `%`, `_`, unicode, SQL fragments) are written to a real LanceDB table and a
DuckDB relation; random valid filters are compiled and run as a plain filtered scan, as a
prefiltered vector search with limit >= table size, as an exact top_k search, and through
DuckDB; every answer must equal the reference evaluator's set of ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memstream.projector.tables import memories_schema
from memstream.query.filters import (
    CompiledFilter,
    InexactLanceFilter,
    compile_filters,
    exact_lance_filter,
    fold,
)
from memstream.scope import ENTITY_FIELDS

DIM = 8
ORG, PROJECT = "org-1", "proj-1"

# --------------------------------------------------------------------------------------
# The engines under test
# --------------------------------------------------------------------------------------


def make_row(i: int, **fields: Any) -> dict[str, Any]:
    """A `memories` row with defaults; `metadata` may be given as a dict."""
    row: dict[str, Any] = {
        "id": f"m{i}",
        "org_id": ORG,
        "project_id": PROJECT,
        "user_id": None,
        "agent_id": None,
        "app_id": None,
        "run_id": None,
        "text": f"memory {i}",
        "hash": f"h{i}",
        "metadata": {},
        "categories": [],
        "created_at": 1_700_000_000_000 + i,
        "updated_at": 1_700_000_000_000 + i,
        "expiration_date": None,
        "immutable": False,
        "partition": 0,
        "created_offset": i,
        "last_offset": i,
    }
    row.update(fields)
    if not isinstance(row["metadata"], str):
        row["metadata"] = json.dumps(row["metadata"])
    return row


class Engines:
    """One LanceDB table and one DuckDB relation holding the same memories."""

    def __init__(self, root: Path) -> None:
        self.db = lancedb.connect(str(root))
        self.duck = duckdb.connect()
        self.rows: list[dict[str, Any]] = []
        self.vectors = np.zeros((0, DIM), dtype=np.float32)

    def load(self, rows: Sequence[dict[str, Any]], seed: int = 0) -> None:
        self.rows = [dict(r) for r in rows]
        rng = np.random.default_rng(seed)
        self.vectors = rng.standard_normal((len(rows), DIM)).astype(np.float32)
        data = [{**r, "vector": v.tolist()} for r, v in zip(self.rows, self.vectors, strict=True)]
        arrow = pa.Table.from_pylist(data, schema=memories_schema(DIM))
        self.table = self.db.create_table("memories", arrow, mode="overwrite")
        self.duck.register("memories", arrow)

    def reference(self, compiled: CompiledFilter) -> set[str]:
        return {r["id"] for r in self.rows if compiled.matches(r)}

    def lance_scan(self, predicate: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            self.table.search().where(predicate).limit(None).to_arrow().to_pylist()
        )
        return rows

    def lance_search(self, predicate: str, limit: int, query: np.ndarray) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            self.table.search(query.tolist())
            .where(predicate, prefilter=True)
            .select(["id"])
            .limit(limit)
            .to_arrow()
            .to_pylist()
        )
        return rows

    def duckdb_ids(self, compiled: CompiledFilter) -> set[str]:
        sql, params = compiled.duckdb
        return {
            r[0]
            for r in self.duck.execute(f"SELECT id FROM memories WHERE {sql}", params).fetchall()
        }

    def check(
        self, compiled: CompiledFilter, *, top_k: int | None = None, seed: int = 0
    ) -> set[str]:
        """Every engine and access path returns the reference set; returns it."""
        expected = self.reference(compiled)
        n = len(self.rows)
        pre = compiled.lance_prefilter
        assert pre.startswith(f"org_id = '{ORG}' AND project_id = '{PROJECT}'")
        if compiled.lance_exact:
            assert compiled.lance == pre
        else:
            with pytest.raises(InexactLanceFilter):
                _ = compiled.lance

        scanned = self.lance_scan(pre)
        scanned_ids = {r["id"] for r in scanned}
        if compiled.lance_exact:
            assert scanned_ids == expected, pre
            assert self.table.count_rows(pre) == len(expected)
        else:  # a superset, made exact by the reference evaluator
            assert expected <= scanned_ids, pre
            assert {r["id"] for r in scanned if compiled.matches(r)} == expected
        exact = exact_lance_filter(self.table, compiled)
        assert {r["id"] for r in self.lance_scan(exact)} == expected

        query = np.random.default_rng(seed + 1).standard_normal(DIM).astype(np.float32)
        searched = {r["id"] for r in self.lance_search(pre, n + 1, query)}
        if compiled.lance_exact:
            assert searched == expected, pre
        else:
            assert expected <= searched
        assert {r["id"] for r in self.lance_search(exact, n + 1, query)} == expected

        assert self.duckdb_ids(compiled) == expected, compiled.duckdb

        if top_k is not None and expected:
            self.check_top_k(exact, expected, top_k, query)
        return expected

    def check_top_k(self, exact: str, expected: set[str], k: int, query: np.ndarray) -> None:
        """A prefiltered search with a small top_k returns the k nearest matching memories."""
        got = (
            self.table.search(query.tolist())
            .where(exact, prefilter=True)
            .select(["id"])
            .limit(k)
            .to_arrow()
            .to_pylist()
        )
        index = {r["id"]: i for i, r in enumerate(self.rows)}
        assert {r["id"] for r in got} <= expected
        want = sorted(float(np.sum((self.vectors[index[i]] - query) ** 2)) for i in expected)[:k]
        dists = sorted(float(r["_distance"]) for r in got)
        assert len(dists) == len(want)
        assert np.allclose(dists, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    yield Engines(tmp_path_factory.mktemp("lance"))


def compile_(filters: Mapping[str, Any] | None, **kw: Any) -> CompiledFilter:
    return compile_filters(filters, org_id=ORG, project_id=PROJECT, **kw)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

HOSTILE = [
    "it's",
    "''",
    "back\\slash",
    "\\",
    "ends\\",
    "x\\'y",
    "100%",
    "%",
    "_",
    "a_b",
    "a%b",
    "' OR 1=1 --",
    "'); DROP TABLE memories; --",
    '"dq"',
    "Ünï",
    "ΑΣ",
    "İz",
    "日本",
    "🙂",
]
ID_POOL = ["a", "b", "ab", "A", *HOSTILE]
COMMON_IDS = ["a", "b", "it's"]
entity_ids = st.one_of(
    st.none(), st.none(), st.none(), st.sampled_from(COMMON_IDS), st.sampled_from(ID_POOL)
)

TEXT_ALPHABET = "aAbB σΣςİiıÜü'\"\\%_\n\x00-;"
PHRASES = [
    "Paid the invoice",
    "INVOICE from Finance",
    "ΑΣ and σ, ς",
    "İstanbul trip",
    "istanbul again",
    "Über straße",
    "50% off a_b",
]
texts = st.one_of(
    st.sampled_from(PHRASES),
    st.sampled_from(HOSTILE),
    st.text(alphabet=TEXT_ALPHABET, max_size=10),
    st.text(st.characters(codec="utf-8"), max_size=6),
)
CATEGORY_POOL = [
    "finance",
    "Finance",
    "health",
    "travel",
    "a_b",
    "100%",
    "it's",
    "ΑΣ",
    "back\\slash",
]
METADATA_KEYS = ["type", "n", "flag", "it's", "a/b~c", "ü"]
metadata_values = st.one_of(
    st.sampled_from(["semantic", "episodic", "Semantic"]),
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.integers(-(2**63), 2**64),
    st.floats(-10, 10, allow_nan=False).map(lambda f: round(f, 2)),
    st.sampled_from(["semantic", "episodic", "Semantic", "", "5", "true", *HOSTILE[:8]]),
    st.lists(st.integers(0, 3), max_size=2),
    st.fixed_dictionaries({"x": st.integers(0, 3)}),
)

T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
# Interesting instants: day boundaries (the last and first ms), noon, a few days apart.
TIME_POINTS = [T0 + d * DAY + off for d in range(4) for off in (-1, 0, 1, DAY // 2)]
DATE_POOL = ["2024-01-01", "2024-01-02", "2024-01-03", "2023-12-31", "0999-01-01"]

common_ids = st.one_of(st.sampled_from(COMMON_IDS), st.sampled_from(COMMON_IDS), entity_ids)
# Realistic scopes (user only, user + agent, ...) so filters often select part of a table,
# plus fully random ones.
entity_shapes = st.one_of(
    st.builds(lambda u: {"user_id": u}, common_ids),
    st.builds(lambda u, a: {"user_id": u, "agent_id": a}, common_ids, common_ids),
    st.builds(lambda a: {"agent_id": a}, common_ids),
    st.builds(lambda u, r: {"user_id": u, "run_id": r}, common_ids, common_ids),
    st.fixed_dictionaries({f: entity_ids for f in ENTITY_FIELDS}),
)

memories = st.lists(
    st.fixed_dictionaries(
        {
            "tenant": st.sampled_from([(ORG, PROJECT)] * 4 + [(ORG, "proj-2"), ("org-2", PROJECT)]),
            "entities": entity_shapes,
            "text": texts,
            "categories": st.lists(st.sampled_from(CATEGORY_POOL), max_size=3),
            "metadata": st.one_of(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["semantic", "episodic", "Semantic"])},
                    optional={"n": st.integers(-3, 3), "flag": st.booleans()},
                ),
                st.dictionaries(
                    st.sampled_from(["type", "n", *METADATA_KEYS]), metadata_values, max_size=4
                ),
            ),
            "created_at": st.one_of(
                st.sampled_from(TIME_POINTS), st.integers(T0 - DAY, T0 + 4 * DAY)
            ),
            "updated_at": st.sampled_from(TIME_POINTS),
            "expiration_date": st.one_of(st.none(), st.sampled_from(DATE_POOL)),
        }
    ),
    min_size=4,
    max_size=30,
)


def rows_of(drawn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, m in enumerate(drawn):
        org, project = m.pop("tenant")
        rows.append(make_row(i, org_id=org, project_id=project, **m.pop("entities"), **m))
    return rows


def iso(ms: int, style: int) -> str:
    when = datetime.fromtimestamp(ms / 1000, UTC)
    if style == 0:
        return when.date().isoformat()
    if style == 1:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if style == 2:  # the same instant in another zone
        zone = timezone(timedelta(hours=-8)) if ms % 2 else timezone(timedelta(hours=5, minutes=30))
        return when.astimezone(zone).isoformat()
    if style == 3:
        return (when + timedelta(microseconds=500)).isoformat()  # sub-millisecond instant
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds")  # naive = UTC


date_values = st.builds(iso, st.sampled_from(TIME_POINTS), st.integers(0, 4))
expiration_values = st.one_of(
    st.sampled_from(DATE_POOL), st.builds(iso, st.sampled_from(TIME_POINTS), st.integers(0, 4))
)


def entity_leaf() -> st.SearchStrategy[dict[str, Any]]:
    value = st.one_of(st.sampled_from(COMMON_IDS), st.sampled_from(ID_POOL), st.just("*"))
    value_or_null = st.one_of(value, st.none())
    lists = st.lists(value_or_null, min_size=1, max_size=3)
    spec = st.one_of(
        value,
        value,
        st.none(),
        lists,
        st.fixed_dictionaries({"eq": value_or_null}),
        st.fixed_dictionaries({"ne": value_or_null}),
        st.fixed_dictionaries({"in": lists}),
        st.fixed_dictionaries({"nin": lists}),
    )
    return st.builds(lambda f, s: {f: s}, st.sampled_from(ENTITY_FIELDS), spec)


def ops(
    allowed: Sequence[str], values: st.SearchStrategy[Any], list_ops: Sequence[str] = ("in", "nin")
) -> st.SearchStrategy[dict[str, Any]]:
    def one(op: str) -> st.SearchStrategy[tuple[str, Any]]:
        operand = st.lists(values, min_size=1, max_size=3) if op in list_ops else values
        return st.tuples(st.just(op), operand)

    return st.lists(st.sampled_from(allowed).flatmap(one), min_size=1, max_size=2).map(dict)


time_leaf = st.builds(
    lambda f, s: {f: s},
    st.sampled_from(["created_at", "updated_at", "timestamp"]),
    st.one_of(date_values, ops(["gt", "gte", "lt", "lte", "ne", "in"], date_values)),
)
expiration_leaf = st.builds(
    lambda s: {"expiration_date": s},
    st.one_of(expiration_values, ops(["gt", "gte", "lt", "lte", "ne", "in"], expiration_values)),
)
needles = st.one_of(
    st.sampled_from(
        ["fin", "FIN", "invoice", "a_b", "%", "_", "'", "\\", "σ", "Σ", "ς", "i", "İ", "ü", "it's"]
    ),
    st.text(alphabet="aAbBσΣςİiÜü'\\%_", min_size=1, max_size=3),
)
category_leaf = st.builds(
    lambda s: {"categories": s},
    st.one_of(
        st.lists(st.sampled_from(CATEGORY_POOL), min_size=1, max_size=3),
        ops(["in", "nin"], st.sampled_from(CATEGORY_POOL)),
        st.fixed_dictionaries({"contains": needles}),
    ),
)
keyword_leaf = st.builds(
    lambda k, s: {k: s},
    st.sampled_from(["keywords", "keywords", "text"]),
    st.one_of(
        needles, ops(["contains", "icontains"], st.one_of(needles, st.sampled_from(HOSTILE)))
    ),
)
meta_scalars = st.one_of(
    st.sampled_from(["semantic", "episodic"]),
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-10, 10, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["semantic", "episodic", "Semantic", "5", "true", "", "it's", "100%"]),
)
meta_ordered = st.one_of(
    st.integers(-5, 5), st.floats(-10, 10, allow_nan=False), st.sampled_from(["e", "s", "5"])
)
meta_spec = st.one_of(
    meta_scalars,
    ops(["eq", "ne", "in", "nin"], meta_scalars),
    ops(["gt", "gte", "lt", "lte"], meta_ordered),
    ops(["contains", "icontains"], st.sampled_from(["sem", "SEM", "'", "%", "_", "epi", "5"])),
)
metadata_leaf = st.builds(
    lambda d: {"metadata": d},
    st.dictionaries(
        st.sampled_from(["type", "n", *METADATA_KEYS]), meta_spec, min_size=1, max_size=2
    ),
)
id_leaf = st.builds(
    lambda k, s: {k: s},
    st.sampled_from(["memory_ids", "id"]),
    st.one_of(
        st.lists(
            st.sampled_from([f"m{i}" for i in range(30)] + ["it's", "%"]), min_size=1, max_size=4
        ),
        ops(["in", "nin"], st.sampled_from([f"m{i}" for i in range(30)])),
    ),
)

leaves = st.one_of(
    entity_leaf(),
    entity_leaf(),
    entity_leaf(),
    time_leaf,
    expiration_leaf,
    category_leaf,
    keyword_leaf,
    metadata_leaf,
    id_leaf,
)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            out.setdefault(k, v)
    return out


filters = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda cs: {"AND": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: {"OR": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"NOT": c}, children),
        st.lists(children, min_size=2, max_size=3).map(merge),  # implicit AND
    ),
    max_leaves=8,
)

# Implicit null scoping makes a bare non-entity leaf match only memories without any
# entity id; so most generated filters are ANDed with a scope that names entity ids.
ANY_ENTITY = {"OR": [{e: "*"} for e in ENTITY_FIELDS]}
scopes = st.one_of(
    st.just(ANY_ENTITY),
    st.just(ANY_ENTITY),
    st.builds(lambda u: {"user_id": u}, st.sampled_from([*COMMON_IDS, "*"])),
    st.builds(
        lambda u, a: {"OR": [{"user_id": u}, {"agent_id": a}]},
        st.sampled_from(COMMON_IDS),
        st.sampled_from([*COMMON_IDS, "*"]),
    ),
)
scoped_filters = st.one_of(
    filters,
    st.builds(lambda s, f: {"AND": [s, f]}, scopes, filters),
    st.builds(lambda s, f: {"AND": [s, f]}, scopes, filters),
    st.builds(lambda s, f: merge([f, s]), scopes, filters),
)


def named_in_json(value: Any) -> set[str]:
    """Entity keys anywhere in a raw filters object (independent of the parser)."""
    if isinstance(value, dict):
        found = {k for k in value if k in ENTITY_FIELDS}
        for k, v in value.items():
            if k in ("AND", "OR", "NOT"):
                found |= named_in_json(v)
        return found
    if isinstance(value, list):
        return set().union(*(named_in_json(v) for v in value)) if value else set()
    return set()


# --------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------


@settings(
    # MEMSTREAM_FILTER_EXAMPLES=2000 for a soak run; the default keeps the suite fast.
    max_examples=int(os.environ.get("MEMSTREAM_FILTER_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    drawn=memories,
    filter_list=st.lists(scoped_filters, min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 5),
)
def test_lance_and_duckdb_agree_with_the_reference(
    engines: Engines,
    drawn: list[dict[str, Any]],
    filter_list: list[dict[str, Any]],
    seed: int,
    top_k: int,
) -> None:
    rows = rows_of(drawn)
    engines.load(rows, seed)
    for f in filter_list:
        compiled = compile_(f, require_entity=False)
        expected = engines.check(compiled, top_k=top_k, seed=seed)
        event(
            f"matches: {'none' if not expected else 'all' if len(expected) == len(rows) else 'some'}"
        )
        event(f"lance exact: {compiled.lance_exact}")

        # Implicit null scoping, judged from the raw JSON: an entity id that the filters
        # never name is null in every match; tenancy always holds.
        named = named_in_json(f)
        assert compiled.named_entities == named
        for row in rows:
            if row["id"] in expected:
                assert (row["org_id"], row["project_id"]) == (ORG, PROJECT)
                assert all(row[e] is None for e in ENTITY_FIELDS if e not in named)

        # Positive scoping: when require_entity accepts the filter, every match carries
        # an entity id; when it refuses, the refusal is the documented one.
        try:
            compile_(f, require_entity=True)
        except Exception as exc:
            assert (
                str(exc) == "filters: at least one of user_id, agent_id, app_id, run_id is required"
            )
        else:
            for row in rows:
                if row["id"] in expected:
                    assert any(row[e] is not None for e in ENTITY_FIELDS)


# --------------------------------------------------------------------------------------
# The seed's examples, by name
# --------------------------------------------------------------------------------------


@pytest.fixture
def seeded(engines: Engines) -> Engines:
    rows = [
        make_row(0, user_id="alice", categories=["finance"], created_at=T0 + DAY),
        make_row(1, user_id="alice", agent_id="travel-bot", categories=["travel"]),
        make_row(2, user_id="alice", run_id="r1", created_at=T0 + 2 * DAY),
        make_row(3, user_id="alice", run_id="r2"),
        make_row(4, user_id="alice", run_id="r3"),
        make_row(5, user_id="bob", categories=["finance"], created_at=T0 + DAY),
        make_row(6, agent_id="travel-bot"),
        make_row(7, user_id="alice", agent_id="support-bot", categories=["finance"]),
        make_row(8, user_id="alice", app_id="app-1"),
        make_row(9, user_id="alice", project_id="proj-2"),  # another project, never visible
        make_row(10, user_id="alice", categories=["Finance", "health"], created_at=T0 + 40 * DAY),
        make_row(11, user_id="alice", categories=["finance"], created_at=T0 - 1),
    ]
    engines.load(rows)
    return engines


def ids(*numbers: int) -> set[str]:
    return {f"m{n}" for n in numbers}


def test_only_user(seeded: Engines) -> None:
    # Implicit null scoping: alice's agent-, run- and app-scoped memories are excluded.
    assert seeded.check(compile_({"user_id": "alice"}), top_k=2) == ids(0, 10, 11)


def test_user_and_wildcard_agent(seeded: Engines) -> None:
    got = seeded.check(compile_({"user_id": "alice", "agent_id": "*"}), top_k=1)
    assert got == ids(1, 7)


def test_explicit_run_list(seeded: Engines) -> None:
    got = seeded.check(compile_({"AND": [{"user_id": "alice"}, {"run_id": ["r1", "r3"]}]}))
    assert got == ids(2, 4)
    assert seeded.check(compile_({"user_id": "alice", "run_id": {"in": ["r1", "r3"]}})) == ids(2, 4)


def test_entity_categories_and_created_at_range(seeded: Engines) -> None:
    f = {
        "AND": [
            {"user_id": "alice"},
            {"categories": {"in": ["finance"]}},
            {"created_at": {"gte": "2024-01-01T00:00:00Z"}},
            {"created_at": {"lt": "2024-02-01T00:00:00Z"}},
        ]
    }
    assert seeded.check(compile_(f), top_k=1) == ids(0)
    # `contains` is a case-insensitive substring of any category.
    f2 = {"user_id": "alice", "categories": {"contains": "FIN"}}
    assert seeded.check(compile_(f2)) == ids(0, 10, 11)


def test_platform_examples(seeded: Engines) -> None:
    assert seeded.check(
        compile_({"OR": [{"user_id": "alice"}, {"agent_id": "travel-bot"}]})
    ) == ids(0, 1, 6, 7, 10, 11)
    f = {"AND": [{"user_id": "alice"}, {"NOT": {"categories": {"in": ["finance", "travel"]}}}]}
    assert seeded.check(compile_(f)) == ids(10)
    f = {"AND": [{"agent_id": "*"}, {"agent_id": {"ne": "support-bot"}}, {"user_id": "alice"}]}
    assert seeded.check(compile_(f)) == ids(1)


def test_null_scoping_under_or_and_not(seeded: Engines) -> None:
    # Naming agent_id in one OR branch lifts its null constraint for the whole filter ...
    f: dict[str, Any] = {"OR": [{"user_id": "bob"}, {"agent_id": "travel-bot"}]}
    assert seeded.check(compile_(f)) == ids(1, 5, 6)
    # ... unless the branch pins it to null itself.
    f = {"OR": [{"user_id": "bob", "agent_id": None}, {"agent_id": "travel-bot"}]}
    assert seeded.check(compile_(f)) == ids(1, 5, 6)
    f = {
        "OR": [{"user_id": "alice", "agent_id": None}, {"agent_id": "travel-bot", "user_id": None}]
    }
    assert seeded.check(compile_(f)) == ids(0, 6, 10, 11)
    # A field named only inside NOT counts as named: agent_id may be anything but travel-bot.
    f = {"user_id": "alice", "NOT": {"agent_id": "travel-bot"}}
    assert seeded.check(compile_(f)) == ids(0, 7, 10, 11)


# --------------------------------------------------------------------------------------
# Hostile literals match only themselves
# --------------------------------------------------------------------------------------


def test_hostile_strings_match_only_themselves(engines: Engines) -> None:
    rows = [
        make_row(
            i,
            user_id=s,
            text=f"say {s} now",
            categories=[s],
            metadata={"k": s},
        )
        for i, s in enumerate(HOSTILE)
    ]
    rows.append(make_row(len(HOSTILE), user_id="plain", text="plain text", categories=["plain"]))
    engines.load(rows)
    for i, s in enumerate(HOSTILE):
        me = {f"m{i}"}
        assert engines.check(compile_({"user_id": s})) == me, s
        assert engines.check(compile_({"user_id": [s, "nobody"]})) == me, s
        assert engines.check(compile_({"agent_id": {"in": [s]}, "user_id": "*"})) == set()
        assert engines.check(compile_({"user_id": "*", "categories": {"in": [s]}})) == me, s
        f = {"user_id": "*", "keywords": {"contains": f" {s} "}}
        assert engines.check(compile_(f)) == me, s
        f = {"user_id": "*", "metadata": {"k": s}}
        assert engines.check(compile_(f)) == me, s
        # Substring needles are literal: '%' and '_' are not wildcards, '\\' escapes nothing.
        f = {"user_id": "*", "keywords": {"contains": s}}
        assert engines.check(compile_(f)) == {r["id"] for r in rows if s in r["text"]}, s
        f = {"user_id": "*", "categories": {"contains": s}}
        want = {r["id"] for r in rows if any(fold(s) in fold(c) for c in r["categories"])}
        assert engines.check(compile_(f)) == want, s
    # The classic injections are inert: they match nothing and widen nothing.
    for s in ["' OR '1'='1", "x') OR (1=1", "%", "_", "\\'"]:
        assert engines.check(compile_({"user_id": s + "!"})) == set()
    assert engines.check(compile_({"user_id": "*", "keywords": {"contains": "%"}})) == {
        f"m{HOSTILE.index(s)}" for s in HOSTILE if "%" in s
    }
