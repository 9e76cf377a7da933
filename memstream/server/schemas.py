"""Request and response models at the REST edge (pydantic), shaped like the Mem0 Platform's.

Unknown body fields are ignored, as the platform does (older clients send `org_id`,
`project_id`, `version`, `output_format`...). Wrong types are answered 422 naming the field.
Business rules (ids, dates, filters) stay in the core and answer 400 naming the field; these
models only fix the JSON types, so the OpenAPI document says what each endpoint takes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Filters = dict[str, Any]


def _first_lone_surrogate(value: Any) -> str | None:
    """Path of the first string holding a lone surrogate (JSON allows `\\ud800`, UTF-8 does not)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return path or "(body)"
        elif isinstance(v, dict):
            for k, item in v.items():
                key = str(k)
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{path or '(body)'} (a key)"
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
    return None


class Body(BaseModel):
    """Base of every request body: extra fields ignored, strings must be valid Unicode."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        bad = _first_lone_surrogate(data)
        if bad is not None:
            raise ValueError(f"{bad}: not valid Unicode (lone surrogate)")
        return data


class EntityIds(Body):
    user_id: str | None = None
    agent_id: str | None = None
    app_id: str | None = None
    run_id: str | None = None

    def entities(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("user_id", self.user_id),
                ("agent_id", self.agent_id),
                ("app_id", self.app_id),
                ("run_id", self.run_id),
            )
            if v is not None
        }


class Message(Body):
    role: str = Field(
        default="user",
        description="user | assistant | system | tool; system messages are not remembered",
    )
    content: str | dict[str, Any] | list[Any] = Field(
        ..., description="text; image and other multimodal content is answered 400 for now"
    )


class AddRequest(EntityIds):
    """POST /v3/memories/add/ (and the legacy POST /v1/memories/)."""

    messages: list[Message] | Message | str = Field(
        ...,
        description="With inference (an LLM configured, infer not false): the conversation "
        "the LLM extracts and reconciles memories from. Without: each non-system message "
        "becomes one memory, verbatim.",
    )
    filters: Filters | None = Field(
        default=None, description='Entity ids may also be given here, e.g. {"user_id": "alice"}.'
    )
    metadata: dict[str, Any] | None = None
    categories: list[str] | str | None = None
    expiration_date: str | None = Field(
        default=None, description="YYYY-MM-DD; hidden from reads after it"
    )
    immutable: bool = False
    infer: bool | None = Field(
        default=None,
        description="Default true: the configured LLM decides ADD/UPDATE/DELETE/NONE "
        "(docs/inference.md). With no LLM configured the messages are stored verbatim and the "
        'answer says `"inference": "off"`. false: always verbatim.',
    )
    async_mode: bool | None = Field(
        default=None,
        description="true: answer PENDING at once (with inference: before the LLM is asked; "
        "else once the events are durable); poll GET /v1/event/{event_id}/.",
    )
    request_id: str | None = Field(
        default=None,
        description="Idempotency key (also the Idempotency-Key header): a retry is a no-op.",
    )


AS_OF_DOC = (
    "Answer from the log as it was: an ISO-8601 time (naive = UTC), or a log position "
    '{"partition": p, "offset": o} / "p:o" / an offset on partition 0 (docs/audit.md)'
)
AsOf = str | int | dict[str, int] | list[dict[str, int]]


class GetAllRequest(EntityIds):
    """POST /v3/memories/ (get_all). page/page_size in the query win over the body."""

    filters: Filters | None = None
    page: int | None = None
    page_size: int | None = None
    show_expired: bool = False
    start_date: str | None = Field(
        default=None, description="created_at >= this (ISO date or datetime)"
    )
    end_date: str | None = Field(
        default=None, description="created_at <= this (ISO date or datetime)"
    )
    categories: list[str] | None = Field(default=None, description="any of these categories")
    keywords: str | None = Field(
        default=None, description="case-insensitive substring of the memory text"
    )
    as_of: AsOf | None = Field(default=None, description=AS_OF_DOC)


class SearchRequest(EntityIds):
    """POST /v3/memories/search/."""

    query: str
    filters: Filters | None = None
    top_k: int = Field(default=10, description="1..1000")
    threshold: float | None = Field(
        default=0.1, description="minimum score 0..1; 0 or null disables"
    )
    show_expired: bool = False
    categories: list[str] | None = None
    rerank: bool | None = Field(default=None, description="Accepted and ignored.")
    keyword_search: bool | None = Field(default=None, description="Accepted and ignored.")
    as_of: AsOf | None = Field(default=None, description=AS_OF_DOC)


class UpdateRequest(Body):
    """PUT /v1/memories/{memory_id}/ — an explicit `"expiration_date": null` clears it."""

    text: str | None = None
    metadata: dict[str, Any] | None = None
    categories: list[str] | str | None = None
    expiration_date: str | None = None
    timestamp: int | float | str | None = Field(
        default=None,
        description="Backdate the memory: created_at and updated_at become this time "
        "(Unix seconds, or ISO-8601)",
    )
    request_id: str | None = None


class BatchUpdateItem(UpdateRequest):
    memory_id: str


class BatchUpdateRequest(Body):
    memories: list[BatchUpdateItem]


class BatchDeleteItem(Body):
    memory_id: str


class BatchDeleteRequest(Body):
    memories: list[BatchDeleteItem]


class ExportCreateRequest(EntityIds):
    """POST /v1/exports/."""

    export_schema: Any = Field(
        default=None, alias="schema", description="Echoed back in the export."
    )
    filters: Filters | None = None


class ExportGetRequest(EntityIds):
    """POST /v1/exports/get/: an export by id, or (no id) a fresh export of `filters`."""

    memory_export_id: str | None = None
    filters: Filters | None = None


class ExportDownloadRequest(EntityIds):
    """POST /v1/exports/download/: the memories `filters` select, as a file."""

    filters: Filters | None = None
    format: Literal["json", "jsonl", "csv", "parquet"] = Field(
        default="json", description="json | jsonl | csv | parquet (docs/audit.md)"
    )
    as_of: AsOf | None = Field(default=None, description=AS_OF_DOC)
    show_expired: bool = False


StatsGroup = Literal["user", "agent", "app", "run", "category", "day"]


class StatsRequest(EntityIds):
    """POST /v1/stats/: counts of the memories `filters` select, grouped."""

    filters: Filters | None = Field(
        default=None, description="as get_all's; absent: every memory of the key's project"
    )
    by: list[StatsGroup] = Field(
        default_factory=list,
        description="groupings to count at once: user, agent, app, run, category, day",
        max_length=6,
    )
    as_of: AsOf | None = Field(default=None, description=AS_OF_DOC)
    show_expired: bool = False


class ErasureRequest(EntityIds):
    """POST /v1/erasures/: exactly one entity id, the subject to crypto-shred."""

    reason: str | None = Field(default=None, max_length=1000, description="kept in the audit")


class FeedbackRequest(Body):
    memory_id: str
    feedback: Literal["POSITIVE", "NEGATIVE", "VERY_NEGATIVE"] | None = None
    feedback_reason: str | None = None


# -- responses (OpenAPI documentation only: handlers return plain dicts, sent as they are) --
class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


def doc(model: Any, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: documents the success body without filtering it."""
    return {status: {"model": model, "description": "Success"}}


