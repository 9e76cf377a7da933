"""Language models for inference: chat completions with structured output.

`get_llm(settings)` is the configured model, or None when no LLM is configured (then
`add(infer=True)` stores the messages verbatim and says so).

The provider (`openai_compat`, which imports the `openai` SDK: ~1 s) loads when an LLM is
configured or its names are first used, not when this package is imported: a CLI command
or server without inference never pays for it (issue 16, section 7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memstream.llm.base import LLM, Completion, LLMUnavailableError, Usage
from memstream.settings import Settings

if TYPE_CHECKING:
    from memstream.llm.openai_compat import OpenAICompatibleLLM, endpoint_host


def __getattr__(name: str) -> Any:
    if name in ("OpenAICompatibleLLM", "endpoint_host"):
        from memstream.llm import openai_compat

        return getattr(openai_compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from memstream.llm.openai_compat import OpenAICompatibleLLM

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
