"""Embedders: texts in, L2-normalised float32 vectors out, in batches.

``get_embedder("minilm")`` is the default (all-MiniLM-L6-v2, int8 ONNX); see
:mod:`memstream.embedders.registry` for every name.
"""

from memstream.embedders.base import Embedder
from memstream.embedders.hashing import HashingEmbedder
from memstream.embedders.onnx import MiniLMOnnxEmbedder
from memstream.embedders.openai import EmbedderUnavailableError, OpenAICompatibleEmbedder
from memstream.embedders.registry import SPECS, clear_cache, get_embedder
from memstream.embedders.sentence_transformers import SentenceTransformersEmbedder

__all__ = [
    "SPECS",
    "Embedder",
    "EmbedderUnavailableError",
    "HashingEmbedder",
    "MiniLMOnnxEmbedder",
    "OpenAICompatibleEmbedder",
    "SentenceTransformersEmbedder",
    "clear_cache",
    "get_embedder",
]
