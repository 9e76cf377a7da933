"""Safe SQL literals for Lance/DataFusion predicates, which take no bind parameters.

Values are quoted here and only here: a string becomes a single-quoted literal with quotes
doubled (DataFusion treats backslashes in plain literals as ordinary characters).
"""

from __future__ import annotations

from collections.abc import Iterable


def sql_str(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL is not allowed in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    """`column IN (...)`, or a predicate that is always false for an empty list."""
    items = sorted(set(values))
    if not items:
        return "false"
    return f"{column} IN ({', '.join(sql_str(v) for v in items)})"
