"""The dialect compilers: a filter tree as a LanceDB (DataFusion) or DuckDB predicate.

Both dialects compile the negation normal form of the tree into a small SQL IR (`_Leaf`,
`_Bool`, `_Const`, with user values kept apart as `_Param`), rendered at the end: for Lance
every `_Param` becomes a quoted string literal, for DuckDB a bound `?` parameter. See
`query/filters.py` for why, and for the public `compile_filters` that uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from memstream.query.filtertree import (
    _FOLD_PREFIX,
    _FOLD_SUFFIX,
    And,
    CategoriesAny,
    CategoryContains,
    DateCompare,
    EntityMatch,
    IdMatch,
    MetaCompare,
    Node,
    Not,
    Or,
    Tenant,
    TextContains,
    TimeRange,
    sql_fold,
)

# --------------------------------------------------------------------------------------
# SQL compilation (negation normal form, two dialects)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    value: Any


_Part: TypeAlias = str | _Param


@dataclass(frozen=True, slots=True)
class _Leaf:
    parts: tuple[_Part, ...]


@dataclass(frozen=True, slots=True)
class _Bool:
    op: Literal["AND", "OR"]
    items: tuple[_Sql, ...]


@dataclass(frozen=True, slots=True)
class _Const:
    value: bool


_Sql: TypeAlias = _Leaf | _Bool | _Const
_TRUE = _Const(True)
_FALSE = _Const(False)


def _leaf(*parts: _Part) -> _Leaf:
    return _Leaf(parts)


def _all(items: Iterable[_Sql]) -> _Sql:
    flat: list[_Sql] = []
    for item in items:
        if item == _FALSE:
            return _FALSE
        if item == _TRUE:
            continue
        flat.extend(item.items if isinstance(item, _Bool) and item.op == "AND" else (item,))
    if not flat:
        return _TRUE
    return flat[0] if len(flat) == 1 else _Bool("AND", tuple(flat))


def _any(items: Iterable[_Sql]) -> _Sql:
    flat: list[_Sql] = []
    for item in items:
        if item == _TRUE:
            return _TRUE
        if item == _FALSE:
            continue
        flat.extend(item.items if isinstance(item, _Bool) and item.op == "OR" else (item,))
    if not flat:
        return _FALSE
    return flat[0] if len(flat) == 1 else _Bool("OR", tuple(flat))


def _in_list(column: str, values: Sequence[str], negated: bool) -> _Leaf:
    if len(values) == 1:
        return _leaf(f"{column} {'<>' if negated else '='} ", _Param(values[0]))
    parts: list[_Part] = [f"{column} {'NOT IN' if negated else 'IN'} ("]
    for i, v in enumerate(values):
        parts.extend(([", "] if i else []) + [_Param(v)])
    parts.append(")")
    return _Leaf(tuple(parts))


_FLIP: dict[str, str] = {"eq": "<>", "gt": "<=", "gte": "<", "lt": ">=", "lte": ">"}
_CMP: dict[str, str] = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class _Dialect:
    """Leaf rendering shared by both dialects; subclasses differ where the engines do."""

    name = ""

    def compile(self, node: Node, negated: bool = False) -> _Sql:
        match node:
            case Not(child):
                return self.compile(child, not negated)
            case And(children):
                parts = (self.compile(c, negated) for c in children)
                return _any(parts) if negated else _all(parts)
            case Or(children):
                parts = (self.compile(c, negated) for c in children)
                return _all(parts) if negated else _any(parts)
            case Tenant(org, project):
                if negated:  # never produced by the compiler; kept total for safety
                    raise AssertionError("tenancy is never negated")
                return _all(
                    [_leaf("org_id = ", _Param(org)), _leaf("project_id = ", _Param(project))]
                )
            case EntityMatch():
                return self.entity(node, negated)
            case IdMatch(ids):
                return self.id_list("id", ids, negated)
            case TimeRange(column, lo, hi):
                if negated:
                    return _any(
                        [
                            _leaf(f"{column} < {lo}") if lo is not None else _FALSE,
                            _leaf(f"{column} >= {hi}") if hi is not None else _FALSE,
                        ]
                    )
                return _all(
                    [
                        _leaf(f"{column} >= {lo}") if lo is not None else _TRUE,
                        _leaf(f"{column} < {hi}") if hi is not None else _TRUE,
                    ]
                )
            case DateCompare(column, op, value):
                if negated:
                    return _any(
                        [_leaf(f"{column} IS NULL"), _leaf(f"{column} {_FLIP[op]} ", _Param(value))]
                    )
                return _leaf(f"{column} {_CMP[op]} ", _Param(value))
            case CategoriesAny() | CategoryContains() | TextContains():
                return self.null_safe(self.content(node), negated)
            case MetaCompare():
                return self.metadata(node, negated)
        raise AssertionError(f"unknown node {node!r}")

    def id_list(self, column: str, values: Sequence[str], negated: bool) -> _Sql:
        """`column [NOT] IN (values)`."""
        return _in_list(column, values, negated)

    def entity(self, node: EntityMatch, negated: bool) -> _Sql:
        col = node.field
        if not negated:
            return _any(
                [
                    _leaf(f"{col} IS NOT NULL") if node.wildcard else _FALSE,
                    self.id_list(col, node.ids, False) if node.ids else _FALSE,
                    _leaf(f"{col} IS NULL") if node.null else _FALSE,
                ]
            )
        if node.wildcard:
            return _FALSE if node.null else _leaf(f"{col} IS NULL")
        not_in = self.id_list(col, node.ids, True) if node.ids else _TRUE
        if node.null:
            return _all([_leaf(f"{col} IS NOT NULL"), not_in])
        return _any([_leaf(f"{col} IS NULL"), not_in])

    @staticmethod
    def null_safe(positive: _Sql, negated: bool) -> _Sql:
        """The leaf, or `NOT coalesce(leaf, FALSE)`: a NULL never reaches a NOT.

        Un-negated leaves stay bare: the compiled formula is monotone (NNF), so a NULL
        there acts exactly like FALSE, as the reference evaluator's False does.
        """
        if isinstance(positive, _Const):
            return _Const(positive.value != negated)
        if not negated:
            return positive
        return _Leaf(("NOT coalesce(", *_parts(positive), ", FALSE)"))

    def content(self, node: CategoriesAny | CategoryContains | TextContains) -> _Sql:
        match node:
            case CategoriesAny(values):
                return self.categories_any(values)
            case CategoryContains(needle):
                joined = sql_fold("array_to_string(categories, chr(31))")
                return _leaf(f"strpos({joined}, ", _Param(needle), ") > 0")
            case TextContains(needle, sensitive):
                text = "text" if sensitive else sql_fold("text")
                return _leaf(f"strpos({text}, ", _Param(needle), ") > 0")
        raise AssertionError(node)

    def categories_any(self, values: Sequence[str]) -> _Sql:
        raise NotImplementedError

    def metadata(self, node: MetaCompare, negated: bool) -> _Sql:
        raise NotImplementedError


LANCE_IN_MAX = 256
"""Longest `IN` list put into a Lance predicate. DataFusion's cost grows faster than the
list (raw Lance, 20 rows: 1k values 6 ms, 16k values 177 ms; through memstream's predicate
16k took 1.3-1.9 s), so a longer list becomes its range (a superset) in Lance and is decided
exactly, in linear time, by the reference matcher (set membership): see `has_long_list`."""


def has_long_list(node: Node) -> bool:
    """True when the tree holds an id list the Lance dialect renders as a superset."""
    match node:
        case EntityMatch(_, ids) | IdMatch(ids):
            return len(ids) > LANCE_IN_MAX
        case Not(child):
            return has_long_list(child)
        case And(children) | Or(children):
            return any(has_long_list(c) for c in children)
    return False


class _LanceDialect(_Dialect):
    name = "lance"

    def id_list(self, column: str, values: Sequence[str], negated: bool) -> _Sql:
        if len(values) <= LANCE_IN_MAX:
            return _in_list(column, values, negated)
        if negated:  # NOT IN a long list: keep every row here, the matcher decides
            return _TRUE
        return _all(
            [
                _leaf(f"{column} >= ", _Param(min(values))),
                _leaf(f"{column} <= ", _Param(max(values))),
            ]
        )

    def categories_any(self, values: Sequence[str]) -> _Sql:
        parts: list[_Part] = ["array_has_any(categories, make_array("]
        for i, v in enumerate(values):
            parts.extend(([", "] if i else []) + [_Param(v)])
        parts.append("))")
        return _Leaf(tuple(parts))

    def metadata(self, node: MetaCompare, negated: bool) -> _Sql:
        # Not expressible on a JSON string column in LanceDB 0.40: over-approximate with
        # TRUE in both polarities (the formula is monotone in NNF, so the result is a
        # superset) and let `matches` decide.
        return _TRUE


_DUCK_NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'HUGEINT', 'UHUGEINT', 'DOUBLE')"


class _DuckDialect(_Dialect):
    name = "duckdb"

    def categories_any(self, values: Sequence[str]) -> _Sql:
        parts: list[_Part] = ["list_has_any(categories, ["]
        for i, v in enumerate(values):
            parts.extend(([", "] if i else []) + [_Param(v)])
        parts.append("]::VARCHAR[])")
        return _Leaf(tuple(parts))

    def metadata(self, node: MetaCompare, negated: bool) -> _Sql:
        pointer = "/" + node.key.replace("~", "~0").replace("/", "~1")
        jtype: tuple[_Part, ...] = ("json_type(metadata, ", _Param(pointer), ")")
        jstr: tuple[_Part, ...] = ("json_extract_string(metadata, ", _Param(pointer), ")")
        jnum: tuple[_Part, ...] = (
            "TRY_CAST(json_extract(metadata, ",
            _Param(pointer),
            ") AS DOUBLE)",
        )
        value, op = node.value, node.op
        positive: _Sql
        if value is None:  # eq null: missing key or JSON null
            positive = _Leaf(("coalesce(", *jtype, ", 'NULL') = 'NULL'"))
        elif op in ("contains", "icontains"):
            haystack = jstr if op == "contains" else (_FOLD_PREFIX, *jstr, _FOLD_SUFFIX)
            positive = _all(
                [
                    _Leaf((*jtype, " = 'VARCHAR'")),
                    _Leaf(("strpos(", *haystack, ", ", _Param(value), ") > 0")),
                ]
            )
        elif isinstance(value, bool):
            positive = _all(
                [
                    _Leaf((*jtype, " = 'BOOLEAN'")),
                    _Leaf((*jstr, " = ", _Param("true" if value else "false"))),
                ]
            )
        elif isinstance(value, str):
            positive = _all(
                [_Leaf((*jtype, " = 'VARCHAR'")), _Leaf((*jstr, f" {_CMP[op]} ", _Param(value)))]
            )
        else:
            positive = _all(
                [
                    _Leaf((*jtype, f" IN {_DUCK_NUMBER_TYPES}")),
                    _Leaf((*jnum, f" {_CMP[op]} ", _Param(float(value)))),
                ]
            )
        return self.null_safe(positive, negated)


def _parts(sql: _Sql, top: bool = True) -> tuple[_Part, ...]:
    match sql:
        case _Const(value):
            return ("TRUE" if value else "FALSE",)
        case _Leaf(parts):
            return parts
        case _Bool(op, items):
            out: list[_Part] = [] if top else ["("]
            for i, item in enumerate(items):
                if i:
                    out.append(f" {op} ")
                out.extend(_parts(item, top=False))
            if not top:
                out.append(")")
            return tuple(out)
    raise AssertionError(sql)


def _rooted(tenant: _Sql, rest: _Sql) -> _Sql:
    """tenancy AND rest, with the tenancy conjuncts first and never folded away."""
    assert isinstance(tenant, _Bool)
    return _Bool("AND", (*tenant.items, *_conjuncts(rest)))


def _conjuncts(sql: _Sql) -> tuple[_Sql, ...]:
    if sql == _TRUE:
        return ()
    return sql.items if isinstance(sql, _Bool) and sql.op == "AND" else (sql,)


def _lance_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no Lance literal for {type(value).__name__}")  # pragma: no cover


def _render_lance(sql: _Sql) -> str:
    return "".join(p if isinstance(p, str) else _lance_literal(p.value) for p in _parts(sql))


def _render_duckdb(sql: _Sql) -> tuple[str, list[Any]]:
    text: list[str] = []
    params: list[Any] = []
    for p in _parts(sql):
        if isinstance(p, str):
            text.append(p)
        else:
            text.append("?")
            params.append(p.value)
    return "".join(text), params
