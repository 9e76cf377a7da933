"""Embedders: hashing, MiniLM on onnxruntime, OpenAI-compatible over real HTTP, the registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstream.embedders import (
    Embedder,
    EmbedderUnavailableError,
    HashingEmbedder,
    MiniLMOnnxEmbedder,
    OpenAICompatibleEmbedder,
    SentenceTransformersEmbedder,
    clear_cache,
    get_embedder,
)
from memstream.errors import MemstreamError, ValidationError


def assert_unit_rows(vectors: np.ndarray, dim: int, n: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# -- hashing ------------------------------------------------------------------------------

TEXTS = [
    "The user prefers window seats on long flights",
    "Allergic to peanuts",
    "meeting moved to Thursday 10:00",
    "Élodie lives in Zürich",
]


def test_hashing_is_deterministic_across_instances_and_processes() -> None:
    here = HashingEmbedder().embed(TEXTS)
    assert np.array_equal(here, HashingEmbedder().embed(TEXTS))
    code = (
        "import json, sys\n"
        "from memstream.embedders.hashing import HashingEmbedder\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps(HashingEmbedder().embed(texts).tolist()))\n"
    )
    # A different hash seed: Python's hash() would give different buckets.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(TEXTS),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    there = np.asarray(json.loads(done.stdout), dtype=np.float32)
    assert np.array_equal(here, there)


def reference_hashing(texts: list[str], dim: int) -> np.ndarray:
    """The hashing embedder's definition, feature by feature (no per-word cache)."""
    from memstream.embedders.hashing import _bucket, _features

    index: list[int] = []
    weights: list[float] = []
    for row, text in enumerate(texts):
        for feature, weight in _features(text):
            bucket, sign = _bucket(feature, dim)
            index.append(row * dim + bucket)
            weights.append(sign * weight)
    out = np.bincount(np.asarray(index, dtype=np.int64), np.asarray(weights), len(texts) * dim)
    out = out.reshape(len(texts), dim)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms == 0.0, 1.0, norms)).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=80), min_size=1, max_size=8),
    dim=st.sampled_from([8, 61, 384]),
)
def test_hashing_equals_its_feature_by_feature_definition(texts: list[str], dim: int) -> None:
    """The per-word cache must not change a single bit: vectors are cached and stored."""
    got = HashingEmbedder(dim).embed(texts)
    want = reference_hashing(texts, dim)
    featureless = np.linalg.norm(want, axis=1) == 0.0
    assert np.array_equal(got[~featureless], want[~featureless])


@pytest.mark.parametrize("dim", [384, 256, 64])
def test_hashing_dims_and_unit_norms(dim: int) -> None:
    embedder = HashingEmbedder(dim)
    assert embedder.dim == dim
    assert embedder.name == f"hashing-{dim}"
    assert_unit_rows(embedder.embed(TEXTS), dim, len(TEXTS))


def test_hashing_empty_list_and_blank_texts() -> None:
    embedder = HashingEmbedder(128)
    empty = embedder.embed([])
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    blanks = embedder.embed(["", "   \n\t", "?!…"])
    assert_unit_rows(blanks, 128, 3)
    # One fixed vector for every text without features, nearly orthogonal to real texts.
    assert np.array_equal(blanks[0], blanks[1]) and np.array_equal(blanks[0], blanks[2])
    assert abs(float(blanks[0] @ embedder.embed_one("pizza"))) < 0.5


def test_hashing_reflects_shared_words_and_case() -> None:
    embedder = HashingEmbedder()
    a, b, c = embedder.embed(["Pizza with extra cheese", "cheese pizza", "quarterly tax filing"])
    assert a @ b > a @ c + 0.3
    assert np.array_equal(embedder.embed_one("PIZZA"), embedder.embed_one("pizza"))


def test_hashing_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        HashingEmbedder().embed("not a list")


# -- MiniLM (int8 ONNX) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMOnnxEmbedder:
    return MiniLMOnnxEmbedder()


