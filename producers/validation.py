"""Request validation for writes: every message names the field it is about.

Runs before anything is appended, so bad input loses nothing and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from memstream.errors import ValidationError
from memstream.scope import Scope
from memstream.settings import Limits

ROLES = ("user", "assistant", "system", "tool")
DEFAULT_LIMITS = Limits()
MAX_TEXT = DEFAULT_LIMITS.max_text_chars
MAX_ID = 256


def memory_texts(messages: Any, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The texts that become memories: each non-system message, in order (no inference)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages: must be a non-empty string or list of {role, content}")
    if len(messages) > limits.max_messages:
        raise ValidationError(
            f"messages: {len(messages)} messages, more than {limits.max_messages} in one add "
            "(MEMSTREAM_MAX_MESSAGES)"
        )
    texts: list[str] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ValidationError(f"{where}: must be an object with role and content")
        role = msg.get("role", "user")
        if role not in ROLES:
            raise ValidationError(f"{where}.role: must be one of {', '.join(ROLES)}")
        content = msg.get("content")
        if isinstance(content, dict | list):
            raise ValidationError(
                f"{where}.content: image and other multimodal content is not supported yet "
                "(memstream remembers text only): send the text, e.g. a description of the image"
            )
        if not isinstance(content, str):
            raise ValidationError(f"{where}.content: must be a string")
        if role == "system":
            continue
        texts.append(check_text(content, f"{where}.content", limits))
    if not texts:
        raise ValidationError("messages: no user or assistant message to remember")
    return texts


def conversation(messages: Any, limits: Limits = DEFAULT_LIMITS) -> list[dict[str, str]]:
    """The messages an inferred add decides on, as [{role, content}] (validated like
    `memory_texts`: at least one user or assistant message)."""
    memory_texts(messages, limits)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        messages = [messages]
    return [
        {"role": str(m.get("role", "user")), "content": m["content"].strip()}
        for m in messages
        if m["content"].strip()
    ]


def check_text(text: Any, where: str = "text", limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(text, str):
        raise ValidationError(f"{where}: must be a string")
    if len(text) > limits.max_text_chars:  # before strip(): bounded work on any input
        raise ValidationError(
            f"{where}: longer than {limits.max_text_chars} characters (MEMSTREAM_MAX_TEXT_CHARS)"
        )
    text = text.strip()
    if not text:
        raise ValidationError(f"{where}: must not be empty")
    return text


def nesting_depth(value: Any) -> int:
    """How deeply objects and lists nest in `value` (a scalar: 0, `{}`: 1), without recursion
    (a hostile document must not exhaust the stack here either)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            stack.extend((item, depth + 1) for item in v.values())
        elif isinstance(v, list | tuple):
            stack.extend((item, depth + 1) for item in v)
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def metadata_json(metadata: Any, where: str = "metadata", limits: Limits = DEFAULT_LIMITS) -> str:
    """Metadata as canonical JSON, refused (nothing written) past the depth and size limits:
    what is stored must be readable and serialisable by every read path later."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: must be a JSON object")
    depth = nesting_depth(metadata)
    if depth > limits.max_metadata_depth:
        raise ValidationError(
            f"{where}: nested {depth} levels deep, more than {limits.max_metadata_depth} "
            "(MEMSTREAM_MAX_METADATA_DEPTH)"
        )
    try:
        text = json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{where}: not JSON-serialisable ({exc})") from exc
    size = len(text.encode("utf-8"))
    if size > limits.max_metadata_bytes:
        raise ValidationError(
            f"{where}: {size} bytes as JSON, more than {limits.max_metadata_bytes} "
            "(MEMSTREAM_MAX_METADATA_BYTES)"
        )
    return text


def categories_list(
    categories: Any, where: str = "categories", limits: Limits = DEFAULT_LIMITS
) -> tuple[str, ...]:
    if categories is None:
        return ()
    if isinstance(categories, str):
        if len(categories) > limits.max_metadata_bytes:
            raise ValidationError(
                f"{where}: longer than {limits.max_metadata_bytes} characters "
                "(MEMSTREAM_MAX_METADATA_BYTES)"
            )
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if not isinstance(categories, list | tuple):
        raise ValidationError(f"{where}: must be a list of strings")
    if len(categories) > limits.max_filter_list:
        raise ValidationError(
            f"{where}: {len(categories)} categories, more than {limits.max_filter_list} "
            "(MEMSTREAM_MAX_FILTER_LIST)"
        )
    out: dict[str, None] = {}
    for i, c in enumerate(categories):
        if not isinstance(c, str) or not c.strip():
            raise ValidationError(f"{where}[{i}]: must be a non-empty string")
        if len(c) > MAX_ID:
            raise ValidationError(f"{where}[{i}]: longer than {MAX_ID} characters")
        out.setdefault(c.strip())
    return tuple(out)


def expiration(value: Any, where: str = "expiration_date") -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ValidationError(f"{where}: must be a date string YYYY-MM-DD")
    return whole_date(value, where)


def whole_date(value: str, where: str) -> str:
    """The day of a `YYYY-MM-DD` or ISO-8601 date-time string, validated whole: anything
    after the date must be a valid time, never ignored (`"2030-01-01' OR 1=1"` is a 400)."""
    text = value.strip()
    if len(text) > 64:
        raise ValidationError(f"{where}: not a date (expected YYYY-MM-DD): too long")
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text).isoformat()
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValidationError(f"{where}: not a date (expected YYYY-MM-DD): {shown!r}") from None


MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z


def timestamp_ms(value: Any, where: str = "timestamp") -> int:
    """A backdating time: Unix seconds (int, float or a numeric string, as the mem0 client
    sends) or an ISO-8601 datetime (naive = UTC), to ms UTC."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{where}: must be Unix seconds or an ISO-8601 datetime")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError(
                    f"{where}: not Unix seconds or an ISO-8601 datetime: {value!r}"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            value = parsed.timestamp()
    if not 0 <= value <= MAX_TIMESTAMP_S:  # NaN fails too
        raise ValidationError(f"{where}: out of range (Unix seconds between 1970 and 9999)")
    return round(value * 1000)


def request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
        raise ValidationError(
            f"request_id: must be a non-empty string of at most {MAX_ID} characters"
        )
    return value


M = TypeVar("M")
_request_id = request_id  # add_request's keyword of the same name hides the function


@dataclass(frozen=True)
class AddRequest(Generic[M]):
    """An add's fields, validated once for every kind of add (verbatim, inferred, or its
    asynchronous pre-check), in one order, under one set of limits."""

    scope: Scope
    messages: M
    metadata: str
    categories: tuple[str, ...]
    expiration_date: str | None
    immutable: bool
    request_id: str | None


def add_request(
    org_id: str,
    project_id: str,
    messages: Any,
    parse_messages: Callable[[Any, Limits], M],
    limits: Limits,
    *,
    user_id: Any = None,
    agent_id: Any = None,
    app_id: Any = None,
    run_id: Any = None,
    metadata: Any = None,
    categories: Any = None,
    expiration_date: Any = None,
    immutable: Any = False,
    request_id: Any = None,
) -> AddRequest[M]:
    scope = Scope.of(
        org_id, project_id, user_id=user_id, agent_id=agent_id, app_id=app_id, run_id=run_id
    )
    parsed = parse_messages(messages, limits)
    meta = metadata_json(metadata, limits=limits)
    cats = categories_list(categories, limits=limits)
    expires = expiration(expiration_date)
    if not isinstance(immutable, bool):
        raise ValidationError("immutable: must be a boolean")
    rid = _request_id(request_id)
    return AddRequest(scope, parsed, meta, cats, expires, immutable, rid)
