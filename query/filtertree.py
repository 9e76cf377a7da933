"""The filter tree: the memstream filter language's vocabulary, typed AST and parser.

A request's `filters` JSON (Mem0 Platform v2 filters) is parsed once, by `parse_filters`,
into the small typed AST below; malformed input raises FilterError naming the offending
path. The AST is what every engine consumes: the SQL dialects (`query/dialects.py`), the
exact matcher (`query/matcher.py`) and the public `compile_filters` (`query/filters.py`).
The case folding shared by every engine lives here too, next to the vocabulary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TypeAlias

from memstream.errors import FilterError, ValidationError
from memstream.scope import ENTITY_FIELDS, WILDCARD, normalise_id

__all__ = [
    "ALLOWED_KEYS",
    "And",
    "CategoriesAny",
    "CategoryContains",
    "DateCompare",
    "EntityMatch",
    "IdMatch",
    "MetaCompare",
    "Node",
    "Not",
    "Or",
    "Tenant",
    "TextContains",
    "TimeRange",
    "fold",
    "parse_filters",
    "sql_fold",
]

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

LOGICAL_KEYS = ("AND", "OR", "NOT")
TIME_FIELDS = {"created_at": "created_at", "updated_at": "updated_at", "timestamp": "created_at"}
DATE_FIELDS = ("expiration_date",)
TEXT_KEYS = ("keywords", "text", "keywords_search")  # `text`, `keywords_search`: Platform aliases
ID_KEYS = ("memory_ids", "id")

ALLOWED_KEYS: tuple[str, ...] = (
    *LOGICAL_KEYS,
    *ENTITY_FIELDS,
    "created_at",
    "updated_at",
    "timestamp",
    "expiration_date",
    "categories",
    "metadata",
    *TEXT_KEYS,
    *ID_KEYS,
)

ENTITY_OPS = ("eq", "ne", "in", "nin")
TIME_OPS = ("gt", "gte", "lt", "lte", "ne", "in")
CATEGORY_OPS = ("in", "nin", "contains")
TEXT_OPS = ("contains", "icontains")
ID_OPS = ("in", "nin")
META_OPS = ("eq", "ne", "in", "nin", "contains", "icontains", "gt", "gte", "lt", "lte")

_SQL_SYMBOLS = {
    ">": "gt",
    ">=": "gte",
    "<": "lt",
    "<=": "lte",
    "!=": "ne",
    "<>": "ne",
    "=": "eq",
    "==": "eq",
}

MAX_DEPTH = 32
_MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------------------
# Case folding, shared by every engine
# --------------------------------------------------------------------------------------
# Case-insensitive matching (categories.contains, keywords.icontains, metadata.icontains)
# compares fold(haystack) with fold(needle). Python's str.lower, Rust's (DataFusion's) lower
# and DuckDB's (utf8proc's) lower disagree on a few code points, so the fold first maps those
# with `translate`, identically in all three engines:
#   - U+0130 'İ': Python and Rust lower it to 'i' + U+0307, DuckDB to 'i'. We map it to 'i'.
#   - final sigma: Python and Rust lower a word-final 'Σ' to 'ς', DuckDB always to 'σ'.
#     After lowering we replace 'ς' by 'σ', so the context never matters.
#   - 55 letters that got case mappings in Unicode 15/16 (LanceDB's Rust uses 16.0, Python
#     3.11 and DuckDB do not know them): we apply Unicode 16's mapping explicitly.
# tests/unit/test_filters.py checks fold() against both engines on every code point.
_NEW_CASE_PAIRS: tuple[tuple[int, int], ...] = (
    (0x1C89, 0x1C8A),
    (0xA7CB, 0x0264),
    (0xA7CC, 0xA7CD),
    (0xA7CE, 0xA7CF),
    (0xA7D2, 0xA7D3),
    (0xA7D4, 0xA7D5),
    (0xA7DA, 0xA7DB),
    (0xA7DC, 0x019B),
    *((c, c + 0x20) for c in range(0x10D50, 0x10D66)),  # Garay
    *((c, c + 0x1B) for c in range(0x16EA0, 0x16EB9)),  # Beria Erfe
)
FOLD_FROM = "\u0130" + "".join(chr(a) for a, _ in _NEW_CASE_PAIRS)
FOLD_TO = "i" + "".join(chr(b) for _, b in _NEW_CASE_PAIRS)
_FOLD_TABLE = str.maketrans(FOLD_FROM, FOLD_TO)


def fold(text: str) -> str:
    """The case folding used by every case-insensitive operator, in every engine."""
    return text.translate(_FOLD_TABLE).lower().replace("\u03c2", "\u03c3")


def sql_fold(expr: str) -> str:
    """`fold` as a SQL expression; identical text for DataFusion and DuckDB."""
    return f"replace(lower(translate({expr}, '{FOLD_FROM}', '{FOLD_TO}')), '\u03c2', '\u03c3')"


_FOLD_PREFIX, _FOLD_SUFFIX = sql_fold("\x00").split("\x00")


# --------------------------------------------------------------------------------------
# The AST
# --------------------------------------------------------------------------------------
# Leaves are positive conditions; `ne`/`nin` parse to Not(eq)/Not(in). Every leaf is false
# on a missing (null) value, so "ne includes nulls" follows from Not.

MetaValue: TypeAlias = str | float | bool | None
CompareOp = Literal["eq", "gt", "gte", "lt", "lte"]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class Tenant:
    """org_id = ... AND project_id = ...; added by the compiler, never written by users."""

    org_id: str
    project_id: str


@dataclass(frozen=True, slots=True)
class EntityMatch:
    """The entity id is one of `ids`, or any non-null value (`wildcard`), or null (`null`)."""

    field: str
    ids: tuple[str, ...] = ()
    wildcard: bool = False
    null: bool = False
    # `ids` as a set, for constant-time membership in the exact matcher (not compared)
    members: frozenset[str] = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.ids))


@dataclass(frozen=True, slots=True)
class IdMatch:
    """The memory id is one of `ids`."""

    ids: tuple[str, ...]
    members: frozenset[str] = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.ids))


@dataclass(frozen=True, slots=True)
class TimeRange:
    """lo <= field < hi on an int64 ms column; a None bound is open."""

    field: str
    lo: int | None
    hi: int | None


@dataclass(frozen=True, slots=True)
class DateCompare:
    """field <op> value on a 'YYYY-MM-DD' string column; false when the column is null."""

    field: str
    op: CompareOp
    value: str


@dataclass(frozen=True, slots=True)
class CategoriesAny:
    """Some category is exactly one of `values`."""

    values: tuple[str, ...]
    members: frozenset[str] = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.values))


@dataclass(frozen=True, slots=True)
class CategoryContains:
    """fold(needle) is a substring of fold(some category). `needle` is stored folded."""

    needle: str


@dataclass(frozen=True, slots=True)
class TextContains:
    """needle is a substring of the memory text (folded on both sides unless case_sensitive)."""

    needle: str
    case_sensitive: bool


@dataclass(frozen=True, slots=True)
class MetaCompare:
    """Top-level metadata key `key` compared with `value`; see docs/filters.md for the types.

    eq: same JSON type and equal (numbers numerically; `None` = missing or JSON null).
    gt/gte/lt/lte: both numbers (as IEEE doubles) or both strings (code point order).
    contains/icontains: the value is a string containing `value` (folded for icontains).
    """

    key: str
    op: Literal["eq", "gt", "gte", "lt", "lte", "contains", "icontains"]
    value: MetaValue


Node: TypeAlias = (
    And
    | Or
    | Not
    | Tenant
    | EntityMatch
    | IdMatch
    | TimeRange
    | DateCompare
    | CategoriesAny
    | CategoryContains
    | TextContains
    | MetaCompare
)

# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(text: str) -> str:
    """A user string as it may appear in an error message (lone surrogates escaped)."""
    return text if _is_unicode(text) else text.encode("utf-8", "backslashreplace").decode()


def _key_path(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=not _is_unicode(key))}]"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _unknown_op(path: str, op: str, allowed: Sequence[str]) -> FilterError:
    problem = f"unknown operator '{_show(op)}'; allowed: {', '.join(allowed)}"
    hint = _SQL_SYMBOLS.get(op) or (op[1:] if op.startswith("$") and op[1:] in META_OPS else None)
    if hint is not None:
        problem += f" (write '{hint}'; SQL and Mongo symbols are not operators here)"
    return FilterError(_key_path(path, op), problem)


def _check_unicode(value: str, path: str) -> str:
    if not _is_unicode(value):
        raise FilterError(path, "not valid Unicode (lone surrogate)")
    return value


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FilterError(path, f"must be a string, got {_type_name(value)}")
    if not allow_empty and value == "":
        raise FilterError(path, "must not be empty")
    return _check_unicode(value, path)


def _nonempty_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise FilterError(path, f"must be a list, got {_type_name(value)}")
    if not value:
        raise FilterError(path, "must be a non-empty list")
    return list(value)


def _operator_object(value: Any, path: str, allowed: Sequence[str]) -> list[tuple[str, Any]]:
    if not value:
        raise FilterError(path, f"empty operator object; allowed operators: {', '.join(allowed)}")
    items: list[tuple[str, Any]] = []
    for op, operand in value.items():
        if op not in allowed:
            raise _unknown_op(path, str(op), allowed)
        items.append((op, operand))
    return items


def _and(children: Sequence[Node]) -> Node:
    return children[0] if len(children) == 1 else And(tuple(children))


def _or(children: Sequence[Node]) -> Node:
    return children[0] if len(children) == 1 else Or(tuple(children))


class _Parser:
    def __init__(self) -> None:
        self.named: set[str] = set()

    # --- structure -------------------------------------------------------------------

    def condition(self, value: Any, path: str, depth: int) -> Node:
        """A filter object: logical keys and fields, all siblings implicitly ANDed."""
        if depth > MAX_DEPTH:
            raise FilterError(path, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(value, Mapping):
            raise FilterError(path, f"must be an object, got {_type_name(value)}")
        if not value:
            raise FilterError(path, "must not be an empty object")
        children = [self.key(str(k), v, path, depth) for k, v in value.items()]
        return _and(children)

    def key(self, key: str, value: Any, path: str, depth: int) -> Node:
        kpath = _key_path(path, key)
        if key in ("AND", "OR"):
            items = _nonempty_list(value, kpath)
            nodes = [self.condition(v, f"{kpath}[{i}]", depth + 1) for i, v in enumerate(items)]
            return And(tuple(nodes)) if key == "AND" else Or(tuple(nodes))
        if key == "NOT":
            if isinstance(value, list | tuple):
                raise FilterError(
                    kpath,
                    "must be an object; for several conditions write "
                    '{"NOT": {"AND": [...]}} or {"NOT": {"OR": [...]}}',
                )
            return Not(self.condition(value, kpath, depth + 1))
        if key in ENTITY_FIELDS:
            self.named.add(key)
            return self.entity(key, value, kpath)
        if key in TIME_FIELDS:
            return self.time(TIME_FIELDS[key], key, value, kpath)
        if key in DATE_FIELDS:
            return self.expiration(key, value, kpath)
        if key == "categories":
            return self.categories(value, kpath)
        if key == "metadata":
            return self.metadata(value, kpath)
        if key in TEXT_KEYS:
            return self.keywords(value, kpath)
        if key in ID_KEYS:
            return self.memory_ids(value, kpath)
        problem = (
            f"unknown key '{_show(key)}'; a filter key must be a logical operator or an allowed "
            f"field: {', '.join(ALLOWED_KEYS)}"
        )
        if key in ("org_id", "project_id"):
            problem += " (the API key fixes org_id and project_id)"
        elif key.upper() in LOGICAL_KEYS:
            problem += f" (logical operators are upper case: '{key.upper()}')"
        raise FilterError(kpath, problem)

    # --- entity ids ------------------------------------------------------------------

    def entity_value(self, field: str, value: Any, path: str) -> str | None:
        if value is not None and not isinstance(value, str):
            raise FilterError(path, f"must be a string, got {_type_name(value)}")
        if isinstance(value, str):
            _check_unicode(value, path)
        try:
            return normalise_id(field, value, allow_wildcard=True)
        except ValidationError as exc:
            problem = exc.message.removeprefix(f"{field}: ")
            raise FilterError(path, problem) from None

    def entity_set(self, field: str, values: Iterable[tuple[Any, str]]) -> EntityMatch:
        ids: dict[str, None] = {}  # ordered and deduplicated in linear time
        wildcard = null = False
        for value, vpath in values:
            v = self.entity_value(field, value, vpath)
            if v is None:
                null = True
            elif v == WILDCARD:
                wildcard = True
            else:
                ids[v] = None
        return EntityMatch(field, () if wildcard else tuple(ids), wildcard, null)

    def entity(self, field: str, value: Any, path: str) -> Node:
        if value is None or isinstance(value, str):
            return self.entity_set(field, [(value, path)])
        if isinstance(value, list | tuple):
            items = _nonempty_list(value, path)
            return self.entity_set(field, [(v, f"{path}[{i}]") for i, v in enumerate(items)])
        if isinstance(value, Mapping):
            nodes: list[Node] = []
            for op, operand in _operator_object(value, path, ENTITY_OPS):
                opath = _key_path(path, op)
                if op in ("eq", "ne"):
                    if isinstance(operand, list | tuple | Mapping):
                        raise FilterError(opath, f"must be a string, got {_type_name(operand)}")
                    leaf = self.entity_set(field, [(operand, opath)])
                else:
                    items = _nonempty_list(operand, opath)
                    leaf = self.entity_set(
                        field, [(v, f"{opath}[{i}]") for i, v in enumerate(items)]
                    )
                nodes.append(Not(leaf) if op in ("ne", "nin") else leaf)
            return _and(nodes)
        raise FilterError(path, f"must be a string, got {_type_name(value)}")

    # --- times -----------------------------------------------------------------------

    @staticmethod
    def instant(value: Any, path: str) -> date | datetime:
        if isinstance(value, str):
            _check_unicode(value, path)
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
            try:
                dt = datetime.fromisoformat(value)
                return dt.astimezone(UTC) if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
            except (ValueError, OverflowError):
                pass
        raise FilterError(
            path, "not a date (use ISO-8601, e.g. 2024-01-31 or 2024-01-31T09:30:00Z)"
        )

    @classmethod
    def ticks(cls, value: Any, path: str) -> tuple[int, int]:
        """The ms ticks [lo, hi) a date (whole UTC day) or a datetime (one instant) denotes.

        An instant with a sub-millisecond part matches no integer tick: [ceil, floor + 1).
        """
        when = cls.instant(value, path)
        if not isinstance(when, datetime):
            lo = (when - date(1970, 1, 1)).days * _MS_PER_DAY
            return lo, lo + _MS_PER_DAY
        micros = (when - _EPOCH) // timedelta(microseconds=1)
        return -((-micros) // 1000), micros // 1000 + 1

    def time(self, column: str, key: str, value: Any, path: str) -> Node:
        def eq(v: Any, vpath: str) -> Node:
            lo, hi = self.ticks(v, vpath)
            return TimeRange(column, lo, hi)

        if not isinstance(value, Mapping):
            if isinstance(value, list | tuple):
                raise FilterError(path, 'a list is ambiguous here; use {"in": [...]}')
            return eq(value, path)
        nodes: list[Node] = []
        for op, operand in self.time_ops(key, value, path):
            opath = _key_path(path, op)
            if op == "in":
                items = _nonempty_list(operand, opath)
                nodes.append(_or([eq(v, f"{opath}[{i}]") for i, v in enumerate(items)]))
            elif op == "ne":
                nodes.append(Not(eq(operand, opath)))
            else:
                lo, hi = self.ticks(operand, opath)
                bounds = {"gt": (hi, None), "gte": (lo, None), "lt": (None, lo), "lte": (None, hi)}
                nodes.append(TimeRange(column, *bounds[op]))
        return _and(nodes)

    @staticmethod
    def time_ops(key: str, value: Mapping[str, Any], path: str) -> list[tuple[str, Any]]:
        if "eq" in value:
            raise FilterError(
                _key_path(path, "eq"),
                f"explicit 'eq' is not supported on {key} (as on the Mem0 Platform); "
                f'use a bare value, e.g. {{"{key}": "2024-01-31"}}',
            )
        return _operator_object(value, path, TIME_OPS)

    def expiration(self, column: str, value: Any, path: str) -> Node:
        def day(v: Any, vpath: str) -> str:
            when = self.instant(v, vpath)
            if isinstance(when, datetime):
                when = when.astimezone(UTC).date()
            return when.isoformat()

        if not isinstance(value, Mapping):
            if isinstance(value, list | tuple):
                raise FilterError(path, 'a list is ambiguous here; use {"in": [...]}')
            return DateCompare(column, "eq", day(value, path))
        nodes: list[Node] = []
        for op, operand in self.time_ops(column, value, path):
            opath = _key_path(path, op)
            if op == "in":
                items = _nonempty_list(operand, opath)
                nodes.append(
                    _or(
                        [
                            DateCompare(column, "eq", day(v, f"{opath}[{i}]"))
                            for i, v in enumerate(items)
                        ]
                    )
                )
            elif op == "ne":
                nodes.append(Not(DateCompare(column, "eq", day(operand, opath))))
            else:
                nodes.append(DateCompare(column, op, day(operand, opath)))  # type: ignore[arg-type]
        return _and(nodes)

    # --- content ---------------------------------------------------------------------

    @staticmethod
    def needle(value: Any, path: str, *, control_ok: bool) -> str:
        text = _string(value, path)
        if not control_ok and any(ord(c) < 32 for c in text):
            raise FilterError(path, "must not contain control characters")
        return text

    def categories(self, value: Any, path: str) -> Node:
        def any_of(items: Any, ipath: str) -> CategoriesAny:
            values = _nonempty_list(items, ipath)
            return CategoriesAny(
                tuple(
                    dict.fromkeys(
                        _string(v, f"{ipath}[{i}]", allow_empty=True) for i, v in enumerate(values)
                    )
                )
            )

        if isinstance(value, list | tuple):
            return any_of(value, path)
        if not isinstance(value, Mapping):
            raise FilterError(
                path,
                f'must be a list or an operator object ({{"in": [...]}} or {{"contains": '
                f'"..."}}), got {_type_name(value)}',
            )
        if "eq" in value or "ne" in value:
            op = "eq" if "eq" in value else "ne"
            raise FilterError(
                _key_path(path, op),
                f"'{op}' is not supported on categories (as on the Mem0 Platform); "
                "use in, nin or contains",
            )
        nodes: list[Node] = []
        for op, operand in _operator_object(value, path, CATEGORY_OPS):
            opath = _key_path(path, op)
            if op == "contains":
                nodes.append(CategoryContains(fold(self.needle(operand, opath, control_ok=False))))
            else:
                leaf = any_of(operand, opath)
                nodes.append(Not(leaf) if op == "nin" else leaf)
        return _and(nodes)

    def keywords(self, value: Any, path: str) -> Node:
        if isinstance(value, str):
            return TextContains(fold(self.needle(value, path, control_ok=True)), False)
        if not isinstance(value, Mapping):
            raise FilterError(
                path, f"must be a string or an operator object, got {_type_name(value)}"
            )
        nodes: list[Node] = []
        for op, operand in _operator_object(value, path, TEXT_OPS):
            needle = self.needle(operand, _key_path(path, op), control_ok=True)
            sensitive = op == "contains"
            nodes.append(TextContains(needle if sensitive else fold(needle), sensitive))
        return _and(nodes)

    def memory_ids(self, value: Any, path: str) -> Node:
        def id_list(items: Any, ipath: str) -> IdMatch:
            values = _nonempty_list(items, ipath)
            return IdMatch(
                tuple(dict.fromkeys(_string(v, f"{ipath}[{i}]") for i, v in enumerate(values)))
            )

        if isinstance(value, str):
            return IdMatch((_string(value, path),))
        if isinstance(value, list | tuple):
            return id_list(value, path)
        if isinstance(value, Mapping):
            nodes: list[Node] = []
            for op, operand in _operator_object(value, path, ID_OPS):
                leaf = id_list(operand, _key_path(path, op))
                nodes.append(Not(leaf) if op == "nin" else leaf)
            return _and(nodes)
        raise FilterError(path, f"must be a list of memory ids, got {_type_name(value)}")

    # --- metadata --------------------------------------------------------------------

    @staticmethod
    def meta_scalar(value: Any, path: str) -> MetaValue:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _check_unicode(value, path)
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:
                raise FilterError(path, "number out of range") from None
            if not math.isfinite(number):
                raise FilterError(path, "must be a finite number")
            return number
        raise FilterError(
            path, f"must be a string, number, boolean or null, got {_type_name(value)}"
        )

    def metadata(self, value: Any, path: str) -> Node:
        if not isinstance(value, Mapping):
            raise FilterError(
                path, f'must be an object such as {{"key": "value"}}, got {_type_name(value)}'
            )
        if not value:
            raise FilterError(path, "must not be an empty object")
        nodes: list[Node] = []
        for raw_key, spec in value.items():
            key = str(raw_key)
            kpath = _key_path(path, key)
            if key == "":
                raise FilterError(kpath, "metadata keys must not be empty")
            _check_unicode(key, kpath)
            if isinstance(spec, list | tuple):
                raise FilterError(kpath, 'a list is ambiguous here; use {"in": [...]}')
            if not isinstance(spec, Mapping):
                nodes.append(MetaCompare(key, "eq", self.meta_scalar(spec, kpath)))
                continue
            for op, operand in _operator_object(spec, kpath, META_OPS):
                nodes.append(self.meta_op(key, op, operand, _key_path(kpath, op)))
        return _and(nodes)

    def meta_op(self, key: str, op: str, operand: Any, path: str) -> Node:
        if op in ("in", "nin"):
            items = _nonempty_list(operand, path)
            values = [self.meta_scalar(v, f"{path}[{i}]") for i, v in enumerate(items)]
            leaf = _or([MetaCompare(key, "eq", v) for v in dict.fromkeys(values)])
            return Not(leaf) if op == "nin" else leaf
        if op in ("eq", "ne"):
            leaf = MetaCompare(key, "eq", self.meta_scalar(operand, path))
            return Not(leaf) if op == "ne" else leaf
        if op in ("contains", "icontains"):
            needle = self.needle(operand, path, control_ok=True)
            return MetaCompare(key, op, needle if op == "contains" else fold(needle))  # type: ignore[arg-type]
        value = self.meta_scalar(operand, path)
        if value is None or isinstance(value, bool):
            raise FilterError(path, f"must be a number or a string, got {_type_name(operand)}")
        return MetaCompare(key, op, value)  # type: ignore[arg-type]


def parse_filters(
    filters: Mapping[str, Any] | None, path: str = "filters"
) -> tuple[Node, frozenset[str]]:
    """Parse a filters object into its AST and the entity fields it names.

    `None` and `{}` parse to `And(())` (no condition beyond implicit null scoping).
    """
    if filters is None:
        return And(()), frozenset()
    if not isinstance(filters, Mapping):
        raise FilterError(path, f"must be an object, got {_type_name(filters)}")
    if not filters:
        return And(()), frozenset()
    parser = _Parser()
    node = parser.condition(filters, path, 0)
    return node, frozenset(parser.named)


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


def _positively_scoped(node: Node, negated: bool = False) -> bool:
    """True when every row the node matches has some entity id that the node requires to
    be non-null: a value, a list of values, or '*' (not a null, ne or nin).

    Computed on the negation normal form: AND is positive if any part is, OR if all parts
    are; NOT flips polarity (so NOT {"user_id": null} is positive, NOT {"user_id": "a"} not).
    """
    match node:
        case Not(child):
            return _positively_scoped(child, not negated)
        case And(children) | Or(children):
            any_mode = isinstance(node, And) != negated
            parts = (_positively_scoped(c, negated) for c in children)
            return any(parts) if any_mode else (bool(children) and all(parts))
        case EntityMatch(_, ids, wildcard, null):
            return null if negated else (bool(ids) or wildcard) and not null
    return False


def _has_metadata(node: Node) -> bool:
    match node:
        case MetaCompare():
            return True
        case Not(child):
            return _has_metadata(child)
        case And(children) | Or(children):
            return any(_has_metadata(c) for c in children)
    return False