class MemoryOut(Out):
    id: str
    memory: str
    user_id: str | None = None
    agent_id: str | None = None
    app_id: str | None = None
    run_id: str | None = None
    session_id: str | None = Field(default=None, description="the same as run_id")
    hash: str | None = None
    metadata: dict[str, Any] | None = None
    categories: list[str] | None = None
    created_at: str
    updated_at: str | None = None
    expiration_date: str | None = None
    immutable: bool | None = None
    score: float | None = Field(default=None, description="search only: 0..1, higher is closer")


class PageOut(Out):
    count: int
    next: str | None
    previous: str | None
    results: list[MemoryOut]


class ResultsOut(Out):
    results: list[MemoryOut]


class WriteResultOut(Out):
    id: str
    event: str = Field(
        ...,
        description="ADD | UPDATE | DELETE | NONE (exact duplicate) | CONFLICT (inference: "
        "the memory changed after the LLM read it, nothing applied)",
    )
    memory: str | None = None
    previous_memory: str | None = Field(default=None, description="an UPDATE's former text")
    data: dict[str, Any] | None = None
    status: str | None = None


class AddOut(Out):
    results: list[WriteResultOut]
    status: str | None = Field(default=None, description="PENDING with async_mode")
    event_id: str | None = None
    message: str | None = None
    inference: str | None = Field(
        default=None,
        description='"on": the LLM decided; "off": no LLM is configured, messages stored '
        'verbatim; "not_requested": infer was false',
    )


class EventOut(Out):
    id: str
    event_type: str
    status: Literal["PENDING", "SUCCEEDED", "FAILED"]
    results: list[WriteResultOut]
    error: str | None = Field(default=None, description="why a FAILED inference failed")


class ProjectUpdateRequest(Body):
    """PATCH /api/v1/orgs/organizations/{org}/projects/{project}/ (the SDKs' update_project)."""

    custom_instructions: str | None = Field(
        default=None, description="Steers fact extraction in every inferred add of the project"
    )
    custom_categories: list[str | dict[str, str | None]] | None = Field(
        default=None,
        description="The categories the LLM may assign: names or {name: description} objects",
    )


class ErasureOut(Out):
    subject: dict[str, str]
    memories_erased: int
    keys_destroyed: int
    event_id: str


class CountOut(Out):
    key: str | None = Field(..., description="the value (null: memories without one)")
    count: int


class LagOut(Out):
    lag: int = Field(..., description="events in the log not yet applied by this server")
    partitions: list[dict[str, int]]


class StatsOut(Out):
    total: int
    groups: dict[str, list[CountOut]]
    projector: LagOut


class MessageOut(Out):
    message: str


class HistoryOut(Out):
    id: str
    memory_id: str
    event: str = Field(
        ..., description="ADD | UPDATE | DELETE | NONE | NOOP | DELETE_ALL | FEEDBACK"
    )
    old_memory: str | None = None
    new_memory: str | None = None
    input: list[dict[str, Any]] = []
    created_at: str


class PingOut(Out):
    status: str
    org_id: str
    project_id: str
    user_email: str


class EntityOut(Out):
    id: str
    name: str
    type: Literal["user", "agent", "app", "run"]
    total_memories: int
    created_at: str | None
    updated_at: str | None


class EntitiesOut(Out):
    count: int
    next: str | None
    previous: str | None
    results: list[EntityOut]
