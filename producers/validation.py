"""Request validation for writes: every message names the field it is about.

Runs before anything is appended, so bad input loses nothing and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from memstream.errors import ValidationError

ROLES = ("user", "assistant", "system", "tool")
MAX_TEXT = 100_000
MAX_ID = 256


def memory_texts(messages: Any) -> list[str]:
    """The texts that become memories: each non-system message, in order (no inference)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages: must be a non-empty string or list of {role, content}")
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
        texts.append(check_text(content, f"{where}.content"))
    if not texts:
        raise ValidationError("messages: no user or assistant message to remember")
    return texts


def conversation(messages: Any) -> list[dict[str, str]]:
    """The messages an inferred add decides on, as [{role, content}] (validated like
    `memory_texts`: at least one user or assistant message)."""
    memory_texts(messages)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        messages = [messages]
    return [
        {"role": str(m.get("role", "user")), "content": m["content"].strip()}
        for m in messages
        if m["content"].strip()
    ]


def check_text(text: Any, where: str = "text") -> str:
    if not isinstance(text, str):
        raise ValidationError(f"{where}: must be a string")
    text = text.strip()
    if not text:
        raise ValidationError(f"{where}: must not be empty")
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{where}: longer than {MAX_TEXT} characters")
    return text


def metadata_json(metadata: Any, where: str = "metadata") -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: must be a JSON object")
    try:
        return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{where}: not JSON-serialisable ({exc})") from exc


def categories_list(categories: Any, where: str = "categories") -> tuple[str, ...]:
    if categories is None:
        return ()
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if not isinstance(categories, list | tuple):
        raise ValidationError(f"{where}: must be a list of strings")
    out: list[str] = []
    for i, c in enumerate(categories):
        if not isinstance(c, str) or not c.strip():
            raise ValidationError(f"{where}[{i}]: must be a non-empty string")
        if c.strip() not in out:
            out.append(c.strip())
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
    try:
        return dt.date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise ValidationError(f"{where}: not a date (expected YYYY-MM-DD): {value!r}") from None


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
