"""The reference evaluator: the filter language's meaning, in plain Python.

This is the specification the SQL compilations in `query/dialects.py` are tested against
(tests/unit/test_filters_property.py runs random memories and random filters through
LanceDB, DuckDB and this module and requires the same answer). It evaluates the AST
directly (NOT stays NOT), so it is independent of the compiler's negation normal form.

A row is a mapping of `memories` projection columns: ids, `text`, `metadata` (the JSON
object text, or an already decoded mapping), `categories` (list of strings),
`created_at`/`updated_at` (int ms UTC) and `expiration_date` ('YYYY-MM-DD' or None).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from memstream.cancellation import check as check_cancelled
from memstream.query.filtertree import (
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
    fold,
)

__all__ = ["evaluate"]

_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def evaluate(node: Node, row: Mapping[str, Any]) -> bool:
    """True when the memory `row` satisfies `node`.

    Every read that filters rows here calls this once per row, so this is where a request
    whose client has gone stops (memstream.cancellation): a filter of thousands of nodes
    over thousands of rows is seconds of work."""
    check_cancelled()
    return _Row(row).eval(node)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_double(value: int | float) -> float:
    """JSON numbers compare as IEEE doubles (as in DuckDB); huge integers saturate."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


class _Row:
    __slots__ = ("row", "_metadata")

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self._metadata: Any = _MISSING

    @property
    def metadata(self) -> Mapping[str, Any]:
        if self._metadata is _MISSING:
            raw = self.row.get("metadata")
            decoded = json.loads(raw) if isinstance(raw, str | bytes) else raw
            self._metadata = decoded if isinstance(decoded, Mapping) else {}
        return self._metadata  # type: ignore[no-any-return]

    def eval(self, node: Node) -> bool:
        row = self.row
        match node:
            case And(children):
                return all(self.eval(c) for c in children)
            case Or(children):
                return any(self.eval(c) for c in children)
            case Not(child):
                return not self.eval(child)
            case Tenant(org, project):
                return row.get("org_id") == org and row.get("project_id") == project
            case EntityMatch(field, _, wildcard, null):
                value = row.get(field)
                if value is None:
                    return null
                return wildcard or value in node.members
            case IdMatch():
                return row.get("id") in node.members
            case TimeRange(field, lo, hi):
                ms = row.get(field)
                if ms is None:
                    return False
                return (lo is None or ms >= lo) and (hi is None or ms < hi)
            case DateCompare(field, op, value):
                day = row.get(field)
                return day is not None and _COMPARE[op](day, value)
            case CategoriesAny():
                return any(c in node.members for c in self.categories())
            case CategoryContains(needle):
                return any(needle in fold(c) for c in self.categories())
            case TextContains(needle, case_sensitive):
                text = row.get("text") or ""
                return needle in (text if case_sensitive else fold(text))
            case MetaCompare():
                return self.meta(node)
        raise TypeError(f"not a filter node: {node!r}")

    def categories(self) -> list[str]:
        return [c for c in self.row.get("categories") or () if c is not None]

    def meta(self, node: MetaCompare) -> bool:
        value = self.metadata.get(node.key, _MISSING)
        wanted = node.value
        if node.op == "contains":
            return isinstance(value, str) and isinstance(wanted, str) and wanted in value
        if node.op == "icontains":
            return isinstance(value, str) and isinstance(wanted, str) and wanted in fold(value)
        if wanted is None:  # eq null: the key is missing or JSON null
            return value is _MISSING or value is None
        compare = _COMPARE[node.op]
        if isinstance(wanted, bool):
            return isinstance(value, bool) and compare(value, wanted)
        if isinstance(wanted, str):
            return isinstance(value, str) and compare(value, wanted)
        return _is_number(value) and compare(_as_double(value), wanted)
