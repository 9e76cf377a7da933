"""`python_fold` (query/timetravel.py) is FOLD_SQL in plain Python: on any events table, the
same state rows as DuckDB's fold, or None (and then DuckDB folds).

Hypothesis draws events tables directly -- every outcome, interleaved memories, texts,
metadata and categories set or null (an empty list too), payloads with immutable,
set_expiration_date, expiration_date and timestamp present, absent or JSON null, backdated
updates, expiries, erased rows -- and both folds run on the same Arrow table in a real
DuckDB. The end-to-end as-of model (test_asof_model.py) runs through python_fold too.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.projector.tables import EVENTS_SCHEMA
from memstream.query.timetravel import (
    EVENT_COLUMNS,
    FOLD_SQL,
    STATE_SCHEMA,
    duck,
    python_fold,
)

OUTCOMES = ("ADD", "UPDATE", "DELETE", "ERASE", "EXPIRE", "NONE", "NOOP", "FEEDBACK")
MISSING = object()


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), st.none(), strategy)


@st.composite
def events(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 14))
    rows = []
    for offset in range(n):
        fields = {
            "immutable": draw(_maybe(st.booleans())),
            "set_expiration_date": draw(_maybe(st.booleans())),
            "expiration_date": draw(_maybe(st.sampled_from(["2026-01-01", "2027-06-30"]))),
            "timestamp": draw(_maybe(st.integers(1_000, 9_000))),
        }
        payload = {k: v for k, v in fields.items() if v is not MISSING}
        if draw(st.booleans()) and not payload:
            payload = {"erased": True}
        rows.append({
            "partition": 0,
            "offset": offset,
            "occurred_at": draw(st.integers(1_000, 9_000)),
            "org_id": "o",
            "project_id": "p",
            "memory_id": draw(st.sampled_from(["m1", "m2", "m3", None])),
            "user_id": draw(st.sampled_from(["u1", "u2", None])),
            "agent_id": draw(st.sampled_from(["a1", None])),
            "app_id": None,
            "run_id": draw(st.sampled_from(["r1", None])),
            "text": draw(st.sampled_from(["tea", "coffee", None])),
            "metadata": draw(st.sampled_from(['{"k": 1}', "{}", None])),
            "categories": draw(st.sampled_from([["food"], [], ["a", "b"], None])),
            "outcome": draw(st.sampled_from(OUTCOMES)),
            "payload": json.dumps(payload),
        })  # fmt: skip
    schema = pa.schema([EVENTS_SCHEMA.field(c) for c in EVENT_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


def duckdb_fold(table: pa.Table) -> list[dict[str, Any]]:
    with duck() as con:
        con.register("cut_events", table)
        state = con.sql(FOLD_SQL + "SELECT * FROM state").to_arrow_table()
    assert state.schema.equals(STATE_SCHEMA)
    return sorted(state.to_pylist(), key=lambda r: r["id"])


@settings(max_examples=400, deadline=None)
@given(table=events())
def test_python_fold_is_the_sql_fold(table: pa.Table) -> None:
    ours = python_fold(table)
    assert ours is not None  # every value drawn is one it reads
    assert sorted(ours, key=lambda r: r["id"]) == duckdb_fold(table)
    assert pa.Table.from_pylist(ours, schema=STATE_SCHEMA).num_rows == len(ours)


def test_a_value_it_does_not_claim_to_read_is_left_to_duckdb() -> None:
    schema = pa.schema([EVENTS_SCHEMA.field(c) for c in EVENT_COLUMNS])
    base = {
        "partition": 0, "offset": 0, "occurred_at": 5, "org_id": "o", "project_id": "p",
        "memory_id": "m1", "user_id": "u1", "agent_id": None, "app_id": None, "run_id": None,
        "text": "tea", "metadata": "{}", "categories": [], "outcome": "ADD",
    }  # fmt: skip
    for payload in ('{"immutable": "yes"}', '{"immutable": 1}', "[1]", "not json",
                    '{"expiration_date": 20260101}'):  # fmt: skip
        table = pa.Table.from_pylist([{**base, "payload": payload}], schema=schema)
        assert python_fold(table) is None, payload
    backdated = [
        {**base, "payload": "{}"},
        {**base, "offset": 1, "outcome": "UPDATE", "text": None, "payload": '{"timestamp": 1.5}'},
    ]
    assert python_fold(pa.Table.from_pylist(backdated, schema=schema)) is None
