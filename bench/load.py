"""A bounded, mixed load on a real `memstream serve`, and the check that nothing acknowledged is lost.

    python bench/load.py                       # 32 clients x 60 s on the embedded file log
    python bench/load.py --clients 8 --seconds 20 --kafka 127.0.0.1:9092

Closed-loop clients (each waits for its answer) send a mix of adds (60%), searches (30%) and
get_all (10%) in their own user scopes, over loopback only, for a fixed time. The same mix from
ONE client first is the baseline measured in the same run, so the figures print as ratios:
throughput scaling and tail latency against the unloaded median. Afterwards every add that was
answered 200 is read back by id: `lost` must be 0, and `server_errors` (5xx) too; both are
also what `tests/e2e/test_load.py` asserts on a shorter run. Saves a JSON record under
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

MIX = (("add", 0.6), ("search", 0.3), ("get_all", 0.1))
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class LoadResult:
    clients: int
    seconds: float
    ops: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    ops_per_s: float = 0.0
    server_errors: int = 0  # 5xx answers
    other_errors: list[str] = field(default_factory=list)  # transport errors, 4xx (at most 20)
    acknowledged: int = 0
    lost: int = 0  # acknowledged adds not readable afterwards


def _pick(rng: random.Random) -> str:
    x, acc = rng.random(), 0.0
    for name, share in MIX:
        acc += share
        if x < acc:
            return name
    return MIX[-1][0]


def run_load(base_url: str, key: str, *, clients: int, seconds: float, seed: int = 0) -> LoadResult:
    """`clients` threads, each a closed loop of the mix for `seconds`; then the read-back check."""
    headers = {"Authorization": f"Token {key}"}
    run_id = uuid.uuid4().hex[:8]
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {name: [] for name, _ in MIX}
    acked: dict[str, str] = {}
    result = LoadResult(clients=clients, seconds=seconds)
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        user = f"load-{run_id}-{n}"
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
            i = 0
            while time.monotonic() < deadline:
                op = _pick(rng)
                i += 1
                t0 = time.perf_counter()
                try:
                    if op == "add":
                        text = f"client {n} fact {i}: likes {rng.choice(['tea', 'jazz', 'hiking', 'rust'])} {uuid.uuid4().hex[:6]}"
                        r = c.post("/v1/memories/", json={
                            "messages": [{"role": "user", "content": text}],
                            "user_id": user, "infer": False,
                        })  # fmt: skip
                    elif op == "search":
                        r = c.post("/v2/memories/search/", json={
                            "query": "what does the user like?", "filters": {"user_id": user},
                        })  # fmt: skip
                    else:
                        r = c.post("/v2/memories/", json={"filters": {"user_id": user}})
                except httpx.TransportError as exc:
                    with lock:
                        if len(result.other_errors) < 20:
                            result.other_errors.append(f"{op}: {type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies[op].append(ms)
                    if r.status_code >= 500:
                        result.server_errors += 1
                    elif r.status_code != 200:
                        if len(result.other_errors) < 20:
                            result.other_errors.append(f"{op}: {r.status_code} {r.text[:200]}")
                    elif op == "add":
                        for res in r.json()["results"]:
                            acked[res["id"]] = text

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    elapsed = time.monotonic() - t0
    for name, values in latencies.items():
        result.ops[name] = len(values)
        if values:
            ordered = sorted(values)
            result.latency_ms[name] = {
                "p50": round(statistics.median(ordered), 2),
                "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
                "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
            }
    result.ops_per_s = round(sum(result.ops.values()) / elapsed, 1)
    result.acknowledged = len(acked)
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as c:
        for memory_id, text in acked.items():
            r = c.get(f"/v1/memories/{memory_id}/")
            if r.status_code != 200 or r.json().get("memory") != text:
                result.lost += 1
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path, kafka: str | None) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start `memstream serve` on a fresh data dir; its URL and a new API key."""
    base = [
        sys.executable,
        "-m",
        "memstream.cli",
        "--data-dir",
        str(data_dir),
        "--embedder",
        "hashing",
    ]
    if kafka:
        base += ["--kafka", kafka, "--topic", f"memstream-load.{uuid.uuid4().hex[:8]}"]
    key = subprocess.run(
        [*base, "keys", "create", "--org-id", "load", "--project-id", "load"],
        capture_output=True, text=True, check=True, timeout=180,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen(
        [*base, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # bounded: 120 s
        try:
            if httpx.get(f"{url}/v1/ping/", timeout=2).status_code in (200, 401):
                return proc, url, key
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("memstream serve did not answer within 120 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=10.0, help="the one-client run first")
    ap.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memstream-load-") as tmp:
        proc, url, key = _serve(Path(tmp), args.kafka)
        try:
            print(f"baseline: 1 client x {args.baseline_seconds:.0f} s on {url}", flush=True)
            single = run_load(url, key, clients=1, seconds=args.baseline_seconds, seed=1)
            print(f"load: {args.clients} clients x {args.seconds:.0f} s", flush=True)
            loaded = run_load(url, key, clients=args.clients, seconds=args.seconds, seed=2)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratios: dict[str, float | None] = {
        "throughput_scaling": round(loaded.ops_per_s / single.ops_per_s, 3)
        if single.ops_per_s
        else None,
    }
    for op in loaded.latency_ms:
        base = single.latency_ms.get(op, {}).get("p50")
        if base:
            ratios[f"{op}_p95_vs_single_p50"] = round(loaded.latency_ms[op]["p95"] / base, 2)
            ratios[f"{op}_p99_vs_single_p50"] = round(loaded.latency_ms[op]["p99"] / base, 2)
    record = {
        "bench": "load", "log": "kafka" if args.kafka else "file", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "single": asdict(single), "loaded": asdict(loaded), "ratios": ratios,
        "correct": loaded.lost == 0 and loaded.server_errors == 0 and single.lost == 0,
    }  # fmt: skip
    out = args.output or RESULTS / f"load-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps({"ratios": ratios, "ops_per_s": loaded.ops_per_s, "acknowledged": loaded.acknowledged,
                      "lost": loaded.lost, "server_errors": loaded.server_errors,
                      "latency_ms": loaded.latency_ms}, indent=2))  # fmt: skip
    print(f"saved {out}")
    return 0 if record["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
