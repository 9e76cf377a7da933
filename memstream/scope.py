"""The entity scope of a memory, normalised once and shared by every read and write.

Mem0 OSS let `?agent_id=` (an empty string) silently widen a query. Here an id is either a
non-empty string or absent (None); anything else is a ValidationError naming the field, and
the same value object builds the Kafka message key, the projection row and the filters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from memstream.errors import ValidationError

ENTITY_FIELDS: tuple[str, ...] = ("user_id", "agent_id", "app_id", "run_id")
MAX_ID_LENGTH = 256
WILDCARD = "*"
# json.dumps(..., separators=..., ensure_ascii=False) builds an encoder per call (~2 us)
_KEY_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_CONTROL = re.compile("[\x00-\x1f]")  # what `ord(c) < 32` meant, searched in C


def normalise_id(field: str, value: Any, *, allow_wildcard: bool = False) -> str | None:
    """Return a clean id or None; raise ValidationError for anything ambiguous."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be a string, got {type(value).__name__}")
    stripped = value.strip()
    if stripped == "":
        raise ValidationError(f"{field}: must not be empty (omit it instead)")
    if value != stripped:
        raise ValidationError(f"{field}: must not start or end with whitespace")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{field}: longer than {MAX_ID_LENGTH} characters")
    if _CONTROL.search(value) is not None:
        raise ValidationError(f"{field}: must not contain control characters")
    if value == WILDCARD and not allow_wildcard:
        raise ValidationError(f"{field}: '*' is a filter wildcard, not an id")
    return value


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a memory belongs to: the tenant (org, project) and the four entity ids."""

    org_id: str
    project_id: str
    user_id: str | None = None
    agent_id: str | None = None
    app_id: str | None = None
    run_id: str | None = None

    @classmethod
    def of(
        cls,
        org_id: str,
        project_id: str,
        *,
        user_id: Any = None,
        agent_id: Any = None,
        app_id: Any = None,
        run_id: Any = None,
        require_entity: bool = True,
    ) -> Scope:
        """Build a validated write scope. At least one entity id is required, as on the platform."""
        org = normalise_id("org_id", org_id)
        project = normalise_id("project_id", project_id)
        if org is None or project is None:
            raise ValidationError("org_id and project_id are required")
        scope = cls(
            org,
            project,
            normalise_id("user_id", user_id),
            normalise_id("agent_id", agent_id),
            normalise_id("app_id", app_id),
            normalise_id("run_id", run_id),
        )
        if require_entity and not scope.has_entity():
            raise ValidationError("at least one of user_id, agent_id, app_id, run_id is required")
        return scope

    @classmethod
    def of_row(cls, row: Any) -> Scope:
        """The scope of a projection row (a dict) or of an object with the same attributes."""
        fields = ("org_id", "project_id", *ENTITY_FIELDS)
        values = row if isinstance(row, dict) else {f: getattr(row, f) for f in fields}
        return cls(*(values[f] for f in fields))

    def has_entity(self) -> bool:
        return not (
            self.user_id is None
            and self.agent_id is None
            and self.app_id is None
            and self.run_id is None
        )

    def entities(self) -> dict[str, str | None]:
        return {f: getattr(self, f) for f in ENTITY_FIELDS}

    def key(self) -> bytes:
        """The log message key: every event of one scope lands in one partition, in order."""
        return _KEY_JSON.encode(
            [self.org_id, self.project_id, self.user_id, self.agent_id, self.app_id, self.run_id]
        ).encode()

    @classmethod
    def from_key(cls, key: bytes) -> Scope | None:
        """The scope a log message key names (the inverse of `key`), or None for a key that
        is not one of memstream's (a foreign producer's, or garbage)."""
        try:
            values = json.loads(key)
        except (ValueError, UnicodeDecodeError):
            return None
        if (
            not isinstance(values, list)
            or len(values) != 6
            or not all(isinstance(v, str) for v in values[:2])
            or not all(v is None or isinstance(v, str) for v in values[2:])
        ):
            return None
        return cls(*values)
