"""The memstream filter language: Mem0 Platform v2 filters with implicit null scoping.

A request's `filters` JSON is parsed once into a small typed AST (the dataclasses below),
then compiled three ways from that one AST:

- `CompiledFilter.lance`: a DataFusion SQL predicate for LanceDB (`where`, `count_rows`);
- `CompiledFilter.duckdb`: the same predicate for DuckDB, with `?` parameters;
- `CompiledFilter.matches`: the pure-Python reference evaluator (`query/matcher.py`).

User text never becomes predicate syntax: in the Lance dialect every user value is a
single-quoted SQL string literal with quotes doubled (DataFusion treats backslashes as
ordinary characters, and `%`/`_` are never special because no LIKE is emitted: substring
tests use `strpos`), numbers are rendered from Python ints; in the DuckDB dialect every
user value is a bound parameter.

Both SQL dialects compile the negation normal form of the filter: NOT is pushed down to the
leaves and each leaf has an explicit, null-safe complement (`user_id IS NULL OR user_id <>
'x'`), so SQL's three-valued logic can never make `NOT` drop a row the reference keeps,
and the entity conjuncts keep the simple `col = 'x'` / `col IN (...)` / `col IS NULL`
shapes that Lance answers from its scalar indexes.

Metadata lives in a JSON *string* column. LanceDB 0.40's JSON functions (`json_extract`,
`json_get_string`, ...) only accept Lance's binary JSONB type (`lance.json`), not strings,
and DataFusion has no JSON parser of its own, so the Lance predicate cannot test metadata.
For filters that mention metadata, `lance_exact` is False, `.lance_prefilter` is a
*superset* predicate (each metadata leaf, in either polarity, becomes TRUE) and `.lance`
raises InexactLanceFilter rather than widen a read or a delete_all: apply `matches` to the
rows of `.lance_prefilter`, or call `exact_lance_filter` to get an exact `id IN (...)`
predicate before a vector search with a top_k. DuckDB's JSON extension evaluates
metadata exactly.

The pieces live one module each: the tree and its parser in `query/filtertree.py`, the
dialect compilers in `query/dialects.py`, the exact matcher in `query/matcher.py`; this
module compiles with them and re-exports the names callers import from it.

See docs/filters.md for the language reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memstream.errors import FilterError, ValidationError
from memstream.query.dialects import (
    _DuckDialect,
    _in_list,
    _LanceDialect,
    _render_duckdb,
    _render_lance,
    _rooted,
    has_long_list,
)
from memstream.query.filtertree import (
    ALLOWED_KEYS,
    And,
    EntityMatch,
    IdMatch,
    Node,
    Tenant,
    _has_metadata,
    _positively_scoped,
    fold,
    parse_filters,
    sql_fold,
)
from memstream.query.matcher import evaluate
from memstream.scope import ENTITY_FIELDS, normalise_id

# The compiler's own names, then the tree's names callers import from here (the rest of
# the tree: memstream.query.filtertree).
__all__ = [
    "CompiledFilter",
    "InexactLanceFilter",
    "compile_filters",
    "exact_lance_filter",
    "ALLOWED_KEYS",
    "REFERENCE_COLUMNS",
    "And",
    "EntityMatch",
    "IdMatch",
    "Node",
    "Tenant",
    "fold",
    "parse_filters",
    "sql_fold",
]

# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


class InexactLanceFilter(RuntimeError):
    """`.lance` was read for a filter LanceDB cannot evaluate exactly (metadata conditions).

    A programming error, not a bad request: use `exact_lance_filter(table, compiled)`, or
    `compiled.lance_prefilter` and keep only the rows `compiled.matches`.
    """


@dataclass(frozen=True)
class CompiledFilter:
    """One filters object, compiled for LanceDB, DuckDB and the reference evaluator.

    `ast` is the whole predicate: Tenant, the user's filter, and an `EntityMatch(null=True)`
    for every entity field the filter does not name (implicit null scoping).

    `lance_prefilter` is a Lance predicate that every matching row satisfies. When
    `lance_exact` it is the filter itself and `.lance` returns it; otherwise (metadata
    conditions) it is a superset and `.lance` raises InexactLanceFilter, so that no caller
    can silently read, or delete, more than the filter selects.
    """

    lance_prefilter: str
    duckdb: tuple[str, list[Any]]
    named_entities: frozenset[str]
    lance_exact: bool
    ast: Node = field(repr=False)

    @property
    def lance(self) -> str:
        """The exact LanceDB/DataFusion predicate (tenancy first)."""
        if not self.lance_exact:
            raise InexactLanceFilter(
                "this filter has metadata conditions (or id lists longer than LANCE_IN_MAX), "
                "which LanceDB does not evaluate exactly: use exact_lance_filter(table, compiled), or "
                "compiled.lance_prefilter and keep the rows for which compiled.matches(row)"
            )
        return self.lance_prefilter

    def matches(self, row: Mapping[str, Any]) -> bool:
        """The reference evaluator: does this memory row (projection columns) match?"""
        return evaluate(self.ast, row)


def compile_filters(
    filters: Mapping[str, Any] | None,
    *,
    org_id: str,
    project_id: str,
    require_entity: bool = True,
    path: str = "filters",
) -> CompiledFilter:
    """Parse and compile a Mem0-style filters object for one tenant (org, project).

    Raises FilterError (HTTP 400) naming the offending path for any malformed filter, and
    when `require_entity` is set and no entity id is positively scoped.
    """
    org = normalise_id("org_id", org_id)
    project = normalise_id("project_id", project_id)
    if org is None or project is None:
        raise ValidationError("org_id and project_id are required")
    user, named = parse_filters(filters, path)
    if require_entity and not _positively_scoped(user):
        raise FilterError(path, f"at least one of {', '.join(ENTITY_FIELDS)} is required")
    nulls = tuple(EntityMatch(f, null=True) for f in ENTITY_FIELDS if f not in named)
    tenant = Tenant(org, project)
    ast = And((tenant, user, *nulls))
    lance, duck = _LanceDialect(), _DuckDialect()
    return CompiledFilter(
        lance_prefilter=_render_lance(
            _rooted(lance.compile(tenant), lance.compile(And((user, *nulls))))
        ),
        duckdb=_render_duckdb(_rooted(duck.compile(tenant), duck.compile(And((user, *nulls))))),
        named_entities=named,
        lance_exact=not _has_metadata(user) and not has_long_list(user),
        ast=ast,
    )


# Columns the reference evaluator reads.
REFERENCE_COLUMNS: tuple[str, ...] = (
    "id",
    "org_id",
    "project_id",
    *ENTITY_FIELDS,
    "text",
    "metadata",
    "categories",
    "created_at",
    "updated_at",
    "expiration_date",
)


def exact_lance_filter(table: Any, compiled: CompiledFilter) -> str:
    """An exact Lance predicate for `compiled`, for a vector search with a top_k.

    When `compiled.lance_exact`, that is `compiled.lance`. Otherwise this scans the rows of
    `compiled.lance_prefilter`, keeps those `matches` accepts, and returns the tenancy
    conjunct AND `id IN (...)` of them (`... AND FALSE` when none), so a prefiltered
    search returns exactly the top_k of the matching memories. `table` is a LanceDB table
    (pass the checked-out version for as-of reads).
    """
    if compiled.lance_exact:
        return compiled.lance
    rows = (
        table.search()
        .where(compiled.lance_prefilter)
        .select(list(REFERENCE_COLUMNS))
        .limit(None)
        .to_arrow()
        .to_pylist()
    )
    ids = [row["id"] for row in rows if compiled.matches(row)]
    tenant = compiled.ast.children[0] if isinstance(compiled.ast, And) else None
    assert isinstance(tenant, Tenant)
    head = _render_lance(_LanceDialect().compile(tenant))
    if not ids:
        return f"{head} AND FALSE"
    return f"{head} AND {_render_lance(_in_list('id', ids, False))}"
