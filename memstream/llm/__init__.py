"""Language models for inference: chat completions with structured output.

`get_llm(settings)` is the configured model, or None when no LLM is configured (then
`add(infer=True)` stores the messages verbatim and says so).
"""

from __future__ import annotations

from memstream.llm.base import LLM, Completion, LLMUnavailableError, Usage
from memstream.llm.openai_compat import OpenAICompatibleLLM, endpoint_host
from memstream.settings import Settings


def get_llm(settings: Settings) -> OpenAICompatibleLLM | None:
    """The LLM the settings name (MEMSTREAM_LLM_BASE_URL + MEMSTREAM_LLM_MODEL), or None."""
    if not settings.llm_base_url and not settings.llm_model:
        return None
    if not settings.llm_base_url or not settings.llm_model:
        from memstream.errors import ValidationError

        raise ValidationError(
            "LLM settings: give both MEMSTREAM_LLM_BASE_URL (--llm-base-url) and "
            "MEMSTREAM_LLM_MODEL (--llm-model), or neither (inference off)"
        )
    return OpenAICompatibleLLM(
        settings.llm_base_url,
        settings.llm_model,
        settings.llm_api_key,
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
        temperature=settings.llm_temperature,
    )


__all__ = [
    "LLM",
    "Completion",
    "LLMUnavailableError",
    "OpenAICompatibleLLM",
    "Usage",
    "endpoint_host",
    "get_llm",
]
