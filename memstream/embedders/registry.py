"""Embedders by name: ``get_embedder("minilm")``, ``"hashing:256"``, ``"openai:<model>"``,
``"sentence-transformers[:<path>]"``.

Instances are cached per (spec, options) for the life of the process, so the ONNX model or a
PyTorch model is loaded once however many components ask for it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from memstream.embedders.base import Embedder
from memstream.errors import ValidationError

DEFAULT_SPEC = "minilm"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_BASE_URL_ENV = "MEMSTREAM_OPENAI_BASE_URL"
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"

#: Every spec form get_embedder accepts, for messages and --help texts.
SPECS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2, int8 ONNX on onnxruntime, 384 dims (default)",
    "hashing[:<dim>]": "feature hashing of words and trigrams, no model (default dim 384)",
    "openai:<model>": f"an OpenAI-compatible /embeddings server (base_url= or "
    f"${OPENAI_BASE_URL_ENV}, api_key= or ${OPENAI_API_KEY_ENV})",
    "sentence-transformers[:<path>]": "a local sentence-transformers model "
    "(extra: memstream[sentence-transformers])",
}

_cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], Embedder] = {}
_cache_lock = threading.Lock()


def _invalid(spec: str, why: str) -> ValidationError:
    return ValidationError(f"invalid embedder {spec!r}: {why}; valid embedders: {', '.join(SPECS)}")


def _parse(spec: str) -> tuple[str, str]:
    """('minilm' | 'hashing' | 'openai' | 'sentence-transformers', argument or '')."""
    if not isinstance(spec, str) or not spec.strip():
        raise _invalid(str(spec), "empty name")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind.startswith("hashing-") and not arg:  # the name a projection records: hashing-<dim>
        kind, arg = "hashing", kind.removeprefix("hashing-")
    if kind in ("minilm", "minilm-l6-v2-int8"):
        if arg:
            raise _invalid(spec, "minilm takes no argument")
        return "minilm", ""
    if kind == "hashing":
        if arg and not (arg.isdigit() and int(arg) >= 8):
            raise _invalid(spec, "the hashing dimension must be an integer >= 8")
        return "hashing", arg
    if kind == "openai":
        if not arg:
            raise _invalid(spec, "name the model, e.g. openai:text-embedding-3-small")
        return "openai", arg
    if kind in ("sentence-transformers", "st"):
        return "sentence-transformers", arg
    raise _invalid(spec, "unknown name")


def get_embedder(spec: str = DEFAULT_SPEC, **options: Any) -> Embedder:
    """The embedder named by ``spec``, built once per (spec, options) in this process.

    ``options`` go to the embedder's constructor, e.g. ``intra_op_num_threads=2`` for
    minilm, ``base_url=``/``api_key=``/``dim=``/``timeout=`` for openai, ``device=`` for
    sentence-transformers. For openai, ``base_url`` and ``api_key`` default to
    ``$MEMSTREAM_OPENAI_BASE_URL`` (else OpenAI's own URL) and ``$OPENAI_API_KEY``.

    Raises:
        ValidationError: unknown spec, malformed argument, or options the embedder rejects.
    """
    kind, arg = _parse(spec)
    if kind == "openai":
        options.setdefault(
            "base_url", os.environ.get(OPENAI_BASE_URL_ENV) or DEFAULT_OPENAI_BASE_URL
        )
        options.setdefault("api_key", os.environ.get(OPENAI_API_KEY_ENV) or None)
    key = (kind, arg, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _cache_lock:
        embedder = _cache.get(key)
        if embedder is None:
            embedder = _build(spec, kind, arg, options)
            _cache[key] = embedder
    return embedder


def _build(spec: str, kind: str, arg: str, options: dict[str, Any]) -> Embedder:
    try:
        if kind == "minilm":
            from memstream.embedders.onnx import MiniLMOnnxEmbedder

            return MiniLMOnnxEmbedder(**options)
        if kind == "hashing":
            from memstream.embedders.hashing import HashingEmbedder

            if arg:
                if "dim" in options:
                    raise _invalid(spec, "give the dimension in the name or as dim=, not both")
                options = {**options, "dim": int(arg)}
            return HashingEmbedder(**options)
        if kind == "openai":
            from memstream.embedders.openai import OpenAICompatibleEmbedder

            return OpenAICompatibleEmbedder(model=arg, **options)
        from memstream.embedders.sentence_transformers import SentenceTransformersEmbedder

        if arg:
            return SentenceTransformersEmbedder(arg, **options)
        return SentenceTransformersEmbedder(**options)
    except (TypeError, ValueError) as exc:
        raise _invalid(spec, f"bad options {sorted(options)}: {exc}") from exc


def clear_cache() -> None:
    """Forget every cached embedder (tests; a process that changes its configuration)."""
    with _cache_lock:
        _cache.clear()
