"""Retention as read-time predicates: an expired memory never appears in search or get_all,
even before the sweeper has recorded its MemoryExpired event.

A memory is hidden when its expiration_date has passed, when the sweeper marked it
(expired_at), or when a retention policy of its project matches it and its last write
is older than the policy's TTL. Every clause is null-safe: a row without the policy's
field is never hidden by it (SQL's three-valued NOT would otherwise drop it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from memstream.errors import ValidationError
from memstream.scope import ENTITY_FIELDS, normalise_id
from memstream.sqlutil import sql_str

TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str | int) -> int:
    """'7d', '12h', '30m', '90s', '2w' or a number of seconds -> seconds (> 0)."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(text))
        if not m:
            raise ValidationError(f"ttl: {text!r} is not a duration like 7d, 12h, 30m or 3600")
        seconds = int(m.group(1)) * TTL_UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise ValidationError("ttl: must be positive")
    return seconds


def check_policy(field: str, pattern: str) -> None:
    if field not in ENTITY_FIELDS:
        raise ValidationError(f"field: must be one of {', '.join(ENTITY_FIELDS)}")
    if pattern == "*":
        return
    body = pattern[:-1] if pattern.endswith("*") else pattern
    if "*" in body:
        raise ValidationError("pattern: '*' is only allowed alone or at the end (a prefix)")
    normalise_id("pattern", body)


def policy_match(field: str, pattern: str) -> str:
    """SQL that is true when the row's `field` matches the pattern (false/NULL otherwise)."""
    if pattern == "*":
        return f"{field} IS NOT NULL"
    if pattern.endswith("*"):
        return f"starts_with({field}, {sql_str(pattern[:-1])})"
    return f"{field} = {sql_str(pattern)}"


def policy_expires(policy: Mapping[str, Any], now_ms: int) -> str:
    """SQL true for rows this policy has expired at `now_ms`."""
    cutoff = now_ms - int(policy["ttl_seconds"]) * 1000
    return (
        f"coalesce({policy_match(policy['field'], policy['pattern'])} "
        f"AND updated_at < {cutoff}, false)"
    )


def today_utc(now_ms: int) -> str:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date().isoformat()


def date_expired(now_ms: int) -> str:
    """SQL true for rows whose expiration_date has passed (live through that date)."""
    return f"coalesce(expiration_date < {sql_str(today_utc(now_ms))}, false)"


def visible(policies: Iterable[Mapping[str, Any]], now_ms: int) -> str:
    """SQL true for rows that search and get_all may show (show_expired=False)."""
    parts = [f"NOT {date_expired(now_ms)}", "expired_at IS NULL"]
    parts += [f"NOT {policy_expires(p, now_ms)}" for p in policies]
    return " AND ".join(parts)


def _policy_matches(value: Any, pattern: str) -> bool:
    """Python twin of `policy_match` (None stands for SQL's NULL and FALSE alike)."""
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return bool(value.startswith(pattern[:-1]))
    return bool(value == pattern)


def row_visible(row: Mapping[str, Any], policies: Iterable[Mapping[str, Any]], now_ms: int) -> bool:
    """Python twin of `visible(policies, now_ms)` for one memory row (columns
    expiration_date, expired_at, updated_at and the entity ids): the reference the scoped
    read plan's Arrow masks (`query/scoped.py`) are tested against; tests hold it equal to
    the SQL too."""
    if row.get("expired_at") is not None:
        return False
    expiration = row.get("expiration_date")
    if expiration is not None and expiration < today_utc(now_ms):
        return False
    for policy in policies:
        cutoff = now_ms - int(policy["ttl_seconds"]) * 1000
        updated = row.get("updated_at")
        if (
            _policy_matches(row.get(policy["field"]), policy["pattern"])
            and updated is not None
            and updated < cutoff
        ):
            return False
    return True
