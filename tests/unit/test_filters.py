"""The filter language: errors, semantics decisions, injection safety, index-friendly shapes.

The random cross-engine proof lives in test_filters_property.py; these are the named cases.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from memstream.errors import FilterError, ValidationError
from memstream.projector.tables import memories_schema
from memstream.query.dialects import LANCE_IN_MAX
from memstream.query.filters import (
    ALLOWED_KEYS,
    CompiledFilter,
    InexactLanceFilter,
    compile_filters,
    exact_lance_filter,
    fold,
    parse_filters,
    sql_fold,
)
from memstream.scope import ENTITY_FIELDS, normalise_id

ORG, PROJECT = "org-1", "proj-1"
T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000


def compile_(filters: Any, **kw: Any) -> CompiledFilter:
    return compile_filters(filters, org_id=ORG, project_id=PROJECT, **kw)


def row(i: int = 0, **fields: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": f"m{i}",
        "org_id": ORG,
        "project_id": PROJECT,
        "user_id": "u",
        "agent_id": None,
        "app_id": None,
        "run_id": None,
        "text": "",
        "hash": f"h{i}",
        "metadata": {},
        "categories": [],
        "created_at": T0,
        "updated_at": T0,
        "expiration_date": None,
        "immutable": False,
        "partition": 0,
        "created_offset": i,
        "last_offset": i,
    }
    r.update(fields)
    if not isinstance(r["metadata"], str):
        r["metadata"] = json.dumps(r["metadata"])
    return r


# --------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------


def test_compiled_filter_shape() -> None:
    c = compile_({"user_id": "alice"})
    assert c.lance == (
        "org_id = 'org-1' AND project_id = 'proj-1' AND user_id = 'alice' "
        "AND agent_id IS NULL AND app_id IS NULL AND run_id IS NULL"
    )
    assert c.duckdb == (
        "org_id = ? AND project_id = ? AND user_id = ? "
        "AND agent_id IS NULL AND app_id IS NULL AND run_id IS NULL",
        ["org-1", "proj-1", "alice"],
    )
    assert c.named_entities == frozenset({"user_id"})
    assert c.lance_exact
    assert c.matches(row(user_id="alice"))
    assert not c.matches(row(user_id="alice", agent_id="bot"))
    assert not c.matches(row(user_id="alice", project_id="other"))
    with pytest.raises(AttributeError):
        c.lance_prefilter = "TRUE"  # type: ignore[misc]


@pytest.mark.parametrize(
    "filters",
    [
        {"user_id": "a"},
        {"OR": [{"user_id": "a"}, {"agent_id": "b"}]},
        {"user_id": {"nin": ["*", None]}},  # matches nothing: still tenancy first
        {"user_id": "a", "metadata": {"k": "v"}},
        {"NOT": {"user_id": None}},
    ],
)
def test_lance_predicate_always_starts_with_tenancy(filters: dict[str, Any]) -> None:
    c = compile_(filters)
    assert c.lance_prefilter.startswith("org_id = 'org-1' AND project_id = 'proj-1'")
    assert c.duckdb[0].startswith("org_id = ? AND project_id = ?")
    assert c.duckdb[1][:2] == ["org-1", "proj-1"]


def test_tenancy_values_are_escaped_too() -> None:
    c = compile_filters({"user_id": "a"}, org_id="o'rg", project_id="p\\")
    assert c.lance.startswith("org_id = 'o''rg' AND project_id = 'p\\'")
    with pytest.raises(ValidationError):
        compile_filters({"user_id": "a"}, org_id="", project_id="p")


def test_metadata_makes_lance_a_superset_and_duckdb_exact() -> None:
    c = compile_({"user_id": "a", "metadata": {"type": "semantic"}})
    assert not c.lance_exact
    # LanceDB cannot read the JSON string column: the prefilter is a superset, and the
    # exact predicate is refused rather than silently widened (think delete_all).
    assert c.lance_prefilter == compile_({"user_id": "a"}).lance
    with pytest.raises(InexactLanceFilter, match="exact_lance_filter"):
        _ = c.lance
    assert "json_extract_string(metadata, ?)" in c.duckdb[0]
    negated = compile_({"user_id": "a", "NOT": {"metadata": {"type": "semantic"}}})
    assert negated.lance_prefilter == c.lance_prefilter  # TRUE in either polarity


def test_parse_gives_a_typed_ast() -> None:
    node, named = parse_filters({"user_id": "a", "NOT": {"agent_id": {"in": ["x", None]}}})
    assert repr(node) == (
        "And(children=(EntityMatch(field='user_id', ids=('a',), wildcard=False, null=False), "
        "Not(child=EntityMatch(field='agent_id', ids=('x',), wildcard=False, null=True))))"
    )
    assert named == {"user_id", "agent_id"}


# --------------------------------------------------------------------------------------
# Errors: one FilterError type, the exact path, a clear problem
# --------------------------------------------------------------------------------------

ERRORS: list[tuple[Any, str]] = [
    ([], "filters: must be an object, got list"),
    ({"user_id": 5}, "filters.user_id: must be a string, got number"),
    ({"user_id": True}, "filters.user_id: must be a string, got boolean"),
    ({"user_id": ""}, "filters.user_id: must not be empty (omit it instead)"),
    ({"user_id": " a"}, "filters.user_id: must not start or end with whitespace"),
    ({"user_id": "a\nb"}, "filters.user_id: must not contain control characters"),
    ({"user_id": "\ud800"}, "filters.user_id: not valid Unicode (lone surrogate)"),
    ({"user_id": {"in": []}}, "filters.user_id.in: must be a non-empty list"),
    ({"user_id": {"in": "a"}}, "filters.user_id.in: must be a list, got string"),
    ({"user_id": {"in": ["a", 3]}}, "filters.user_id.in[1]: must be a string, got number"),
    ({"user_id": ["a", ""]}, "filters.user_id[1]: must not be empty (omit it instead)"),
    ({"user_id": {"eq": ["a"]}}, "filters.user_id.eq: must be a string, got list"),
    (
        {"user_id": {"foo": "a"}},
        "filters.user_id.foo: unknown operator 'foo'; allowed: eq, ne, in, nin",
    ),
    ({"user_id": {}}, "filters.user_id: empty operator object; allowed operators: eq, ne, in, nin"),
    (
        {"user_id": {"!=": "a"}},
        "filters.user_id[\"!=\"]: unknown operator '!='; allowed: eq, ne, in, nin "
        "(write 'ne'; SQL and Mongo symbols are not operators here)",
    ),
    ({"AND": []}, "filters.AND: must be a non-empty list"),
    ({"OR": []}, "filters.OR: must be a non-empty list"),
    ({"OR": {"user_id": "a"}}, "filters.OR: must be a list, got object"),
    ({"AND": [{"user_id": "a"}, 3]}, "filters.AND[1]: must be an object, got number"),
    ({"AND": [{"user_id": "a"}, {}]}, "filters.AND[1]: must not be an empty object"),
    ({"NOT": {}}, "filters.NOT: must not be an empty object"),
    (
        {"NOT": [{"user_id": "a"}]},
        'filters.NOT: must be an object; for several conditions write {"NOT": {"AND": [...]}} '
        'or {"NOT": {"OR": [...]}}',
    ),
    (
        {"AND": [{"user_id": "u"}, {"created_at": {"gte": "nope"}}]},
        "filters.AND[1].created_at.gte: not a date "
        "(use ISO-8601, e.g. 2024-01-31 or 2024-01-31T09:30:00Z)",
    ),
    (
        {"user_id": "u", "created_at": {"foo": 1}},
        "filters.created_at.foo: unknown operator 'foo'; allowed: gt, gte, lt, lte, ne, in",
    ),
    (
        {"user_id": "u", "created_at": {">=": "2024-01-01"}},
        "filters.created_at[\">=\"]: unknown operator '>='; allowed: gt, gte, lt, lte, ne, in "
        "(write 'gte'; SQL and Mongo symbols are not operators here)",
    ),
    (
        {"user_id": "u", "created_at": {"$gte": "2024-01-01"}},
        "filters.created_at[\"$gte\"]: unknown operator '$gte'; allowed: gt, gte, lt, lte, ne, in "
        "(write 'gte'; SQL and Mongo symbols are not operators here)",
    ),
    (
        {"user_id": "u", "created_at": {"eq": "2024-01-01"}},
        "filters.created_at.eq: explicit 'eq' is not supported on created_at (as on the Mem0 "
        'Platform); use a bare value, e.g. {"created_at": "2024-01-31"}',
    ),
    (
        {"user_id": "u", "created_at": 1704067200},
        "filters.created_at: not a date (use ISO-8601, e.g. 2024-01-31 or 2024-01-31T09:30:00Z)",
    ),
    (
        {"user_id": "u", "timestamp": {"in": ["2024-01-01", "2024-02-30"]}},
        "filters.timestamp.in[1]: not a date (use ISO-8601, e.g. 2024-01-31 or 2024-01-31T09:30:00Z)",
    ),
    (
        {"user_id": "u", "updated_at": ["2024-01-01"]},
        'filters.updated_at: a list is ambiguous here; use {"in": [...]}',
    ),
    (
        {"user_id": "u", "expiration_date": {"lt": "2024-13-01"}},
        "filters.expiration_date.lt: not a date (use ISO-8601, e.g. 2024-01-31 or 2024-01-31T09:30:00Z)",
    ),
    (
        {"user_id": "u", "categories": {"eq": "x"}},
        "filters.categories.eq: 'eq' is not supported on categories (as on the Mem0 Platform); "
        "use in, nin or contains",
    ),
    (
        {"user_id": "u", "categories": {"ne": "x"}},
        "filters.categories.ne: 'ne' is not supported on categories (as on the Mem0 Platform); "
        "use in, nin or contains",
    ),
    (
        {"user_id": "u", "categories": "finance"},
        'filters.categories: must be a list or an operator object ({"in": [...]} or '
        '{"contains": "..."}), got string',
    ),
    (
        {"user_id": "u", "categories": {"contains": ""}},
        "filters.categories.contains: must not be empty",
    ),
    (
        {"user_id": "u", "categories": {"contains": "a\x1fb"}},
        "filters.categories.contains: must not contain control characters",
    ),
    (
        {"user_id": "u", "categories": {"in": [1]}},
        "filters.categories.in[0]: must be a string, got number",
    ),
    ({"user_id": "u", "metadata": {}}, "filters.metadata: must not be an empty object"),
    (
        {"user_id": "u", "metadata": "x"},
        'filters.metadata: must be an object such as {"key": "value"}, got string',
    ),
    (
        {"user_id": "u", "metadata": {"k": [1]}},
        'filters.metadata.k: a list is ambiguous here; use {"in": [...]}',
    ),
    (
        {"user_id": "u", "metadata": {"": 1}},
        'filters.metadata[""]: metadata keys must not be empty',
    ),
    (
        {"user_id": "u", "metadata": {"k": {"gt": True}}},
        "filters.metadata.k.gt: must be a number or a string, got boolean",
    ),
    (
        {"user_id": "u", "metadata": {"k": {"lte": None}}},
        "filters.metadata.k.lte: must be a number or a string, got null",
    ),
    (
        {"user_id": "u", "metadata": {"k": {"in": []}}},
        "filters.metadata.k.in: must be a non-empty list",
    ),
    (
        {"user_id": "u", "metadata": {"k": {"in": [{"a": 1}]}}},
        "filters.metadata.k.in[0]: must be a string, number, boolean or null, got object",
    ),
    (
        {"user_id": "u", "metadata": {"k": {"contains": 5}}},
        "filters.metadata.k.contains: must be a string, got number",
    ),
    (
        {"user_id": "u", "metadata": {"k": float("nan")}},
        "filters.metadata.k: must be a finite number",
    ),
    ({"user_id": "u", "metadata": {"k": 10**400}}, "filters.metadata.k: number out of range"),
    (
        {"user_id": "u", "metadata": {"k": {"regex": "x"}}},
        "filters.metadata.k.regex: unknown operator 'regex'; allowed: eq, ne, in, nin, contains, "
        "icontains, gt, gte, lt, lte",
    ),
    (
        {"user_id": "u", "metadata": {"a key": {"gte": "x", "ge": 1}}},
        "filters.metadata[\"a key\"].ge: unknown operator 'ge'; allowed: eq, ne, in, nin, contains, "
        "icontains, gt, gte, lt, lte",
    ),
    (
        {"user_id": "u", "keywords": 5},
        "filters.keywords: must be a string or an operator object, got number",
    ),
    ({"user_id": "u", "keywords": ""}, "filters.keywords: must not be empty"),
    (
        {"user_id": "u", "keywords": {"contains": ""}},
        "filters.keywords.contains: must not be empty",
    ),
    (
        {"user_id": "u", "keywords": {"like": "%a%"}},
        "filters.keywords.like: unknown operator 'like'; allowed: contains, icontains",
    ),
    ({"user_id": "u", "memory_ids": []}, "filters.memory_ids: must be a non-empty list"),
    ({"user_id": "u", "memory_ids": ["m1", ""]}, "filters.memory_ids[1]: must not be empty"),
    ({"user_id": "u", "id": 5}, "filters.id: must be a list of memory ids, got number"),
    (
        {"user_id": "u", "created_at": {"gte": "2024-01-01"}, "AND": [{"OR": []}]},
        "filters.AND[0].OR: must be a non-empty list",
    ),
]


@pytest.mark.parametrize(("filters", "message"), ERRORS, ids=[m.split(":")[0] for _, m in ERRORS])
def test_malformed_filters_name_the_offending_path(filters: Any, message: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_(filters)
    assert str(info.value) == message
    assert isinstance(info.value, ValidationError) and info.value.status_code == 400
    assert message == f"{info.value.path}: {info.value.problem}"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("org_id", "(the API key fixes org_id and project_id)"),
        ("project_id", "(the API key fixes org_id and project_id)"),
        ("and", "(logical operators are upper case: 'AND')"),
        ("session_id", ""),
        ("user", ""),
    ],
)
def test_unknown_keys_list_the_allowed_keys(key: str, hint: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_({"user_id": "u", "AND": [{key: "x"}]})
    assert info.value.path == f"filters.AND[0].{key}"
    assert info.value.problem == (
        f"unknown key '{key}'; a filter key must be a logical operator or an allowed field: "
        f"{', '.join(ALLOWED_KEYS)}" + (f" {hint}" if hint else "")
    )


def test_custom_root_path_and_depth_limit() -> None:
    with pytest.raises(FilterError, match=r"^body\.filters\.user_id: must be a string"):
        compile_filters({"user_id": 1}, org_id=ORG, project_id=PROJECT, path="body.filters")
    deep: dict[str, Any] = {"user_id": "u"}
    for _ in range(40):
        deep = {"NOT": deep}
    with pytest.raises(FilterError, match="nested deeper than 32 levels"):
        compile_(deep)


# --------------------------------------------------------------------------------------
# require_entity: what counts as positively scoped
# --------------------------------------------------------------------------------------

POSITIVE: list[tuple[dict[str, Any], bool]] = [
    ({"user_id": "a"}, True),
    ({"user_id": "*"}, True),
    ({"user_id": {"eq": "*"}}, True),
    ({"user_id": ["a", "b"]}, True),
    ({"run_id": {"in": ["r1", "*"]}}, True),
    ({"user_id": ["a", None]}, False),
    ({"user_id": None}, False),
    ({"user_id": {"ne": "a"}}, False),
    ({"user_id": {"ne": "*"}}, False),
    ({"user_id": {"nin": ["a"]}}, False),
    ({"NOT": {"user_id": None}}, True),
    ({"NOT": {"user_id": "a"}}, False),
    ({"OR": [{"user_id": "a"}, {"agent_id": "b"}]}, True),
    ({"OR": [{"user_id": "a"}, {"categories": {"in": ["x"]}}]}, False),
    ({"OR": [{"user_id": "a"}, {"agent_id": None}]}, False),
    ({"AND": [{"user_id": {"ne": "a"}}, {"agent_id": "b"}]}, True),
    ({"NOT": {"OR": [{"user_id": None}, {"agent_id": None}]}}, True),
    ({"NOT": {"AND": [{"user_id": None}, {"agent_id": None}]}}, True),
    ({"NOT": {"AND": [{"user_id": None}, {"categories": {"in": ["x"]}}]}}, False),
    ({"NOT": {"NOT": {"user_id": "a"}}}, True),
    ({"categories": {"in": ["x"]}, "created_at": {"gte": "2024-01-01"}}, False),
    ({"memory_ids": ["m1"]}, False),
]


@pytest.mark.parametrize(("filters", "positive"), POSITIVE)
def test_positive_scoping(filters: dict[str, Any], positive: bool) -> None:
    if positive:
        compile_(filters)
    else:
        with pytest.raises(FilterError) as info:
            compile_(filters)
        assert str(info.value) == (
            "filters: at least one of user_id, agent_id, app_id, run_id is required"
        )
    compile_(filters, require_entity=False)  # always a valid filter


@pytest.mark.parametrize("filters", [None, {}])
def test_no_filters(filters: dict[str, Any] | None) -> None:
    with pytest.raises(FilterError, match="^filters: at least one of"):
        compile_(filters)
    c = compile_(filters, require_entity=False)
    # Nothing named: every entity id must be null.
    assert c.lance.endswith(
        "user_id IS NULL AND agent_id IS NULL AND app_id IS NULL AND run_id IS NULL"
    )
    assert c.named_entities == frozenset()


def test_whole_project_is_an_or_of_wildcards() -> None:
    c = compile_({"OR": [{e: "*"} for e in ENTITY_FIELDS]})
    assert c.named_entities == frozenset(ENTITY_FIELDS)
    assert "IS NULL" not in c.lance
    assert c.matches(row(user_id=None, run_id="r"))


# --------------------------------------------------------------------------------------
# Implicit null scoping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "nulls"),
    [
        ({"user_id": "a"}, ["agent_id", "app_id", "run_id"]),
        ({"OR": [{"user_id": "a"}, {"agent_id": "b"}]}, ["app_id", "run_id"]),
        ({"user_id": "a", "NOT": {"run_id": "r"}}, ["agent_id", "app_id"]),
        (
            {"AND": [{"user_id": "a"}, {"OR": [{"NOT": {"app_id": {"nin": ["x"]}}}]}]},
            ["agent_id", "run_id"],
        ),
        ({"OR": [{"user_id": "a"}, {"agent_id": "*"}, {"app_id": "*"}, {"run_id": "*"}]}, []),
    ],
)
def test_unnamed_entities_get_top_level_is_null_conjuncts(
    filters: dict[str, Any], nulls: list[str]
) -> None:
    c = compile_(filters)
    conjuncts = c.lance.split(" AND ")
    for field in ENTITY_FIELDS:
        assert (f"{field} IS NULL" in conjuncts) == (field in nulls), field
    assert c.named_entities == frozenset(ENTITY_FIELDS) - set(nulls)


def test_an_entity_can_be_named_as_null_explicitly() -> None:
    c = compile_({"user_id": "a", "agent_id": None})
    assert c.named_entities == {"user_id", "agent_id"}
    assert c.lance == compile_({"user_id": "a"}).lance  # the same rows, said explicitly
    # ... which is how one OR branch keeps its own null scoping (see the next test).


def test_null_scoping_semantics_with_or_and_not() -> None:
    alice = row(user_id="alice")
    alice_bot = row(user_id="alice", agent_id="bot")
    bot = row(user_id=None, agent_id="bot")
    alice_run = row(user_id="alice", run_id="r1")
    either = compile_({"OR": [{"user_id": "alice"}, {"agent_id": "bot"}]})
    assert [either.matches(r) for r in (alice, alice_bot, bot, alice_run)] == [
        True,
        True,
        True,
        False,
    ]
    pinned = compile_(
        {"OR": [{"user_id": "alice", "agent_id": None}, {"agent_id": "bot", "user_id": None}]}
    )
    assert [pinned.matches(r) for r in (alice, alice_bot, bot, alice_run)] == [
        True,
        False,
        True,
        False,
    ]
    not_bot = compile_({"user_id": "alice", "NOT": {"agent_id": "bot"}})
    assert [not_bot.matches(r) for r in (alice, alice_bot, bot, alice_run)] == [
        True,
        False,
        False,
        False,
    ]


# --------------------------------------------------------------------------------------
# Semantics of times, dates, categories, keywords, metadata (reference and DuckDB)
# --------------------------------------------------------------------------------------


def duck_ids(rows: list[dict[str, Any]], c: CompiledFilter) -> set[str]:
    table = pa.Table.from_pylist(rows, schema=memories_schema(2).remove(18))
    con = duckdb.connect()
    con.register("memories", table)
    sql, params = c.duckdb
    return {r[0] for r in con.execute(f"SELECT id FROM memories WHERE {sql}", params).fetchall()}


def check(rows: list[dict[str, Any]], filters: dict[str, Any], expected: set[int]) -> None:
    c = compile_(filters)
    want = {f"m{i}" for i in expected}
    assert {r["id"] for r in rows if c.matches(r)} == want, filters
    assert duck_ids(rows, c) == want, filters


def test_dates_are_whole_utc_days_and_datetimes_are_instants() -> None:
    points = [T0 + DAY - 1, T0 + DAY, T0 + DAY + 1, T0 + 2 * DAY - 1, T0 + 2 * DAY]
    rows = [row(i, created_at=t, updated_at=t) for i, t in enumerate(points)]
    check(rows, {"user_id": "u", "created_at": "2024-01-02"}, {1, 2, 3})
    check(rows, {"user_id": "u", "timestamp": "2024-01-02"}, {1, 2, 3})
    check(rows, {"user_id": "u", "created_at": {"ne": "2024-01-02"}}, {0, 4})
    check(rows, {"user_id": "u", "created_at": {"gt": "2024-01-02"}}, {4})
    check(rows, {"user_id": "u", "created_at": {"gte": "2024-01-02"}}, {1, 2, 3, 4})
    check(rows, {"user_id": "u", "created_at": {"lt": "2024-01-02"}}, {0})
    check(rows, {"user_id": "u", "created_at": {"lte": "2024-01-02"}}, {0, 1, 2, 3})
    check(rows, {"user_id": "u", "updated_at": "2024-01-02T00:00:00Z"}, {1})
    check(rows, {"user_id": "u", "updated_at": "2024-01-02T00:00:00"}, {1})  # naive = UTC
    check(rows, {"user_id": "u", "updated_at": "2024-01-02T05:30:00.001+05:30"}, {2})
    check(rows, {"user_id": "u", "updated_at": {"gt": "2024-01-02T00:00:00.001Z"}}, {3, 4})
    # An instant between two milliseconds: matches no tick exactly, bounds round outward.
    check(rows, {"user_id": "u", "created_at": "2024-01-02T00:00:00.0005Z"}, set())
    check(rows, {"user_id": "u", "created_at": {"gte": "2024-01-02T00:00:00.0005Z"}}, {2, 3, 4})
    check(rows, {"user_id": "u", "created_at": {"lte": "2024-01-02T00:00:00.0005Z"}}, {0, 1})
    check(rows, {"user_id": "u", "created_at": {"in": ["2024-01-01", "2024-01-03"]}}, {0, 4})


def test_expiration_date_compares_calendar_dates() -> None:
    days = [None, "2024-01-01", "2024-01-02", "2024-01-03"]
    rows = [row(i, expiration_date=d) for i, d in enumerate(days)]
    check(rows, {"user_id": "u", "expiration_date": "2024-01-02"}, {2})
    check(rows, {"user_id": "u", "expiration_date": {"ne": "2024-01-02"}}, {0, 1, 3})  # null too
    check(rows, {"user_id": "u", "expiration_date": {"gte": "2024-01-02"}}, {2, 3})
    check(rows, {"user_id": "u", "expiration_date": {"lt": "2024-01-02"}}, {1})
    # A datetime is reduced to its UTC date: 03:00 at UTC+5 is 22:00 on the previous day.
    check(rows, {"user_id": "u", "expiration_date": {"lte": "2024-01-03T03:00:00+05:00"}}, {1, 2})
    check(rows, {"user_id": "u", "NOT": {"expiration_date": {"lte": "2024-01-02"}}}, {0, 3})


def test_categories_and_keywords() -> None:
    rows = [
        row(0, categories=["Finance", "travel"], text="Paid the INVOICE"),
        row(1, categories=["personal_finance"], text="invoice paid"),
        row(2, categories=[], text="ΑΣ is a word"),
        row(3, categories=["health"], text="İstanbul"),
    ]
    check(rows, {"user_id": "u", "categories": {"in": ["finance"]}}, set())  # exact
    check(rows, {"user_id": "u", "categories": ["Finance", "health"]}, {0, 3})
    check(rows, {"user_id": "u", "categories": {"nin": ["health"]}}, {0, 1, 2})
    check(rows, {"user_id": "u", "categories": {"contains": "FIN"}}, {0, 1})
    check(rows, {"user_id": "u", "categories": {"contains": "e,t"}}, set())  # no joining
    check(rows, {"user_id": "u", "keywords": "invoice"}, {0, 1})  # plain string = icontains
    check(rows, {"user_id": "u", "keywords": {"contains": "invoice"}}, {1})
    check(rows, {"user_id": "u", "text": {"icontains": "Invoice"}}, {0, 1})
    check(rows, {"user_id": "u", "keywords": {"icontains": "ας"}}, {2})  # final sigma folds
    check(rows, {"user_id": "u", "keywords": {"icontains": "σ"}}, {2})
    check(rows, {"user_id": "u", "keywords": {"icontains": "istanbul"}}, {3})  # İ folds to i


def test_metadata_semantics() -> None:
    values: list[Any] = [
        "semantic",
        "Semantic",
        5,
        5.0,
        "5",
        True,
        None,
        [1, 2],
        {"a": 1},
        2**63 + 5,
        -2.5,
        "",
    ]
    rows = [row(i, metadata={"k": v}) for i, v in enumerate(values)]
    rows.append(row(len(values), metadata={"other": 1}))  # no "k"
    absent = len(values)
    every = set(range(len(rows)))
    check(rows, {"user_id": "u", "metadata": {"k": "semantic"}}, {0})
    check(rows, {"user_id": "u", "metadata": {"k": 5}}, {2, 3})  # numerically
    check(rows, {"user_id": "u", "metadata": {"k": True}}, {5})  # True is not 1
    check(rows, {"user_id": "u", "metadata": {"k": None}}, {6, absent})  # null or missing
    check(rows, {"user_id": "u", "metadata": {"k": {"ne": None}}}, every - {6, absent})
    check(rows, {"user_id": "u", "metadata": {"k": {"ne": 5}}}, every - {2, 3})
    check(rows, {"user_id": "u", "metadata": {"k": {"in": ["5", 5, False]}}}, {2, 3, 4})
    check(rows, {"user_id": "u", "metadata": {"k": {"nin": ["semantic"]}}}, every - {0})
    check(rows, {"user_id": "u", "metadata": {"k": {"gt": 4}}}, {2, 3, 9})
    check(rows, {"user_id": "u", "metadata": {"k": {"gte": 2**63}}}, {9})
    check(rows, {"user_id": "u", "metadata": {"k": {"lt": 0}}}, {10})
    check(rows, {"user_id": "u", "metadata": {"k": {"gte": "S", "lt": "t"}}}, {0, 1})  # code points
    check(rows, {"user_id": "u", "metadata": {"k": {"lte": "5"}}}, {4, 11})
    check(rows, {"user_id": "u", "metadata": {"k": {"contains": "man"}}}, {0, 1})
    check(rows, {"user_id": "u", "metadata": {"k": {"contains": "Sem"}}}, {1})
    check(rows, {"user_id": "u", "metadata": {"k": {"icontains": "SEM"}}}, {0, 1})
    check(rows, {"user_id": "u", "metadata": {"k": {"contains": "1"}}}, set())  # strings only
    check(rows, {"user_id": "u", "metadata": {"other": 1, "k": None}}, {absent})


def test_metadata_keys_are_literal() -> None:
    keys = ["a/b", "a~b", "it's", "$.x", "a.b", "ü", "[0]"]
    rows = [row(i, metadata={k: "v"}) for i, k in enumerate(keys)]
    for i, k in enumerate(keys):
        check(rows, {"user_id": "u", "metadata": {k: "v"}}, {i})


def test_memory_ids() -> None:
    rows = [row(i) for i in range(4)]
    check(rows, {"user_id": "u", "memory_ids": ["m1", "m3", "nope"]}, {1, 3})
    check(rows, {"user_id": "u", "id": "m2"}, {2})
    check(rows, {"user_id": "u", "id": {"nin": ["m2"]}}, {0, 1, 3})


# --------------------------------------------------------------------------------------
# User text never becomes predicate syntax
# --------------------------------------------------------------------------------------

_LITERAL = re.compile(r"'(?:[^']|'')*'")


def skeleton(lance: str) -> str:
    return _LITERAL.sub("<lit>", lance)


def valid_id(s: str) -> bool:
    try:
        return normalise_id("user_id", s) is not None
    except ValidationError:
        return False


safe_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(hostile=safe_text)
def test_hostile_values_only_ever_appear_as_literals(hostile: str) -> None:
    # the shapes pair the value with "x" (the compiler rightly folds ["x", "x"] into one
    # literal) and use it as a metadata key beside "k" (a dict cannot hold "k" twice)
    assume(hostile not in ("x", "k"))
    as_id = valid_id(hostile)
    as_category = not any(ord(c) < 32 for c in hostile)

    def shapes(v: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"user_id": "u", "keywords": {"contains": v}},
            {"user_id": "u", "keywords": v},
            {"user_id": "u", "categories": {"in": [v, "x"]}},
            {"user_id": "u", "memory_ids": [v]},
            {"user_id": "u", "metadata": {v: v, "k": {"contains": v}}},
        ]
        if as_id:
            out.append({"user_id": v, "agent_id": {"in": [v, "x"]}, "run_id": {"ne": v}})
        if as_category:
            out.append({"user_id": "u", "categories": {"contains": v}})
        return out

    for hostile_f, benign_f in zip(shapes(hostile), shapes("b"), strict=True):
        c, benign = compile_(hostile_f), compile_(benign_f)
        assert skeleton(c.lance_prefilter) == skeleton(benign.lance_prefilter)
        assert c.duckdb[0] == benign.duckdb[0]  # every value is a bound parameter
        # and the literal decodes back to exactly the value
        if c.lance_exact:
            literals = [m.group(0)[1:-1].replace("''", "'") for m in _LITERAL.finditer(c.lance)]
            assert hostile in literals or fold(hostile) in literals
        assert hostile in c.duckdb[1] or fold(hostile) in c.duckdb[1]


# --------------------------------------------------------------------------------------
# Case folding agrees across engines on every code point
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fold_agrees_with_lance_and_duckdb_on_every_code_point(tmp_path: Path) -> None:
    strings = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    strings += ["ΑΣ", "ΑΣ Β", "Σ", "ΣΑ", "aΣ.", "İstanbul", "ǅ", "ﬁ", "ẞ", "ΑΣ\x1fΒ"]
    table = pa.table({"i": pa.array(range(len(strings)), pa.int64()), "s": strings})
    want = [fold(s) for s in strings]

    lance_table = lancedb.connect(str(tmp_path)).create_table("cp", table)
    got = (
        lance_table.search()
        .select({"i": "i", "f": sql_fold("s")})
        .limit(None)
        .to_arrow()
        .sort_by("i")["f"]
        .to_pylist()
    )
    assert [s for s, g, w in zip(strings, got, want, strict=True) if g != w] == []

    con = duckdb.connect()
    con.register("cp", table)
    got = [r[0] for r in con.execute(f"SELECT {sql_fold('s')} FROM cp ORDER BY i").fetchall()]
    assert [s for s, g, w in zip(strings, got, want, strict=True) if g != w] == []


# --------------------------------------------------------------------------------------
# Compiled predicates keep the shapes Lance answers from scalar indexes
# --------------------------------------------------------------------------------------


def test_scoped_filters_use_the_scalar_indexes(tmp_path: Path) -> None:
    from lancedb.index import BTree

    rng = np.random.default_rng(0)
    rows = [
        {
            **row(
                i,
                user_id=f"u{i % 7}",
                agent_id=None if i % 3 else "bot",
                run_id=None if i % 2 else "r",
            ),
            "vector": rng.standard_normal(4).astype(np.float32).tolist(),
        }
        for i in range(300)
    ]
    table = lancedb.connect(str(tmp_path)).create_table(
        "m", pa.Table.from_pylist(rows, schema=memories_schema(4))
    )
    for column in ("org_id", "project_id", *ENTITY_FIELDS):
        table.create_index(column, config=BTree())
    cases = [
        {"user_id": "u1"},
        {"user_id": "u1", "agent_id": "*"},
        {"user_id": ["u1", "u2"], "run_id": {"in": ["r"]}},
        {"OR": [{"user_id": "u1"}, {"agent_id": "bot"}]},
        {"user_id": "u1", "NOT": {"run_id": "r"}},
        {"user_id": "u1", "created_at": {"gte": "2024-01-01"}, "categories": {"in": ["x"]}},
    ]
    for filters in cases:
        c = compile_(filters)
        plan = table.search([0.0] * 4).where(c.lance, prefilter=True).limit(5).explain_plan(True)
        index_query = next(line for line in plan.splitlines() if "ScalarIndexQuery" in line)
        for column in ("org_id", "project_id", *(c.named_entities or ENTITY_FIELDS)):
            assert f"@{column}_idx" in index_query, (filters, plan)
        for column in set(ENTITY_FIELDS) - c.named_entities:
            assert f"[{column} IS NULL]@{column}_idx" in index_query, (filters, plan)


# --------------------------------------------------------------------------------------
# Long id lists (issue 13): a superset in Lance, decided exactly by the matcher
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: {"user_id": {"in": ids}},
        lambda ids: {"user_id": ids},
        lambda ids: {"AND": [{"user_id": "*"}, {"user_id": {"nin": ids}}]},
        lambda ids: {"AND": [{"user_id": "*"}, {"memory_ids": ids}]},
        lambda ids: {"AND": [{"user_id": "*"}, {"memory_ids": {"nin": ids}}]},
        lambda ids: {"OR": [{"user_id": {"in": ids}}, {"agent_id": "a"}]},
    ],
    ids=["in", "list", "nin", "memory_ids", "memory_ids-nin", "in-or-agent"],
)
def test_long_id_lists_are_exact_through_the_matcher(tmp_path: Path, make: Any) -> None:
    users = [f"u{i:05d}" for i in range(LANCE_IN_MAX * 3)]
    rows = [row(i, user_id=users[i * 7 % len(users)]) for i in range(40)]
    rows += [row(100, user_id=None, agent_id="a"), row(101, user_id="zz-outside")]
    table = lancedb.connect(str(tmp_path)).create_table(
        "m", pa.Table.from_pylist([{**r, "vector": [0.0, 1.0]} for r in rows],
                                  schema=memories_schema(2))
    )  # fmt: skip
    from lancedb.index import BTree

    for column in ("id", *ENTITY_FIELDS):
        table.create_index(column, config=BTree())
    picked = users[::2] + ["m3", "m5", "m8"]  # also some memory ids, for memory_ids
    for ids in (picked[:5], picked):  # short: exact in Lance; long: a superset there
        c = compile_(make(ids))
        assert c.lance_exact == (len(ids) <= LANCE_IN_MAX)
        want = {r["id"] for r in rows if c.matches(r)}
        got = table.search().where(c.lance_prefilter).select(["id"]).limit(None).to_arrow()
        lance_ids = set(got["id"].to_pylist())
        assert want <= lance_ids  # a superset: nothing that matches is ever left out
        if c.lance_exact:
            assert lance_ids == want
        assert exact_ids(table, c) == want
        assert duck_ids(rows, c) == want  # DuckDB stays exact with any list length
    assert want  # the long case selects something


def exact_ids(table: Any, c: CompiledFilter) -> set[str]:
    pred = exact_lance_filter(table, c)
    return set(table.search().where(pred).select(["id"]).limit(None).to_arrow()["id"].to_pylist())
