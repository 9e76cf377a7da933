"""Chat completions from any server that speaks OpenAI's protocol (OpenAI, Azure OpenAI,
Ollama, vLLM, llama.cpp's server, LM Studio, LiteLLM ...), through the official `openai` client.

Structured output: the request carries the pydantic model's JSON schema
(`response_format={"type": "json_schema", ...}`); a server that rejects that with HTTP 400
gets `{"type": "json_object"}` instead (remembered for the rest of the process), and the
answer is validated by the same pydantic model either way. Retries (429, 5xx, timeouts,
refused connections) are the client's own exponential backoff, bounded by `max_retries`;
each attempt is bounded by `timeout_s`.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any
from urllib.parse import urlsplit

import openai
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from memstream.llm.base import Completion, LLMUnavailableError, M, Usage

_PREVIEW = 300


def endpoint_host(base_url: str) -> str:
    """host[:port] of a base URL: what a decision records and an error names (no path, no
    credentials that a URL might carry)."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    host = parts.hostname or base_url
    return f"{host}:{parts.port}" if parts.port else host


class OpenAICompatibleLLM:
    """An `LLM` (memstream.llm.base) over `openai.AsyncOpenAI`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        temperature: float = 0.0,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        if not model:
            raise ValueError("model is required")
        if not 0 <= max_retries <= 10:
            raise ValueError(f"max_retries must be between 0 and 10, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.host = endpoint_host(self.base_url)
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # local servers (Ollama, vLLM) take no key, but the client insists on one
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._json_schema = True  # False once the server refused json_schema

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def where(self) -> str:
        return f"LLM endpoint {self.host} (model {self.model!r})"

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self, system: str, user: str, schema: type[M], schema_name: str
    ) -> Completion[M]:
        messages: list[Any] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        started = time.perf_counter()
        response = None
        if self._json_schema:
            try:
                response = await self._create(messages, _json_schema_format(schema, schema_name))
            except openai.BadRequestError:
                self._json_schema = False  # e.g. an older server without json_schema support
        if response is None:
            response = await self._create(messages, {"type": "json_object"})
        latency = int((time.perf_counter() - started) * 1000)
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            raise LLMUnavailableError(f"{self.where} answered without any message content")
        try:
            parsed = schema.model_validate(json.loads(_strip_fence(content)))
        except (ValueError, PydanticValidationError) as exc:
            raise LLMUnavailableError(
                f"{self.where} answered malformed structured output for {schema_name} "
                f"({_first_line(exc)}): {content[:_PREVIEW]!r}"
            ) from exc
        usage = response.usage
        return Completion(
            parsed,
            content,
            Usage(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                latency_ms=latency,
            ),
        )

    async def _create(self, messages: list[Any], response_format: Any) -> Any:
        retried = f" after {self.max_retries} retries" if self.max_retries else ""
        try:
            return await self._client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=self.temperature,
                response_format=response_format,
            )
        except openai.BadRequestError:
            if response_format.get("type") == "json_schema":
                raise  # the caller falls back to json_object
            raise LLMUnavailableError(f"{self.where} refused the request (HTTP 400)") from None
        except openai.APITimeoutError as exc:
            raise LLMUnavailableError(
                f"{self.where} did not answer within {self.timeout_s} s{retried}", transient=True
            ) from exc
        except openai.APIConnectionError as exc:
            raise LLMUnavailableError(
                f"{self.where} is unreachable{retried}: {exc}", transient=True
            ) from exc
        except openai.APIStatusError as exc:
            hint = ""
            transient = exc.status_code == 429 or exc.status_code >= 500
            if exc.status_code in (401, 403):
                hint = " (check MEMSTREAM_LLM_API_KEY)"
            elif exc.status_code == 404:
                hint = " (check MEMSTREAM_LLM_BASE_URL, e.g. .../v1, and MEMSTREAM_LLM_MODEL)"
            elif transient:
                hint = retried
            raise LLMUnavailableError(
                f"{self.where} answered HTTP {exc.status_code}{hint}: {str(exc.message)[:_PREVIEW]}",
                transient=transient,
            ) from exc
        except openai.OpenAIError as exc:
            raise LLMUnavailableError(f"{self.where} failed: {exc}") from exc


@functools.cache
def _json_schema_format(schema: type[BaseModel], name: str) -> dict[str, Any]:
    """The response_format of a schema, built once per (schema, name): pydantic generates a
    JSON schema afresh on every call (~1-3 ms for the decisions' schema, more under load),
    and every inference makes two calls. Shared, so never mutated (the client copies it)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema.model_json_schema(), "strict": False},
    }


def _strip_fence(text: str) -> str:
    """Some local models wrap JSON in a ```json fence even in JSON mode."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
