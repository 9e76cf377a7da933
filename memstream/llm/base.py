"""What the inference pipeline needs from a language model, independent of who serves it.

A provider answers one chat exchange with a JSON object validated by a pydantic model, and
says what it cost (tokens, latency). Every failure is an `LLMUnavailableError`: HTTP 503 at
the REST edge, a non-zero exit in the CLI, and, because the pipeline appends only after both
LLM calls succeeded, nothing in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from memstream.errors import MemstreamError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class LLMUnavailableError(MemstreamError):
    """The LLM could not be reached, refused, timed out or answered something unusable.
    Nothing was written; the caller may retry.

    `transient`: the endpoint was unreachable, timed out or answered 429/5xx (asking again
    later may work); else it answered, and the answer was refused or unusable (asking the
    same again is expected to fail the same way). An async add retries only the former
    (producers/resume.py)."""

    status_code = 503

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call cost: tokens as the server counted them (0 when it did not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.latency_ms + other.latency_ms,
        )


@dataclass(frozen=True, slots=True)
class Completion(Generic[T]):
    parsed: T
    raw: str  # the exact JSON text the model produced
    usage: Usage


class LLM(Protocol):
    """A chat model that answers with structured output."""

    model: str
    host: str  # the endpoint's host[:port], recorded with each decision (never the key)
    temperature: float

    async def complete(
        self, system: str, user: str, schema: type[M], schema_name: str
    ) -> Completion[M]: ...