SENTENCES = [
    "I love pizza",
    "Pizza is my favourite food",
    "The stock market fell sharply today",
    "",
    "My daughter's name is Alice and she is seven years old",
    "Remind me to renew my passport before the trip to Japan in March",
    "ok",
    "The user is vegetarian and does not eat fish either",
] * 3 + ["A longer note: " + "the project review covers budgets, hiring and scope. " * 12]


def test_minilm_shape_dtype_norm(minilm: MiniLMOnnxEmbedder) -> None:
    assert minilm.name == "minilm-l6-v2-int8"
    assert minilm.dim == 384
    assert_unit_rows(minilm.embed(SENTENCES), 384, len(SENTENCES))
    assert minilm.embed([]).shape == (0, 384)
    assert minilm.embed_one("hello").shape == (384,)


def test_minilm_batch_equals_one_by_one_and_keeps_order(minilm: MiniLMOnnxEmbedder) -> None:
    # Small sub-batches so sorting, padding and several runs are all exercised.
    small = MiniLMOnnxEmbedder(batch_size=4)
    batched = small.embed(SENTENCES)
    singles = np.stack([minilm.embed_one(text) for text in SENTENCES])
    np.testing.assert_allclose(batched, singles, atol=1e-4)
    # Reversed input gives reversed output: order is restored after the length sort.
    np.testing.assert_allclose(minilm.embed(SENTENCES[::-1]), singles[::-1], atol=1e-4)
    # Repeated sentences get the same vector wherever they sit.
    np.testing.assert_allclose(batched[0], batched[8], atol=1e-6)


@pytest.mark.parametrize(
    ("anchor", "near", "far"),
    [
        ("I love pizza", "Pizza is my favourite food", "The stock market fell sharply today"),
        ("My dog loves long walks", "The puppy enjoys going outside", "Quarterly revenue grew 4%"),
        (
            "How do I reset my password?",
            "I forgot my login credentials",
            "The recipe needs two eggs and flour",
        ),
        ("She is allergic to peanuts", "Nut allergy: avoid peanuts", "He flew to Berlin on Monday"),
    ],
)
def test_minilm_relevance(minilm: MiniLMOnnxEmbedder, anchor: str, near: str, far: str) -> None:
    a, n, f = minilm.embed([anchor, near, far])
    assert a @ n > a @ f + 0.2


def test_minilm_truncates_long_texts_at_256_tokens(minilm: MiniLMOnnxEmbedder) -> None:
    words = [f"word{i % 97}" for i in range(3000)]
    long_text = " ".join(words)
    # Far more than 256 tokens either way: both truncate to the same first 254 word pieces.
    longer_text = " ".join(words + ["completely", "different", "ending"] * 500)
    vectors = minilm.embed([long_text, longer_text, "short"])
    assert_unit_rows(vectors, 384, 3)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
    assert vectors[0] @ vectors[2] < 0.99


def test_minilm_first_use_from_many_threads(minilm: MiniLMOnnxEmbedder) -> None:
    fresh = MiniLMOnnxEmbedder()  # not loaded yet: the threads race to load it
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: fresh.embed(SENTENCES[i : i + 5]), range(8)))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, minilm.embed(SENTENCES[i : i + 5]), atol=1e-4)


def test_minilm_threads_sleep_between_work_unless_spinning_is_asked(
    minilm: MiniLMOnnxEmbedder,
) -> None:
    """The intra-op threads do not spin by default (the model shares the cores with the
    projector and the broker: a spinning thread burns a core they need); spinning is an
    option, and either way a text gets the same vector under the same cache key."""
    spinning = MiniLMOnnxEmbedder(allow_spinning=True)
    got = spinning.embed(SENTENCES)
    key = "session.intra_op.allow_spinning"
    assert minilm._ensure_loaded()[0].get_session_options().get_session_config_entry(key) == "0"
    assert spinning._ensure_loaded()[0].get_session_options().get_session_config_entry(key) == "1"
    assert spinning.name == minilm.name
    np.testing.assert_allclose(got, minilm.embed(SENTENCES), atol=1e-6)


