"""The two prompts of inference and the structured answers they ask for.

Shaped after Mem0's open-source prompts (fact extraction, then the memory-update decision
with short temporary ids), rewritten for memstream. `PROMPT_VERSION` and `PROMPT_HASH` are
recorded with every decision, so the ledger says which wording decided what; change the
version when the wording changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

PROMPT_VERSION = "memstream-inference-1"

DEFAULT_CATEGORIES = (
    "personal_details", "family", "professional_details", "sports", "travel", "food",
    "music", "health", "technology", "hobbies", "fashion", "entertainment", "milestones",
    "user_preferences", "misc",
)  # fmt: skip

EXTRACT_SYSTEM = """\
You are a personal information organiser. You read a conversation and extract the facts \
worth remembering about the user (preferences, personal details, plans, activities, \
health, professional details, likes and dislikes), as short self-contained statements.

Rules:
- Today's date is {today}.
- Extract facts from what the user says; use the assistant's messages only as context.
- Each fact is one short sentence in the language the user wrote in.
- Leave out greetings, small talk and anything not worth remembering; if nothing is, \
return an empty list.
- Never invent facts that the conversation does not state.
{instructions}
Answer with a JSON object exactly like {{"facts": ["fact 1", "fact 2"]}}."""

DECIDE_SYSTEM = """\
You are a memory manager. You compare newly extracted facts with the memories already \
stored and decide, for each, one of: ADD (a new memory), UPDATE (change a stored memory), \
DELETE (remove a stored memory the new facts contradict), NONE (no change).

Rules:
- ADD: a fact that no stored memory holds. Use a new id (any string); it is ignored.
- UPDATE: a fact that refines or changes a stored memory (e.g. "Likes pizza" -> "Loves \
cheese pizza"). Keep the stored memory's id, put the new text in "text" and the stored \
text in "old_memory". Two texts that mean the same: NONE, not UPDATE.
- DELETE: a stored memory the new facts contradict or revoke. Keep its id.
- NONE: a stored memory that stays as it is, or a fact already held.
- Use ONLY the ids of the stored memories shown to you for UPDATE, DELETE and NONE.
- For ADD and UPDATE, give "categories": one or more of {categories}.
Answer with a JSON object exactly like \
{{"memory": [{{"id": "0", "text": "...", "event": "UPDATE", "old_memory": "...", \
"categories": ["..."]}}]}}."""

DECIDE_USER = """\
Stored memories (id and text):
{memories}

New facts:
{facts}"""

PROMPT_HASH = hashlib.sha256(
    "\x00".join((PROMPT_VERSION, EXTRACT_SYSTEM, DECIDE_SYSTEM, DECIDE_USER)).encode()
).hexdigest()


class Facts(BaseModel):
    """The first call's answer."""

    facts: list[str] = Field(default_factory=list)


class Decision(BaseModel):
    id: str | None = None
    text: str = ""
    event: Literal["ADD", "UPDATE", "DELETE", "NONE"]
    old_memory: str | None = None
    categories: list[str] | None = None

    @field_validator("event", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("id", mode="before")
    @classmethod
    def _str_id(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class Decisions(BaseModel):
    """The second call's answer."""

    memory: list[Decision] = Field(default_factory=list)


def extract_system(instructions: str | None, now: dt.datetime | None = None) -> str:
    extra = (
        f"\nThe project's instructions (follow them):\n{instructions.strip()}\n"
        if (instructions and instructions.strip())
        else ""
    )
    today = (now or dt.datetime.now(dt.UTC)).date().isoformat()
    return EXTRACT_SYSTEM.format(today=today, instructions=extra)


def conversation_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def decide_system(categories: list[str]) -> str:
    return DECIDE_SYSTEM.format(categories=", ".join(categories))


def decide_user(shown: list[dict[str, str]], facts: list[str]) -> str:
    memories = json.dumps(shown, ensure_ascii=False) if shown else "(none)"
    return DECIDE_USER.format(memories=memories, facts=json.dumps(facts, ensure_ascii=False))
