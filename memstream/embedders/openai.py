"""Embeddings from any server that speaks OpenAI's ``POST /embeddings`` (OpenAI, Azure-style
gateways, vLLM, Ollama, LocalAI, text-embeddings-inference, LiteLLM ...).

Vectors are re-normalised here (not every server returns unit vectors) and put back in input
order by each item's ``index``. Every failure is an :class:`EmbedderUnavailableError` (HTTP 503
at the REST edge): the memory could not be embedded now, the caller may retry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from memstream.embedders.base import Embedder
from memstream.errors import MemstreamError

if TYPE_CHECKING:  # httpx (~0.4 s to import) loads when a server is first called: every CLI
    import httpx  # command imports this module, few use an OpenAI-compatible embedder

_BODY_PREVIEW = 300


class EmbedderUnavailableError(MemstreamError):
    """The embedding backend failed or answered nonsense; nothing was embedded. Retry later."""

    status_code = 503


class OpenAICompatibleEmbedder(Embedder):
    """Client of an OpenAI-compatible ``/embeddings`` endpoint.

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:11434/v1``;
            the request goes to ``{base_url}/embeddings``.
        model: the server's model name; ``name`` is ``openai:{model}``.
        api_key: sent as ``Authorization: Bearer``; omitted when None.
        dim: expected dimension. When None it is taken from the first response (reading
            ``dim`` before any ``embed`` call sends one short probe request).
        timeout: seconds, for connect and read alike.
        batch_size: inputs per request (OpenAI accepts at most 2048).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        timeout: float = 30,
        *,
        batch_size: int = 512,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        if not model:
            raise ValueError("model is required")
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.timeout = timeout
        self.batch_size = batch_size
        self._api_key = api_key
        self._dim = dim
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedder(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def dim(self) -> int:  # type: ignore[override]  # a property: may load or probe
        if self._dim is None:
            self._post(["dimension probe"])
        assert self._dim is not None
        return self._dim

    @property
    def url(self) -> str:
        return f"{self.base_url}/embeddings"

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _http(self) -> httpx.Client:
        import httpx

        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    headers = {"Content-Type": "application/json"}
                    if self._api_key:
                        headers["Authorization"] = f"Bearer {self._api_key}"
                    self._client = httpx.Client(headers=headers, timeout=self.timeout)
                client = self._client
        return client

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; use embed_one() for one text")
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [
            self._post(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _post(self, texts: list[str]) -> np.ndarray:
        import httpx

        where = f"embedding server {self.url} (model {self.model!r})"
        try:
            response = self._http().post(self.url, json={"model": self.model, "input": texts})
        except httpx.TimeoutException as exc:
            raise EmbedderUnavailableError(
                f"{where} did not answer within {self.timeout} s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise EmbedderUnavailableError(f"{where} is unreachable: {exc}") from exc
        if response.status_code != 200:
            hint = ""
            if response.status_code in (401, 403):
                hint = " (check the API key: OPENAI_API_KEY or api_key=)"
            elif response.status_code == 404:
                hint = " (check base_url: it should end where /embeddings is served, e.g. /v1)"
            raise EmbedderUnavailableError(
                f"{where} answered HTTP {response.status_code}{hint}: "
                f"{response.text[:_BODY_PREVIEW]}"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise EmbedderUnavailableError(
                f"{where} answered with invalid JSON: {response.text[:_BODY_PREVIEW]!r}"
            ) from exc
        vectors = self._parse(payload, len(texts), where)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise EmbedderUnavailableError(f"{where} returned an all-zero embedding")
        return (vectors / norms).astype(np.float32)

    def _parse(self, payload: Any, n: int, where: str) -> np.ndarray:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise EmbedderUnavailableError(
                f"{where} answered without a 'data' list: {str(payload)[:_BODY_PREVIEW]}"
            )
        if len(data) != n:
            raise EmbedderUnavailableError(
                f"{where} returned {len(data)} embeddings for {n} inputs"
            )
        rows: list[Any] = [None] * n
        for position, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
                raise EmbedderUnavailableError(
                    f"{where}: data[{position}] has no 'embedding' list (base64 encoding "
                    "is not supported)"
                )
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise EmbedderUnavailableError(
                    f"{where}: data[{position}] has a missing, duplicate or out-of-range index "
                    f"{index!r}"
                )
            rows[index] = item["embedding"]
        try:
            vectors = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise EmbedderUnavailableError(
                f"{where} returned embeddings that are not equal-length lists of numbers"
            ) from exc
        if vectors.ndim != 2 or vectors.shape[1] == 0:
            raise EmbedderUnavailableError(f"{where} returned empty embeddings")
        if not np.all(np.isfinite(vectors)):
            raise EmbedderUnavailableError(f"{where} returned non-finite numbers (NaN or inf)")
        got = vectors.shape[1]
        if self._dim is None:
            with self._lock:
                if self._dim is None:
                    self._dim = got
        if got != self._dim:
            raise EmbedderUnavailableError(
                f"{where} returned {got}-dimensional embeddings, expected {self._dim}"
            )
        return vectors


__all__ = ["EmbedderUnavailableError", "OpenAICompatibleEmbedder"]