def test_minilm_custom_model_file_gets_its_own_cache_key(tmp_path: Any) -> None:
    other = tmp_path / "model.onnx"
    other.write_bytes(b"not the pinned model")
    embedder = MiniLMOnnxEmbedder(model_path=other)
    assert embedder.name.startswith("minilm-l6-v2-int8-") and embedder.name != "minilm-l6-v2-int8"
    with pytest.raises(MemstreamError, match="cannot load the ONNX model"):
        embedder.embed(["x"])
    assert MiniLMOnnxEmbedder(max_length=128).name == "minilm-l6-v2-int8-len128"


# -- OpenAI-compatible over real HTTP -------------------------------------------------------


class _FakeEmbeddings(BaseHTTPRequestHandler):
    """POST /v1/embeddings. Model 'fake-3' answers 3-dim, unnormalised vectors in reverse index
    order; 'boom' answers 500; 'short' answers one embedding too few."""

    requests: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.path != "/v1/embeddings":
            return self._send(404, {"error": {"message": "no such route"}})
        if body["model"] == "boom":
            return self._send(500, {"error": {"message": "the GPU caught fire"}})
        texts = body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)) + 1.0, 2.0, -2.0]}
            for i, t in enumerate(texts)
        ]
        if body["model"] == "short":
            data = data[:-1]
        self._send(200, {"object": "list", "model": body["model"], "data": data[::-1]})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEmbeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_reorders_by_index_and_normalises(fake_server: str) -> None:
    embedder = OpenAICompatibleEmbedder(fake_server, "fake-3", api_key="sk-test")
    texts = ["a", "bbb", "cc"]
    vectors = embedder.embed(texts)
    assert embedder.name == "openai:fake-3"
    assert embedder.dim == 3  # discovered from the response
    assert_unit_rows(vectors, 3, 3)
    expected = np.array([[len(t) + 1.0, 2.0, -2.0] for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    last = _FakeEmbeddings.requests[-1]
    assert last["auth"] == "Bearer sk-test"
    assert last["body"] == {"model": "fake-3", "input": texts}


def test_openai_splits_large_inputs_into_requests(fake_server: str) -> None:
    embedder = OpenAICompatibleEmbedder(fake_server, "fake-3", batch_size=2)
    before = len(_FakeEmbeddings.requests)
    texts = ["x" * i for i in range(5)]
    vectors = embedder.embed(texts)
    assert len(_FakeEmbeddings.requests) - before == 3
    assert _FakeEmbeddings.requests[-1]["auth"] is None
    np.testing.assert_allclose(vectors[4], embedder.embed_one("xxxx"), atol=1e-7)
    assert not np.allclose(vectors[0], vectors[4])


def test_openai_dim_probe_and_empty_input(fake_server: str) -> None:
    embedder = OpenAICompatibleEmbedder(fake_server, "fake-3")
    assert embedder.embed([]).shape == (0, 3)  # probes the server once for the dimension
    declared = OpenAICompatibleEmbedder(fake_server, "fake-3", dim=3)
    before = len(_FakeEmbeddings.requests)
    assert declared.embed([]).shape == (0, 3)
    assert len(_FakeEmbeddings.requests) == before  # declared: no request needed


def test_openai_server_error_is_a_clear_503(fake_server: str) -> None:
    embedder = OpenAICompatibleEmbedder(fake_server, "boom")
    with pytest.raises(EmbedderUnavailableError, match="HTTP 500.*GPU caught fire") as info:
        embedder.embed(["hello"])
    assert info.value.status_code == 503
    assert isinstance(info.value, MemstreamError)


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("short", {}, "returned 1 embeddings for 2 inputs"),
        ("fake-3", {"dim": 1536}, "returned 3-dimensional embeddings, expected 1536"),
    ],
)
def test_openai_malformed_answers_are_errors(
    fake_server: str, model: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(EmbedderUnavailableError, match=message):
        OpenAICompatibleEmbedder(fake_server, model, **kwargs).embed(["a", "b"])


def test_openai_wrong_path_and_unreachable_server(fake_server: str) -> None:
    wrong = OpenAICompatibleEmbedder(fake_server.removesuffix("/v1"), "fake-3")
    with pytest.raises(EmbedderUnavailableError, match="HTTP 404.*check base_url"):
        wrong.embed(["a"])
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = OpenAICompatibleEmbedder(f"http://127.0.0.1:{port}/v1", "fake-3", timeout=5)
    with pytest.raises(EmbedderUnavailableError, match="unreachable"):
        gone.embed(["a"])


# -- sentence-transformers (optional extra) -------------------------------------------------


def test_sentence_transformers_is_lazy_and_names_the_extra_when_missing() -> None:
    embedder = SentenceTransformersEmbedder()
    assert embedder.name == "st:all-MiniLM-L6-v2"
    assert SentenceTransformersEmbedder("/models/my-model/").name == "st:my-model"
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(
            MemstreamError, match=r"pip install 'memstream\[sentence-transformers\]'"
        ):
            embedder.embed(["hello"])
    else:
        pytest.skip("sentence-transformers is installed; the missing-extra error cannot occur")


def test_sentence_transformers_never_treats_a_name_as_a_hub_id(tmp_path: Any) -> None:
    from memstream.embedders.sentence_transformers import resolve_model_dir

    assert resolve_model_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(MemstreamError, match="never downloads"):
        resolve_model_dir("BAAI/bge-small-en-v1.5")


# -- registry ---------------------------------------------------------------------------------


@pytest.fixture()
def registry() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def test_registry_names(registry: None, fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(get_embedder(), MiniLMOnnxEmbedder)
    assert get_embedder("minilm") is get_embedder()  # cached: the model loads once
    hashing = get_embedder("hashing")
    assert isinstance(hashing, HashingEmbedder) and hashing.dim == 384
    assert get_embedder("hashing:256").dim == 256
    assert get_embedder("hashing:256") is get_embedder("hashing:256")
    assert get_embedder("hashing:256") is not get_embedder("hashing")
    st = get_embedder("sentence-transformers:/opt/models/e5-small")
    assert isinstance(st, SentenceTransformersEmbedder) and st.name == "st:e5-small"

    monkeypatch.setenv("MEMSTREAM_OPENAI_BASE_URL", fake_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    remote = get_embedder("openai:fake-3")
    assert isinstance(remote, OpenAICompatibleEmbedder) and remote.name == "openai:fake-3"
    assert_unit_rows(remote.embed(["from env"]), 3, 1)
    assert _FakeEmbeddings.requests[-1]["auth"] == "Bearer sk-env"
    explicit = get_embedder("openai:fake-3", base_url=fake_server, api_key=None)
    assert isinstance(explicit, Embedder) and explicit is not remote
    # the name a projection records re-opens the same model (used when no --embedder is given)
    for spec in ("minilm", "hashing", "hashing:256", "openai:fake-3"):
        assert get_embedder(get_embedder(spec).name).name == get_embedder(spec).name


@pytest.mark.parametrize("spec", ["nope", "hashing:abc", "hashing:4", "openai:", "minilm:x", ""])
def test_registry_rejects_bad_names(registry: None, spec: str) -> None:
    with pytest.raises(ValidationError) as info:
        get_embedder(spec)
    for valid in ("minilm", "hashing", "openai:<model>", "sentence-transformers"):
        assert valid in info.value.message
    assert info.value.status_code == 400


def test_registry_rejects_unknown_options(registry: None) -> None:
    with pytest.raises(ValidationError, match="bad options"):
        get_embedder("hashing", colour="blue")
